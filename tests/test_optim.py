import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_finetune.training import optim


def test_fused_adamw_matches_keras_adamw():
  """Keras gets the embedding gradient densified (duplicate rows summed, as the true
  gradient is); Keras's own IndexedSlices path mishandles duplicate indices."""
  rng = np.random.default_rng(0)
  shapes = [(7, 5), (5,), (40, 3)]
  init = [rng.normal(size=s).astype(np.float32) for s in shapes]
  grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(4)]
  results = []
  for cls in (keras.optimizers.AdamW, optim.FusedAdamW):
    variables = [keras.Variable(x, name=n) for x, n in zip(init, ("kernel", "bias", "embeddings"))]
    opt = cls(learning_rate=optim.WarmupLinearDecay(1e-2, 2, 10), weight_decay=0.01, epsilon=1e-6)
    opt.exclude_from_weight_decay(var_list=[variables[1]])
    opt.build(variables)
    for step_grads in grads:
      g = list(step_grads)
      g[2] = tf.IndexedSlices(tf.constant(g[2][:4]), tf.constant([0, 3, 3, 9]), tf.constant([40, 3]))
      if cls is keras.optimizers.AdamW:
        g[2] = tf.convert_to_tensor(g[2])
      opt.apply(g, variables)
    results.append([v.numpy() for v in variables])
  for a, b in zip(*results):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert not np.allclose(results[0][0], init[0])


def test_warmup_then_linear_decay():
  schedule = optim.WarmupLinearDecay(1.0, 10, 110)
  values = [float(schedule(s)) for s in (0, 5, 10, 60, 110, 200)]
  np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("strategy,keras_calls_hook", [
    ("default", True), ("mirrored", True), ("default", False), ("mirrored", False)])
def test_update_condition_false_leaves_weights_and_moments_and_true_updates(
    strategy, keras_calls_hook, monkeypatch):
  """The divergence guard's skip: one tf.cond around the whole update (a cond per variable
  cost seconds of tracing); under a strategy it sits in the cross-replica update. Should
  Keras stop calling that hook, a cond per variable still guards."""
  if not keras_calls_hook:
    monkeypatch.setattr(optim.FusedAdamW, "_distributed_tf_update_step",
                        keras.optimizers.AdamW._distributed_tf_update_step)
  strategy = tf.distribute.get_strategy() if strategy == "default" else \
      tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  rng = np.random.default_rng(0)
  init = [rng.normal(size=s).astype(np.float32) for s in [(4, 3), (3,)]]
  grads = [rng.normal(size=x.shape).astype(np.float32) for x in init]
  with strategy.scope():
    variables = [keras.Variable(x, name=n) for x, n in zip(init, ("kernel", "bias"))]
    opt = optim.FusedAdamW(learning_rate=1e-2, weight_decay=0.01)
    opt.build(variables)
    reference = [keras.Variable(x, name=n) for x, n in zip(init, ("kernel", "bias"))]
    plain = optim.FusedAdamW(learning_rate=1e-2, weight_decay=0.01)
    plain.build(reference)

  @tf.function
  def step(apply):
    def replica_step():
      opt.update_condition = apply
      opt.apply([tf.constant(g) for g in grads], variables)
    strategy.run(replica_step)

  def state():
    return [v.numpy().copy() for v in variables + opt._momentums + opt._velocities]

  before = state()
  step(tf.constant(False))
  for a, b in zip(before, state()):
    np.testing.assert_array_equal(a, b)
  assert int(opt.iterations.numpy()) == 1  # the skipped step still counts
  step(tf.constant(True))
  plain.iterations.assign(1)  # as after the skipped step, which counted
  tf.function(lambda: strategy.run(
      lambda: plain.apply([tf.constant(g) for g in grads], reference)))()
  for a, b in zip(variables, reference):
    assert not np.allclose(a.numpy(), init[0] if a.shape == init[0].shape else init[1])
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
  conds = [op for op in step.get_concrete_function(tf.constant(True)).graph.get_operations()
           if op.type in ("If", "StatelessIf")]
  assert len(conds) == (1 if keras_calls_hook else len(variables) * strategy.num_replicas_in_sync)
