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


IGNORED_LABEL = -1  # tagging: wordpieces that carry no tag ([CLS], [SEP], non-first, padding)


def _is_tagging(split):
  return hasattr(split, "tokens")


def _ragged(rows, dtype):
  lengths = [len(r) for r in rows]
  flat = np.concatenate([np.asarray(r) for r in rows]) if rows else np.zeros([0])
  return tf.RaggedTensor.from_row_lengths(tf.constant(flat, dtype), lengths)


def _label_array(label_values):
  """int32 class ids [N], float32 scores [N] or float32 multi-hot rows [N, labels]."""
  labels = np.asarray(label_values)
  return labels.astype(np.int32) if labels.dtype.kind in "iu" else labels.astype(np.float32)


def _raw_dataset(split, label_values):
  if _is_tagging(split):  # sentences of words, a tag id per word
    return tf.data.Dataset.from_tensor_slices(
        {"words": _ragged(split.tokens, tf.string),
         "word_labels": _ragged(label_values.tag_ids, tf.int32)})
  features = {"text": split.texts}
  if split.text_pairs is not None:
    features["text_pair"] = split.text_pairs
  features["label"] = _label_array(label_values)
  return tf.data.Dataset.from_tensor_slices(features)


def _piece_labels(token_ids, word_positions, word_labels):
  """Wordpiece labels: a word's tag on its first piece, IGNORED_LABEL everywhere else."""
  positions = word_positions.flat_values
  kept = positions >= 0
  rows = tf.cast(word_positions.value_rowids(), tf.int32)
  flat_index = tf.gather(tf.cast(token_ids.row_splits, tf.int32), rows) + positions
  labels = tf.tensor_scatter_nd_update(
      tf.fill(tf.shape(token_ids.flat_values), IGNORED_LABEL),
      tf.boolean_mask(flat_index, kept)[:, None], tf.boolean_mask(word_labels.flat_values, kept))
  return token_ids.with_flat_values(labels)


def tokenize(dataset, encoder):
  """Example dicts of strings -> dicts of variable-length int32 vectors plus the label
  (for tagging, a label per wordpiece)."""
  def encode_batch(batch):
    if "words" in batch:
      features = encoder.encode_words(batch["words"])
      features["label"] = _piece_labels(features["token_ids"], features.pop("word_positions"),
                                        batch["word_labels"])
    else:
      features = encoder(batch["text"], batch.get("text_pair"))
      features["label"] = batch["label"]
    features["padding_mask"] = tf.ones_like(features["token_ids"])
    return features
  def to_dense(example):  # unbatched ragged rows come out as ragged_rank-0 "ragged" tensors
    return {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in example.items()}
  if "words" in dataset.element_spec:  # sentences of different lengths
    batched = dataset.ragged_batch(TOKENIZE_BATCH)
  else:
    batched = dataset.batch(TOKENIZE_BATCH)
  return (batched.map(encode_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .unbatch().map(to_dense))


def bucket_boundaries(max_seq_length):
  """Powers of two from 16 below max_seq_length, then max_seq_length + 1."""
  boundaries, b = [], 16
  while b < max_seq_length:
    boundaries.append(b + 1)
    b *= 2
  return boundaries + [max_seq_length + 1]


def _padded_shapes(dataset):
  return {k: [None] * spec.shape.rank for k, spec in dataset.element_spec.items()}


def _padding_values(dataset):
  """0 everywhere but tagging's wordpiece labels, which pad with IGNORED_LABEL."""
  return {k: tf.constant(IGNORED_LABEL if k == "label" and spec.shape.rank == 1 and
                         spec.dtype.is_integer else 0, spec.dtype)
          for k, spec in dataset.element_spec.items()}


def _with_batch_dimension(batch, batch_size):
  return {k: tf.ensure_shape(v, [batch_size] + [None] * (v.shape.rank - 1))
          for k, v in batch.items()}


def train_dataset(split, label_values, encoder, *, batch_size, seed, shuffle_buffer,
                  bucketing, skip_batches=0, input_context=None, static_shapes=False,
                  augmenter=None):
  """An endless, deterministic stream of padded training batches of `batch_size`.

  With an augmenter (data/augment.py), the raw texts are cached instead and every example
  is augmented, then tokenized, each time it comes round."""
  dataset = _raw_dataset(split, label_values)
  if input_context and input_context.num_input_pipelines > 1:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  dataset = dataset.cache() if augmenter else tokenize(dataset, encoder).cache()
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat()
  if augmenter:
    dataset = tokenize(dataset.enumerate().map(
        augmenter, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), encoder)
  if bucketing or static_shapes:
    boundaries = bucket_boundaries(encoder.max_seq_length)
    if not static_shapes:
      boundaries = boundaries[:-1]
    # With pad_to_bucket_boundary every batch is padded to (boundary - 1): a fixed set of shapes.
    dataset = dataset.bucket_by_sequence_length(
        lambda x: tf.shape(x["token_ids"])[0], boundaries, [batch_size] * (len(boundaries) + 1),
        padded_shapes=_padded_shapes(dataset), padding_values=_padding_values(dataset),
        pad_to_bucket_boundary=static_shapes, drop_remainder=True)
  else:
    dataset = dataset.padded_batch(
        batch_size, padded_shapes=_padded_shapes(dataset),
        padding_values=_padding_values(dataset), drop_remainder=True)
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
  dataset = tokenize(_raw_dataset(split, label_values), encoder)
  padding_values = _padding_values(dataset)
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
        padded[key] = tf.pad(value, pad, constant_values=(
            encoder.pad_id if key == "token_ids" else padding_values.get(key, 0)))
      return _with_batch_dimension(padded, batch_size)
    dataset = dataset.map(pad_to_static)
  return dataset.prefetch(tf.data.AUTOTUNE)


def word_piece_counts(split, encoder):
  """Tagging: per sentence, each word's number of wordpieces (0: none left after cleaning)."""
  words = [w for sentence in split.tokens for w in sentence]
  if not words:
    return [np.zeros(0, np.int64) for _ in split.tokens]
  pieces = np.concatenate([encoder.tokenize(tf.constant(words[i:i + 4096])).row_lengths()
                           for i in range(0, len(words), 4096)])
  return np.split(pieces, np.cumsum([len(s) for s in split.tokens])[:-1])


def words_without_piece(piece_counts, max_seq_length):
  """How many words keep no wordpiece in `[CLS] pieces [SEP]` of max_seq_length: those
  TextEncoder.encode_words gives position -1."""
  budget = max_seq_length - 2
  return sum(int(((c == 0) | (np.cumsum(c) - c >= budget)).sum()) for c in piece_counts)


def token_lengths(split, encoder, piece_counts=None):
  """Number of wordpieces of each example before truncation (text + pair + specials);
  for tagging, from word_piece_counts (pass them if already counted)."""
  if _is_tagging(split):
    if piece_counts is None:
      piece_counts = word_piece_counts(split, encoder)
    return np.array([c.sum() for c in piece_counts], np.int64) + 2
  lengths = []
  pairs = split.text_pairs
  for start in range(0, len(split), 1024):
    texts = tf.constant(split.texts[start:start + 1024])
    n = encoder.tokenize(texts).row_lengths()
    if pairs is not None:
      n += encoder.tokenize(tf.constant(pairs[start:start + 1024])).row_lengths() + 1
    lengths.append(n.numpy() + 2)
  return np.concatenate(lengths)
