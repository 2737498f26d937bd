"""DP-SGD (privacy.method=dp_sgd): per-example clipping, noise once, Poisson sampling and the
accountant."""
import json

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf
from dp_accounting.pld import pld_privacy_accountant

from tests.conftest import override, tiny_config, write_sentiment_tsv
from tests.test_tagging import ner_config
from tf_finetune import experiment
from tf_finetune import families
from tf_finetune import privacy
from tf_finetune import train
from tf_finetune.data import pipeline
from tf_finetune.errors import ConfigError
from tf_finetune.training import dp_sgd


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  data = write_sentiment_tsv(tmp_path_factory.mktemp("dp") / "data", n_train=64, n_dev=16,
                             max_repeats=3)
  config = tiny_config(data, privacy__method="dp_sgd", model__dropout=0.0)
  splits, labels = experiment.load_data(config)
  task, model = experiment.build_model(config, labels)
  values = task.label_values(splits["train"])
  batch = next(iter(pipeline.eval_dataset(splits["train"], values, task, batch_size=6)))
  batch = dict(batch, example_weight=tf.constant([1.0, 1, 1, 1, 0, 0]))
  losses_of = lambda features, labels, training: task.training_losses(
      labels, model(features, training=training))
  return config, splits, task, model, batch, losses_of


def _single_gradients(model, losses_of, batch, i, variables=None):
  features = {k: batch[k][i:i + 1] for k in experiment.MODEL_INPUTS}
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(losses_of(features, batch["label"][i:i + 1], False))
  return [tf.convert_to_tensor(g)
          for g in tape.gradient(loss, variables or model.trainable_variables)]


def _sgd(clip, per_example, noise=0.0, batch_size=4, token_labels=False):
  plan = privacy.Plan(noise, clip, 1e-5, 0.1, 12, 40, batch_size)
  return dp_sgd.DpSgd(plan, per_example, seed=0, token_labels=token_labels)


@pytest.mark.parametrize("per_example", ["while_loop", "vectorized"])
def test_per_example_gradients_equal_single_example_gradients(setup, per_example):
  _, _, _, model, batch, losses_of = setup
  variables = model.trainable_variables
  loss, sums = _sgd(1e9, per_example).clipped_sum(model, variables, losses_of, batch)
  singles = [_single_gradients(model, losses_of, batch, i) for i in range(4)]  # weight 1 rows
  for k, total in enumerate(sums):
    np.testing.assert_allclose(total.numpy(), sum(s[k].numpy() for s in singles), atol=1e-5)
  # The padded rows (weight 0) count nothing, and the sum is the loss of the real rows.
  features = {k: batch[k][:4] for k in experiment.MODEL_INPUTS}
  expected = tf.reduce_sum(losses_of(features, batch["label"][:4], False))
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("per_example", ["while_loop", "vectorized"])
def test_each_example_is_clipped_to_the_norm(setup, per_example):
  _, _, _, model, batch, losses_of = setup
  clip = 0.05
  for i in range(4):
    one = {k: v[i:i + 1] for k, v in batch.items()}
    original = tf.linalg.global_norm(_single_gradients(model, losses_of, batch, i))
    assert float(original) > clip  # the clip binds
    _, clipped = _sgd(clip, per_example).clipped_sum(model, model.trainable_variables,
                                                     losses_of, one)
    assert float(tf.linalg.global_norm(clipped)) == pytest.approx(clip, rel=1e-4)


def _norm(gradients, keep):
  return float(tf.linalg.global_norm([g for g, k in zip(gradients, keep) if k]))


@pytest.mark.parametrize("per_example", ["while_loop", "vectorized"])
def test_head_and_encoder_are_clipped_apart_within_the_norm(setup, per_example):
  """privacy.head_l2_norm_clip: each group to its own clip, the whole within C; a group
  under its clip is left as it is."""
  _, _, _, model, batch, losses_of = setup
  variables = model.trainable_variables
  encoder_paths = {v.path for v in families.backbone_of(model).variables}
  in_encoder = [v.path in encoder_paths for v in variables]
  in_head = [not e for e in in_encoder]
  assert any(in_encoder) and any(in_head)

  def clipped(clip, head_clip, i):
    plan = privacy.Plan(0.0, clip, 1e-5, 0.1, 12, 40, 4, head_clip)
    one = {k: v[i:i + 1] for k, v in batch.items()}
    return dp_sgd.DpSgd(plan, per_example, 0, encoder_paths).clipped_sum(
        model, variables, losses_of, one)[1]
  for i in range(4):
    original = _single_gradients(model, losses_of, batch, i)
    assert _norm(original, in_head) > 0.006 and _norm(original, in_encoder) > 0.008  # binds
    both = clipped(0.01, 0.006, i)
    assert _norm(both, in_head) == pytest.approx(0.006, rel=1e-4)
    assert _norm(both, in_encoder) == pytest.approx(0.008, rel=1e-4)
    assert float(tf.linalg.global_norm(both)) == pytest.approx(0.01, rel=1e-4)
    head_only = clipped(1e6, 1e-4, i)
    assert _norm(head_only, in_head) == pytest.approx(1e-4, rel=1e-4)
    for g, expected, e in zip(head_only, original, in_encoder):
      if e:
        np.testing.assert_allclose(g.numpy(), expected.numpy(), atol=1e-6)


def test_a_head_clip_needs_both_groups_and_a_smaller_norm(sentiment_dir):
  with pytest.raises(ConfigError, match=r"privacy.head_l2_norm_clip=1.0: must be in \[0, "):
    override(tiny_config(sentiment_dir), {"privacy__method": "dp_sgd",
                                          "privacy__head_l2_norm_clip": 1.0})
  with pytest.raises(ConfigError, match="applies to privacy.method='dp_sgd'"):
    override(tiny_config(sentiment_dir), {"privacy__head_l2_norm_clip": 0.5})
  plan = privacy.Plan(1.0, 1.0, 1e-5, 0.1, 12, 40, 4, 0.6)
  assert plan.group_clips() == pytest.approx((0.6, 0.8))
  head = keras.Variable(1.0, name="head")
  with pytest.raises(ConfigError, match="the encoder has no trainable weight to clip apart"):
    dp_sgd.DpSgd(plan, "while_loop", 0, encoder_paths=()).check_groups([head])


def test_without_noise_and_clip_the_step_is_the_plain_step(setup):
  """sigma 0 and a clip that never binds: the gradient is the mean loss's gradient, which
  the non-private step applies (the same optimizer.apply follows)."""
  _, _, _, model, batch, losses_of = setup
  variables = model.trainable_variables
  sgd = _sgd(1e9, "while_loop", noise=0.0, batch_size=4)
  _, sums = sgd.clipped_sum(model, variables, losses_of, batch)
  grads = sgd.noised_mean(sums, tf.constant(7, tf.int64))
  features = {k: batch[k][:4] for k in experiment.MODEL_INPUTS}
  with tf.GradientTape() as tape:
    mean = tf.reduce_mean(losses_of(features, batch["label"][:4], False))
  for g, expected in zip(grads, tape.gradient(mean, variables)):
    np.testing.assert_allclose(g.numpy(), tf.convert_to_tensor(expected).numpy(), atol=1e-6)


def test_noise_is_added_once_under_mirrored(setup):
  """Two replicas add the same draw after the all-reduce: the result equals the single
  device's, bit for bit, and its spread is sigma * C / batch, not sqrt(2) times that."""
  sgd = _sgd(2.0, "while_loop", noise=1.5, batch_size=8)
  zeros = [tf.zeros([300, 40]), tf.zeros([700])]
  single = sgd.noised_mean(zeros, tf.constant(3, tf.int64))
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

  def replica():
    context = tf.distribute.get_replica_context()
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, zeros)
    return sgd.noised_mean(summed, tf.constant(3, tf.int64))
  per_replica = strategy.run(tf.function(replica))
  for k in range(2):
    values = strategy.experimental_local_results(per_replica[k])
    assert len(values) == 2
    for v in values:
      np.testing.assert_array_equal(v.numpy(), single[k].numpy())
  spread = np.concatenate([g.numpy().ravel() for g in single]).std()
  assert spread == pytest.approx(1.5 * 2.0 / 8, rel=0.05)
  other_step = sgd.noised_mean(zeros, tf.constant(4, tf.int64))
  assert not np.allclose(other_step[0].numpy(), single[0].numpy())


def test_poisson_sampling_rate_determinism_and_resume(setup):
  config, splits, task, _, _, _ = setup
  values = task.label_values(splits["train"])
  n, rate, capacity = len(splits["train"]), 0.125, 24

  def stream(start=0, seed=0):
    return pipeline.poisson_train_dataset(splits["train"], values, task, sampling_rate=rate,
                                          capacity=capacity, micro_batches=2, seed=seed,
                                          start_step=start)
  steps = list(stream().take(2 * 200).as_numpy_iterator())
  counts = [int(steps[2 * s]["example_weight"].sum() + steps[2 * s + 1]["example_weight"].sum())
            for s in range(200)]
  expected, sd = n * rate, np.sqrt(n * rate * (1 - rate))
  assert abs(np.mean(counts) - expected) < 4 * sd / np.sqrt(200)
  assert all(b["token_ids"].shape[0] == capacity // 2 for b in steps)
  for b in steps[:20]:  # real rows first, padding rows are padding
    weight = b["example_weight"]
    assert (np.diff(weight) <= 0).all()
    assert (b["padding_mask"][weight == 0] == 0).all()
  resumed = list(stream(start=50).take(4).as_numpy_iterator())
  for a, b in zip(steps[100:104], resumed):
    np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
  other = next(iter(stream(seed=1)))
  assert not np.array_equal(other["token_ids"], steps[0]["token_ids"]) or \
      other["token_ids"].shape != steps[0]["token_ids"].shape
  overflowing = pipeline.poisson_train_dataset(
      splits["train"], values, task, sampling_rate=0.9, capacity=8, micro_batches=1, seed=0)
  for b in overflowing.take(5).as_numpy_iterator():
    assert b["example_weight"].sum() == 8  # cut to the capacity


def test_reported_epsilon_is_dp_accountings_own(tmp_path):
  data = write_sentiment_tsv(tmp_path / "data", n_train=120, n_dev=16)
  config = tiny_config(data, privacy__method="dp_sgd", privacy__noise_multiplier=1.3,
                       train__batch_size=8, train__steps=4, train__eval_every=2,
                       train__grad_accum_steps=2, peft__method="lora",
                       privacy__head_l2_norm_clip=0.6)
  train.train_and_evaluate(config, tmp_path / "run")
  report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
  p = report["privacy"]
  accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
  accountant.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.TruncatedSubsampledGaussianDpEvent(120, 8 / 120, 32, 1.3), report["step"]))
  assert p["epsilon"] == pytest.approx(accountant.get_epsilon(1 / 240), rel=1e-9)
  assert (p["delta"], p["steps"], p["capacity"], p["sampling_rate"]) == (
      1 / 240, report["step"], 32, 8 / 120)
  assert p["head_l2_norm_clip"] == 0.6  # clipping apart leaves the accounting as it was
  assert "differential privacy: epsilon" in (tmp_path / "run" / "eval" / "report.txt").read_text()
  assert "clip 1 (head 0.6 apart)" in (tmp_path / "run" / "eval" / "report.txt").read_text()


def test_target_epsilon_solves_for_the_noise(tmp_path):
  data = write_sentiment_tsv(tmp_path / "data", n_train=200, n_dev=8)
  config = tiny_config(data, privacy__method="dp_sgd", privacy__target_epsilon=3.0,
                       train__batch_size=10, train__steps=100)
  plan = privacy.plan(config, 200)
  spent = plan.report(100)["epsilon"]
  assert spent <= 3.0 + 1e-6 and spent > 2.9
  more_noise = privacy.epsilon(plan.noise_multiplier * 0.95, plan.sampling_rate, plan.capacity,
                               200, 100, plan.delta)
  assert more_noise > 3.0


@pytest.mark.parametrize("keys, what", [
    ({"adversarial__method": "fgm"}, "adversarial training"),
    ({"data__long_text": "windows"}, "data.long_text='windows'"),
    ({"data__static_shapes": True}, "static shapes"),
])
def test_what_cannot_be_made_private_is_refused(sentiment_dir, keys, what):
  with pytest.raises(ConfigError, match=f"privacy.method='dp_sgd': cannot be made private "
                                        f"with {what}"):
    override(tiny_config(sentiment_dir), {"privacy__method": "dp_sgd", **keys})


@pytest.fixture(scope="module")
def ner_setup():
  config = ner_config(privacy__method="dp_sgd", model__dropout=0.0)
  splits, labels = experiment.load_data(config)
  task, model = experiment.build_model(config, labels)
  values = task.label_values(splits["train"])
  batch = next(iter(pipeline.eval_dataset(splits["train"], values, task, batch_size=6)))
  lengths = batch["padding_mask"].numpy().sum(1)
  assert len(set(lengths[:4])) > 1  # examples of several lengths: the loop cuts each one
  batch = dict(batch, example_weight=tf.constant([1.0, 1, 1, 1, 0, 0]))
  losses_of = lambda features, labels, training: task.training_losses(
      labels, model(features, training=training))
  return splits, task, model, batch, losses_of


@pytest.mark.parametrize("per_example", ["while_loop", "vectorized"])
def test_tagging_per_example_gradients_equal_single_example_gradients(ner_setup, per_example):
  """A label per wordpiece is cut with its example's tokens; each sentence's loss (the sum
  over its words, task.loss_average=token) is its own."""
  _, _, model, batch, losses_of = ner_setup
  first = {k: v[:1] for k, v in batch.items()}  # tagging leaves the pooler without gradient
  variables = dp_sgd.connected_variables(losses_of, first, model.trainable_variables)
  assert len(variables) < len(model.trainable_variables)
  loss, sums = _sgd(1e9, per_example, token_labels=True).clipped_sum(
      model, variables, losses_of, batch)
  singles = [_single_gradients(model, losses_of, batch, i, variables) for i in range(4)]
  for k, total in enumerate(sums):
    np.testing.assert_allclose(total.numpy(), sum(s[k].numpy() for s in singles), atol=1e-5)
  features = {k: batch[k][:4] for k in experiment.MODEL_INPUTS}
  assert float(loss) == pytest.approx(
      float(tf.reduce_sum(losses_of(features, batch["label"][:4], False))), rel=1e-5)


def test_private_tagging_stream_cuts_labels_with_the_tokens(ner_setup):
  splits, task, _, _, _ = ner_setup
  values = task.label_values(splits["train"])
  stream = pipeline.poisson_train_dataset(splits["train"], values, task, sampling_rate=0.5,
                                          capacity=16, micro_batches=2, seed=0)
  for b in stream.take(6).as_numpy_iterator():
    assert b["label"].shape == b["token_ids"].shape
    assert ((b["label"] >= 0) <= (b["padding_mask"] == 1)).all()  # labels only on tokens


def test_private_tagging_trains_and_reports_its_epsilon(tmp_path):
  config = ner_config(privacy__method="dp_sgd", privacy__noise_multiplier=1.0,
                      train__steps=4, train__eval_every=2, train__batch_size=8)
  trainer = train.train_and_evaluate(config, tmp_path / "run")
  assert trainer.step == 4
  report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
  assert report["privacy"]["steps"] == report["step"] and report["privacy"]["epsilon"] > 0
  assert "entity_f1" in report["splits"]["dev"]
