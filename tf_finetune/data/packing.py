"""Packing: the examples of a padded batch laid end to end in fewer, fuller rows.

SST-2 sentences hold about 13 wordpieces; padded per batch (or per length bucket) a batch
carries about twice that. Packed, each row of at most max_seq_length holds several
examples one after the other, each with its own [CLS] ... [SEP], positions restarting at 0,
and attention kept inside each example (Krell et al. 2021), so the model computes the same
function per example on fewer padded tokens. The batch keeps its examples (the optimizer
step sees the same `batch_size` examples and labels as unpacked); only their layout
changes. tf-models and keras-hub pack only for pre-training; this is written here because
no library packs fine-tuning batches for a Keras model.
"""
import tensorflow as tf


def first_fit_decreasing(lengths, capacity):
  """Bins for items of `lengths` (int32 [n], each <= capacity): longest first, each into
  the first bin with room. Returns each item's bin and its offset in the bin (int32 [n]);
  bins are numbered from 0 without gaps. Deterministic."""
  n = tf.shape(lengths)[0]
  order = tf.argsort(lengths, direction="DESCENDING", stable=True)

  def place(k, used, bins, offsets):
    item = order[k]
    length = lengths[item]
    target = tf.argmax(tf.cast(used + length <= capacity, tf.int32), output_type=tf.int32)
    bins = tf.tensor_scatter_nd_update(bins, [[item]], [target])
    offsets = tf.tensor_scatter_nd_update(offsets, [[item]], [used[target]])
    used = tf.tensor_scatter_nd_add(used, [[target]], [length])
    return k + 1, used, bins, offsets

  zeros = tf.zeros([n], tf.int32)
  _, _, bins, offsets = tf.while_loop(lambda k, *_: k < n, place, (0, zeros, zeros, zeros))
  return bins, offsets


def pack(batch, max_seq_length, pad_id, token_labels=False):
  """A padded batch (token_ids, segment_ids, padding_mask [batch, length], label) -> rows.

  Returns token_ids, segment_ids, padding_mask, `position_ids` (from 0 in each example)
  and `example_ids` (1 + the example's index in the batch; 0 on padding), all int32
  [rows, row length]; `example_rows` and `example_starts` (int32 [batch]: the row and
  column of each example's first token, its [CLS]); the other keys as they were, but for
  a `label` per wordpiece (token_labels: [batch, length]), laid out like the tokens and
  padded with -1."""
  mask = batch["padding_mask"] > 0
  lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
  rows, starts = first_fit_decreasing(lengths, max_seq_length)
  num_rows = tf.maximum(tf.reduce_max(tf.concat([rows, [-1]], 0)) + 1, 1)
  width = tf.reduce_max(tf.concat([starts + lengths, [1]], 0))
  token = tf.where(mask)  # [tokens, 2]: (example, position) of every real token
  example, position = tf.cast(token[:, 0], tf.int32), tf.cast(token[:, 1], tf.int32)
  target = tf.stack([tf.gather(rows, example), tf.gather(starts, example) + position], 1)

  def lay_out(values, fill):
    base = tf.fill([num_rows, width], tf.constant(fill, values.dtype))
    return tf.tensor_scatter_nd_update(base, target, tf.gather_nd(values, token))

  packed = dict(batch)
  packed["token_ids"] = lay_out(batch["token_ids"], pad_id)
  packed["segment_ids"] = lay_out(batch["segment_ids"], 0)
  packed["example_ids"] = lay_out(tf.broadcast_to(
      tf.range(1, tf.shape(mask)[0] + 1, dtype=tf.int32)[:, None], tf.shape(mask)), 0)
  packed["padding_mask"] = tf.cast(packed["example_ids"] > 0, tf.int32)
  packed["position_ids"] = lay_out(tf.broadcast_to(
      tf.range(tf.shape(mask)[1], dtype=tf.int32)[None, :], tf.shape(mask)), 0)
  if token_labels and "label" in batch:  # (serving's batches have none)
    packed["label"] = lay_out(batch["label"], -1)
  packed["example_rows"], packed["example_starts"] = rows, starts
  return packed


def unpack(values, batch):
  """Per-token values of packed rows ([rows, row length, ...], as `batch`, which pack()
  made, lays them out) -> the padded layout they had: [batch, longest example, ...], each
  example's tokens from position 0, zeros beyond its length."""
  lengths = _example_lengths(batch)
  longest = tf.reduce_max(tf.concat([lengths, [0]], 0))
  position = tf.range(longest)[None, :]
  inside = position < lengths[:, None]  # [batch, longest]
  row = tf.broadcast_to(batch["example_rows"][:, None], tf.shape(inside))
  column = tf.where(inside, batch["example_starts"][:, None] + position, 0)
  gathered = tf.gather_nd(values, tf.stack([row, column], -1))
  inside = tf.reshape(inside, tf.concat([tf.shape(inside), tf.ones(
      [tf.rank(gathered) - 2], tf.int32)], 0))
  return tf.where(inside, gathered, tf.zeros_like(gathered))


def _example_lengths(batch):
  """Tokens of each example of a packed batch (int32 [batch])."""
  example_ids = tf.reshape(batch["example_ids"], [-1])
  return tf.math.unsorted_segment_sum(tf.ones_like(example_ids), example_ids - 1,
                                      tf.shape(batch["example_rows"])[0])  # padding: dropped


def fill_counts(batch):
  """How full a packed batch's rows are: float32 [rows, slots (rows x row length), real
  tokens, examples, slots the batch would take padded to its longest example]."""
  lengths = _example_lengths(batch)
  rows, width = tf.unstack(tf.shape(batch["token_ids"]))
  examples = tf.size(lengths)
  return tf.cast(tf.stack([rows, rows * width, tf.reduce_sum(lengths), examples,
                           examples * tf.reduce_max(tf.concat([lengths, [0]], 0))]),
                 tf.float32)


def attention_mask(example_ids):
  """[rows, length] example ids -> bool [rows, length, length]: a token attends to the
  tokens of its own example only (padding attends to nothing and is never attended)."""
  same = tf.equal(example_ids[:, :, None], example_ids[:, None, :])
  return same & (example_ids[:, None, :] > 0)
