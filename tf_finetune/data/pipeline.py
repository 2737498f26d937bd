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


def _label_array(label_values):
  """int32 class ids [N], float32 scores [N] or float32 multi-hot rows [N, labels]."""
  labels = np.asarray(label_values)
  return labels.astype(np.int32) if labels.dtype.kind in "iu" else labels.astype(np.float32)


def _raw_dataset(split, labels):
  features = {"text": split.texts}
  if split.text_pairs is not None:
    features["text_pair"] = split.text_pairs
  features["label"] = labels
  return tf.data.Dataset.from_tensor_slices(features)


def tokenize(dataset, encoder):
  """Example dicts of strings -> dicts of variable-length int32 vectors plus the label."""
  def encode_batch(batch):
    features = encoder(batch["text"], batch.get("text_pair"))
    features["padding_mask"] = tf.ones_like(features["token_ids"])
    features["label"] = batch["label"]
    return features
  def to_dense(example):  # unbatched ragged rows come out as ragged_rank-0 "ragged" tensors
    return {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in example.items()}
  return (dataset.batch(TOKENIZE_BATCH)
          .map(encode_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .unbatch().map(to_dense))


def bucket_boundaries(max_seq_length):
  """Powers of two from 16 below max_seq_length, then max_seq_length + 1."""
  boundaries, b = [], 16
  while b < max_seq_length:
    boundaries.append(b + 1)
    b *= 2
  return boundaries + [max_seq_length + 1]


def _padded_shapes(labels):
  vector = [None]
  return {"token_ids": vector, "segment_ids": vector, "padding_mask": vector,
          "label": list(labels.shape[1:])}


def _with_batch_dimension(batch, batch_size):
  return {k: tf.ensure_shape(v, [batch_size] + [None] * (v.shape.rank - 1))
          for k, v in batch.items()}


def train_dataset(split, label_values, encoder, *, batch_size, seed, shuffle_buffer,
                  bucketing, skip_batches=0, input_context=None, static_shapes=False):
  """An endless, deterministic stream of padded training batches of `batch_size`."""
  labels = _label_array(label_values)
  dataset = _raw_dataset(split, labels)
  if input_context and input_context.num_input_pipelines > 1:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  dataset = tokenize(dataset, encoder).cache()
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat()
  if bucketing or static_shapes:
    boundaries = bucket_boundaries(encoder.max_seq_length)
    if not static_shapes:
      boundaries = boundaries[:-1]
    # With pad_to_bucket_boundary every batch is padded to (boundary - 1): a fixed set of shapes.
    dataset = dataset.bucket_by_sequence_length(
        lambda x: tf.shape(x["token_ids"])[0], boundaries, [batch_size] * (len(boundaries) + 1),
        padded_shapes=_padded_shapes(labels), pad_to_bucket_boundary=static_shapes,
        drop_remainder=True)
  else:
    dataset = dataset.padded_batch(
        batch_size, padded_shapes=_padded_shapes(labels), drop_remainder=True)
  if static_shapes:  # bucket_by_sequence_length leaves the batch dimension unknown
    dataset = dataset.map(lambda batch: _with_batch_dimension(batch, batch_size))
  if skip_batches:
    dataset = dataset.skip(skip_batches)
  return dataset.prefetch(tf.data.AUTOTUNE)


def eval_dataset(split, label_values, encoder, *, batch_size, static_shapes=False):
  """Padded batches in file order; the last batch may be smaller.

  With static_shapes, every batch has exactly `batch_size` rows (the last one is filled
  with padding rows whose `example_mask` is 0) and is padded to a bucket boundary, so
  there are only as many shapes as boundaries.
  """
  labels = _label_array(label_values)
  dataset = tokenize(_raw_dataset(split, labels), encoder)
  dataset = dataset.padded_batch(batch_size, padded_shapes=_padded_shapes(labels))
  if static_shapes:
    widths = tf.constant([b - 1 for b in bucket_boundaries(encoder.max_seq_length)])

    def pad_to_static(batch):
      rows, length = tf.shape(batch["token_ids"])[0], tf.shape(batch["token_ids"])[1]
      width = widths[tf.argmax(tf.cast(widths >= length, tf.int32))]
      batch = dict(batch, example_mask=tf.ones([rows], tf.int32))
      padded = {}
      for key, value in batch.items():
        pad = [[0, batch_size - rows]] + [[0, width - length]] * (value.shape.rank - 1)
        fill = encoder.pad_id if key == "token_ids" else 0
        padded[key] = tf.pad(value, pad, constant_values=fill)
      return _with_batch_dimension(padded, batch_size)
    dataset = dataset.map(pad_to_static)
  return dataset.prefetch(tf.data.AUTOTUNE)


def token_lengths(split, encoder):
  """Number of wordpieces of each example before truncation (text + pair + specials)."""
  lengths = []
  pairs = split.text_pairs
  for start in range(0, len(split), 1024):
    texts = tf.constant(split.texts[start:start + 1024])
    n = encoder.tokenize(texts).row_lengths()
    if pairs is not None:
      n += encoder.tokenize(tf.constant(pairs[start:start + 1024])).row_lengths() + 1
    lengths.append(n.numpy() + 2)
  return np.concatenate(lengths)
