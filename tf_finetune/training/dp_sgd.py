"""The DP-SGD step's pieces (privacy.method=dp_sgd): per-example gradients clipped and
summed, then noise once per optimizer step. Sampling and accounting: tf_finetune/privacy.py
and data/pipeline.py's poisson_train_dataset.

Per-example gradients: privacy.per_example=while_loop (default) runs one example's forward
and backward at a time inside a tf.while_loop in the graph, keeping one example's gradient
in memory, and adds the clipped gradient into the sums (a sparse word-embedding gradient as
its rows); vectorized computes every example's gradient at once with tape.jacobian (pfor),
holding [batch, parameters]. On a 2-core CPU with all-MiniLM-L6-v2 the loop was the faster
(tools/bench_privacy.py).
"""
import tensorflow as tf


def _flat_norm_squared(gradient):
  """Squared L2 norm of one example's gradient of one variable (IndexedSlices: duplicate
  rows summed first, as the dense gradient would hold them)."""
  if isinstance(gradient, tf.IndexedSlices):
    rows, index = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, index, tf.shape(rows)[0])
    return tf.reduce_sum(tf.square(values)), (rows, values)
  return tf.reduce_sum(tf.square(gradient)), None


class DpSgd:
  """Per-example clipped gradient sums and the noise of one step, for `variables`."""

  def __init__(self, privacy_plan, per_example, seed):
    self.plan = privacy_plan
    self.per_example = per_example
    self.seed = seed

  def clipped_sum(self, model, variables, losses_of, batch):
    """(sum of the batch's per-example losses, [sum over the batch's examples of each one's
    gradient clipped to l2_norm_clip] per variable, dense), counting rows whose
    `example_weight` is 1. losses_of(features, labels, training) -> per-example losses."""
    features = {k: batch[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    if self.per_example == "vectorized":
      return self._vectorized(model, variables, losses_of, features, batch)
    return self._loop(model, variables, losses_of, features, batch)

  def _factor(self, norm_squared):
    return tf.minimum(1.0, self.plan.l2_norm_clip / (tf.sqrt(norm_squared) + 1e-12))

  def _loop(self, model, variables, losses_of, features, batch):
    lengths = tf.reduce_sum(features["padding_mask"], axis=1)
    real = tf.cast(tf.reduce_sum(batch["example_weight"]), tf.int32)  # real rows come first

    def body(i, loss_sum, sums):
      example = {k: v[i:i + 1, :lengths[i]] for k, v in features.items()}
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses_of(example, batch["label"][i:i + 1], True))
      grads = tape.gradient(loss, variables)
      parts = [_flat_norm_squared(g) for g in grads]
      factor = self._factor(tf.add_n([n for n, _ in parts]))
      new_sums = []
      for total, g, (_, rows_values) in zip(sums, grads, parts):
        if rows_values is None:
          new_sums.append(total + factor * g)
        else:
          rows, values = rows_values
          new_sums.append(tf.tensor_scatter_nd_add(total, tf.expand_dims(rows, 1),
                                                   factor * values))
      return i + 1, loss_sum + loss, new_sums

    zeros = [tf.zeros(v.shape, tf.float32) for v in variables]
    _, loss_sum, sums = tf.while_loop(lambda i, *_: i < real, body,
                                      (tf.constant(0), tf.constant(0.0), zeros))
    return loss_sum, sums

  def _vectorized(self, model, variables, losses_of, features, batch):
    weight = tf.cast(batch["example_weight"], tf.float32)
    with tf.GradientTape() as tape:
      losses = tf.cast(losses_of(features, batch["label"], True), tf.float32) * weight
    jacobians = tape.jacobian(losses, variables, experimental_use_pfor=True,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    norm_squared = tf.add_n([tf.reduce_sum(tf.square(tf.reshape(j, [tf.shape(j)[0], -1])), 1)
                             for j in jacobians])
    factor = self._factor(norm_squared) * weight
    return tf.reduce_sum(losses), [tf.tensordot(factor, j, axes=1) for j in jacobians]

  def noised_mean(self, sums, step):
    """(sums + N(0, (sigma C)^2) per coordinate) / expected batch size. The noise comes from
    a stateless generator seeded by (seed, step, variable): every replica adds the same."""
    std = self.plan.noise_multiplier * self.plan.l2_norm_clip
    noised = []
    for k, total in enumerate(sums):
      seeds = tf.stack([tf.cast(self.seed, tf.int64),
                        tf.cast(step, tf.int64) * 100_003 + k])
      noise = tf.random.stateless_normal(tf.shape(total), seed=seeds, stddev=std)
      noised.append((total + noise) / self.plan.batch_size)
    return noised


def connected_variables(losses_of, example, variables):
  """The variables the loss reaches (a pooler under pooling=cls gets no gradient and must
  get no noise either), found on one example (a batch of one)."""
  features = {k: example[k] for k in ("token_ids", "segment_ids", "padding_mask")}
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(losses_of(features, example["label"], False))
  grads = tape.gradient(loss, variables)
  return [v for v, g in zip(variables, grads) if g is not None]
