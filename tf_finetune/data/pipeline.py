"""tf.data pipelines: tokenization in the graph, length bucketing, dynamic padding.

Train stream: shard -> tokenize (batched, cached) -> shuffle(seed) -> repeat -> bucket by
length and pad -> skip(batches already consumed) -> prefetch. The stream is a pure function
of (data, seed), so a resumed run skips exactly the batches it had consumed; this is how
the data position survives a restart even under strategies whose distributed iterators
tf.train.Checkpoint cannot save.
"""
import numpy as np
import tensorflow as tf


TOKENIZE_BATCH = 256


def _raw_dataset(task, split, label_values, training=False, example_index=False):
  """example_index: each row also carries its index among the rows (int64 "example_index",
  which task.train_row_examples maps back to the split's examples)."""
  rows = (task.train_input_tensors if training else task.input_tensors)(split, label_values)
  if example_index:
    column = next(iter(rows.values()))
    count = int(column.nrows()) if isinstance(column, tf.RaggedTensor) else len(column)
    rows = dict(rows, example_index=np.arange(count, dtype=np.int64))
  return tf.data.Dataset.from_tensor_slices(rows)


def tokenize(dataset, task):
  """Raw example rows -> dicts of variable-length int32 vectors (token_ids, segment_ids,
  padding_mask) plus the label, as the task encodes them (tagging: a label per wordpiece)."""
  def encode_batch(batch):
    features = task.encode_inputs(batch)
    for key in [k for k in features if k.startswith("token_ids")]:  # setfit: token_ids_b too
      features[key.replace("token_ids", "padding_mask")] = tf.ones_like(features[key])
    return features
  def to_dense(example):  # unbatched ragged rows come out as ragged_rank-0 "ragged" tensors
    return {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in example.items()}
  return (task.batch_for_encoding(dataset, TOKENIZE_BATCH)
          .map(encode_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .unbatch().map(to_dense))


def bucket_boundaries(max_seq_length):
  """Powers of two from 16 below max_seq_length, then max_seq_length + 1."""
  boundaries, b = [], 16
  while b < max_seq_length:
    boundaries.append(b + 1)
    b *= 2
  return boundaries + [max_seq_length + 1]


def _length(example):
  """An example's bucketing length: its longest text (setfit's pairs hold two)."""
  return tf.reduce_max([tf.shape(v)[0] for k, v in example.items() if k.startswith("token_ids")])


def _padded_shapes(dataset):
  return {k: [None] * spec.shape.rank for k, spec in dataset.element_spec.items()}


def _padding_values(dataset, task):
  """token_ids (every text's: setfit's pairs have token_ids_b) pad with the tokenizer's pad
  id, labels with the task's value, the rest 0; the same values in training, evaluation and
  static (TPU) shapes."""
  def value(key):
    if key.startswith("token_ids"):
      return task.encoder.pad_id
    return task.label_padding_value if key == "label" else 0
  return {k: tf.constant(value(k), spec.dtype) for k, spec in dataset.element_spec.items()}


def _with_batch_dimension(batch, batch_size):
  return {k: tf.ensure_shape(v, [batch_size] + [None] * (v.shape.rank - 1))
          for k, v in batch.items()}


def train_dataset(split, label_values, task, *, batch_size, seed, shuffle_buffer,
                  bucketing, skip_batches=0, input_context=None, static_shapes=False,
                  augmenter=None, packing=False, example_index=False):
  """An endless, deterministic stream of padded training batches of `batch_size`.

  With an augmenter (data/augment.py), the raw texts are cached instead and every example
  is augmented, then tokenized, each time it comes round. With packing, each batch's
  examples are laid end to end in rows of max_seq_length (data/packing.py). With
  example_index, the same batches also say which rows they hold ("example_index" [batch];
  a window's is its text's), for naming the examples of a step."""
  encoder = task.encoder
  dataset = _raw_dataset(task, split, label_values, training=True,
                         example_index=example_index)
  if input_context and input_context.num_input_pipelines > 1:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  dataset = dataset.cache() if augmenter else tokenize(dataset, task).cache()
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat()
  if augmenter:
    dataset = tokenize(dataset.enumerate().map(
        augmenter, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), task)
  if (bucketing and not packing) or static_shapes:
    boundaries = bucket_boundaries(encoder.max_seq_length)
    if not static_shapes:
      boundaries = boundaries[:-1]
    # With pad_to_bucket_boundary every batch is padded to (boundary - 1): a fixed set of shapes.
    dataset = dataset.bucket_by_sequence_length(
        _length, boundaries, [batch_size] * (len(boundaries) + 1),
        padded_shapes=_padded_shapes(dataset), padding_values=_padding_values(dataset, task),
        pad_to_bucket_boundary=static_shapes, drop_remainder=True)
  else:
    dataset = dataset.padded_batch(
        batch_size, padded_shapes=_padded_shapes(dataset),
        padding_values=_padding_values(dataset, task), drop_remainder=True)
  if static_shapes:  # bucket_by_sequence_length leaves the batch dimension unknown
    dataset = dataset.map(lambda batch: _with_batch_dimension(batch, batch_size))
  if packing:
    dataset = dataset.map(task.pack, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if skip_batches:
    dataset = dataset.skip(skip_batches)
  return dataset.prefetch(tf.data.AUTOTUNE)


def poisson_train_dataset(split, label_values, task, *, sampling_rate, capacity, micro_batches,
                          seed, start_step=0, input_context=None):
  """An endless stream for DP-SGD (training/privacy.py): per optimizer step, each example of
  this pipeline's shard is in the step's sample with probability sampling_rate,
  independently (Poisson sampling); a sample over `capacity` is cut to a random subset of
  `capacity` examples, which the accountant's truncated-Poisson event counts. The sample is
  padded to `capacity` rows (`example_weight` 0), then split into `micro_batches` equal
  batches, the real examples first. A pure function of (data, seed, step): a resumed run
  starts at start_step and draws what it would have drawn."""
  dataset = _raw_dataset(task, split, label_values, training=True)
  pipeline_id = 0
  if input_context and input_context.num_input_pipelines > 1:
    pipeline_id = input_context.input_pipeline_id
    dataset = dataset.shard(input_context.num_input_pipelines, pipeline_id)
  encoded = tokenize(dataset, task)
  everything = encoded.padded_batch(  # the whole shard as one batch
      max(1, len(split)), padded_shapes=_padded_shapes(encoded),
      padding_values=_padding_values(encoded, task)).get_single_element()
  size = tf.shape(everything["token_ids"])[0]
  lengths = tf.reduce_sum(everything["padding_mask"], axis=1)
  rows = capacity // micro_batches

  def sample(step):
    seeds = tf.stack([tf.cast(seed, tf.int64) * 1009 + pipeline_id, step])
    chosen = tf.where(tf.random.stateless_uniform([size], seed=seeds) < sampling_rate)[:, 0]
    order = tf.argsort(tf.random.stateless_uniform(tf.shape(chosen), seed=seeds + 1))
    chosen = tf.gather(chosen, order)[:capacity]  # a random subset where the sample overflows
    real = tf.shape(chosen)[0]
    width = tf.maximum(tf.reduce_max(tf.gather(lengths, chosen)), 1)  # max of none: min int
    batch = {}
    for key, value in everything.items():
      taken = tf.gather(value, chosen)
      if key in ("token_ids", "segment_ids", "padding_mask") or (
          key == "label" and task.token_labels):
        taken = taken[:, :width]
      pad = [[0, capacity - real]] + [[0, 0]] * (value.shape.rank - 1)
      fill = _padding_values(encoded, task)[key]
      batch[key] = tf.reshape(tf.pad(taken, pad, constant_values=fill),
                              tf.concat([[micro_batches, rows], tf.shape(taken)[1:]], 0))
    weight = tf.cast(tf.range(capacity) < real, tf.float32)
    batch["example_weight"] = tf.reshape(weight, [micro_batches, rows])
    return tf.data.Dataset.from_tensor_slices(batch)

  return (tf.data.Dataset.range(start_step, 2 ** 62).flat_map(sample)
          .prefetch(tf.data.AUTOTUNE))


def eval_dataset(split, label_values, task, *, batch_size, static_shapes=False, packing=False):
  """Padded batches in file order; the last batch may be smaller. With packing, each
  batch's examples laid end to end in rows (data/packing.py).

  With static_shapes, every batch has exactly `batch_size` rows (the last one is filled
  with padding rows whose `example_mask` is 0) and is padded to a bucket boundary, so
  there are only as many shapes as boundaries.
  """
  encoder = task.encoder
  dataset = tokenize(_raw_dataset(task, split, label_values), task)
  padding_values = _padding_values(dataset, task)
  dataset = dataset.padded_batch(batch_size, padded_shapes=_padded_shapes(dataset),
                                 padding_values=padding_values)
  if static_shapes:
    widths = tf.constant([b - 1 for b in bucket_boundaries(encoder.max_seq_length)])

    def pad_to_static(batch):
      rows, length = tf.shape(batch["token_ids"])[0], tf.shape(batch["token_ids"])[1]
      width = widths[tf.argmax(tf.cast(widths >= length, tf.int32))]
      batch = dict(batch, example_mask=tf.ones([rows], tf.int32))
      padded = {}
      for key, value in batch.items():
        pad = [[0, batch_size - rows]] + [[0, width - length]] * (value.shape.rank - 1)
        padded[key] = tf.pad(value, pad, constant_values=padding_values.get(key, 0))
      return _with_batch_dimension(padded, batch_size)
    dataset = dataset.map(pad_to_static)
  if packing:
    dataset = dataset.map(task.pack)
  return dataset.prefetch(tf.data.AUTOTUNE)
