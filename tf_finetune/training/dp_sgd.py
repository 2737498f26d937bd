"""The DP-SGD step's pieces (privacy.method=dp_sgd): per-example gradients clipped and
summed, then noise once per optimizer step. Sampling and accounting: tf_finetune/privacy.py
and data/pipeline.py's poisson_train_dataset.

Per-example gradients: privacy.per_example=while_loop (default) runs one example's forward
and backward at a time inside a tf.while_loop in the graph, keeping one example's gradient
in memory, and adds the clipped gradient into the sums (a sparse word-embedding gradient as
its rows); vectorized computes every example's gradient at once with tape.jacobian (pfor),
holding [batch, parameters]. On a 2-core CPU with all-MiniLM-L6-v2 the loop was the faster
(tools/bench_privacy.py).

Clipping: by default each example's whole gradient is clipped to C = privacy.l2_norm_clip.
With privacy.head_l2_norm_clip = C_h > 0 the head (every weight outside the encoder) is
clipped to C_h and the encoder to sqrt(C^2 - C_h^2), apart (per-layer clipping, McMahan et
al. 2018, arXiv 1812.06210, section 3): the whole clipped gradient still has norm <= C, so
the noise and the accounting are unchanged, while the head keeps its share when the encoder's
gradient grows (it grows with the head's weights as the head learns).
"""
import tensorflow as tf

from tf_finetune.errors import ConfigError


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

  def __init__(self, privacy_plan, per_example, seed, encoder_paths=frozenset(),
               token_labels=False):
    self.plan = privacy_plan
    self.per_example = per_example
    self.seed = seed
    self.encoder_paths = frozenset(encoder_paths)  # the encoder's clipping group
    self.token_labels = token_labels  # a label per wordpiece (tagging): cut like the tokens

  def _groups(self, variables):
    """(each variable's clipping group, each group's clip): one group, or the head (0) and
    the encoder (1) apart."""
    group_clips = self.plan.group_clips()
    if group_clips is None:
      return [0] * len(variables), [self.plan.l2_norm_clip]
    return [int(v.path in self.encoder_paths) for v in variables], group_clips

  def check_groups(self, variables):
    """Clipping the head apart needs trainable weights on both sides."""
    groups, clips = self._groups(variables)
    if len(set(groups)) < len(clips):
      side = "encoder" if 1 not in groups else "head"
      raise ConfigError(f"config.privacy.head_l2_norm_clip={self.plan.head_l2_norm_clip:g}: "
                        f"the {side} has no trainable weight to clip apart; set it to 0")

  def clipped_sum(self, model, variables, losses_of, batch):
    """(sum of the batch's per-example losses, [sum over the batch's examples of each one's
    gradient clipped as the plan says] per variable, dense), counting rows whose
    `example_weight` is 1. losses_of(features, labels, training) -> per-example losses."""
    features = {k: batch[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    if self.per_example == "vectorized":
      return self._vectorized(model, variables, losses_of, features, batch)
    return self._loop(model, variables, losses_of, features, batch)

  def _clip_factors(self, variables, norms_squared):
    """Per variable, the factor that clips its example's (or examples') gradient: from the
    norm over every variable, or over the variable's group (head or encoder) with the
    group's own clip."""
    groups, clips = self._groups(variables)
    factors = {}
    for group in set(groups):
      norm = tf.sqrt(tf.add_n([n for n, g in zip(norms_squared, groups) if g == group]))
      factors[group] = tf.minimum(1.0, clips[group] / (norm + 1e-12))
    return [factors[g] for g in groups]

  def _loop(self, model, variables, losses_of, features, batch):
    lengths = tf.reduce_sum(features["padding_mask"], axis=1)
    real = tf.cast(tf.reduce_sum(batch["example_weight"]), tf.int32)  # real rows come first

    def body(i, loss_sum, sums):
      example = {k: v[i:i + 1, :lengths[i]] for k, v in features.items()}
      label = batch["label"][i:i + 1]
      if self.token_labels:
        label = label[:, :lengths[i]]
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses_of(example, label, True))
      grads = tape.gradient(loss, variables)
      parts = [_flat_norm_squared(g) for g in grads]
      factors = self._clip_factors(variables, [n for n, _ in parts])
      new_sums = []
      for total, g, (_, rows_values), factor in zip(sums, grads, parts, factors):
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
    norms_squared = [tf.reduce_sum(tf.square(tf.reshape(j, [tf.shape(j)[0], -1])), 1)
                     for j in jacobians]
    factors = self._clip_factors(variables, norms_squared)
    return tf.reduce_sum(losses), [tf.tensordot(f * weight, j, axes=1)
                                   for f, j in zip(factors, jacobians)]

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
