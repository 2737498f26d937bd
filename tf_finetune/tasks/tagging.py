"""Token classification (NER): a BIO tag per word, reported and served as entity spans."""
import dataclasses

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_finetune import families
from tf_finetune.data import labels as labels_lib
from tf_finetune.data import pii
from tf_finetune.errors import DataError
from tf_finetune.tasks import base
from tf_finetune.tasks import metrics
from tf_finetune.tasks import packed

ENCODE_BATCH = 512
IGNORED_LABEL = -1  # wordpieces that carry no tag ([CLS], [SEP], non-first pieces, padding)


@dataclasses.dataclass
class WordTags:
  """A TokenSplit's labels: per sentence, each word's tag id, and where its first wordpiece
  is among the model rows of the split (in file order): the row (the sentence, or one of
  its windows) and the index in that row; -1 for a word that got no piece, which is
  predicted O."""
  tag_ids: list
  rows: list
  positions: list

  def __len__(self):
    return len(self.tag_ids)


class TaggingTask(base.Task):
  """Softmax over BIO tags at each word's first wordpiece (other pieces, [CLS], [SEP] and
  padding have label -1 and count nowhere). Metrics are entity-level, computed on words
  with seqeval (strict IOB2); words cut by data.max_seq_length count as predicted O."""

  serving_doc = (
      "entities: `entity_type` string, `entity_start` / `entity_end` int32 (character "
      "offsets into the input: `text[start:end]` is the entity), `entity_score` float32, "
      "`entity_text` string, all [batch, entities] padded with '' / -1 / 0, and "
      "`entity_count` int32 [batch]; words: `word_tag` string, `word_start` / `word_end` "
      "int32 [batch, words] (padded '' / -1) and `word_count` int32 [batch]")
  token_ids_doc = ("per wordpiece: `tag` string and `tag_id` int32 [batch, length], "
                   "`probabilities` and `logits` float32 [batch, length, tags]")

  label_padding_value = IGNORED_LABEL
  packs = True
  token_labels = True

  def __init__(self, config, label_vocabulary, encoder=None):
    super().__init__(config, label_vocabulary, encoder)
    tags = label_vocabulary.labels
    self.types = sorted({t[2:] for t in tags if t != "O"})
    self.tag_names = tags + ["O"]  # the last id: a word that kept no wordpiece

  @classmethod
  def build_vocabulary(cls, config, train):
    """O, then B- and I- of every entity type train has (I-type even where train happens
    to hold only single-word entities of that type)."""
    types = sorted({t[2:] for tags in train.tags for t in tags if t != "O"})
    if not types:
      raise DataError(f"{train.source}: train has no B-<type> or I-<type> tag, so no entity "
                      "to learn")
    return labels_lib.LabelVocabulary(["O"] + [f"{p}-{t}" for t in types for p in "BI"])

  def build_model(self, backbone):
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    sequence = families.encode(backbone, inputs)["sequence_output"]
    sequence = keras.layers.Dropout(self.config.model.dropout, name="head_dropout")(sequence)
    logits = keras.layers.Dense(
        len(self.label_vocabulary), kernel_initializer=keras.initializers.TruncatedNormal(
            stddev=0.02), dtype="float32", name="logits")(sequence)
    return keras.Model(inputs, logits, name=self.config.task.name)

  def packing_refusal(self, training=True):
    """Training packs with task.loss_average=token (a sum over words, wherever they sit);
    evaluation and serving pack and read each word's logits back at its unpacked row and
    position (inference_logits)."""
    if training and self.config.task.loss_average != "token":
      return "task.loss_average='sentence' (a mean per sentence needs its sentence's row)"
    return super().packing_refusal(training)

  def packed_logits(self, model, batch, training):
    sequence = packed.sequence_output(model, batch, training)
    sequence = model.get_layer("head_dropout")(sequence, training=training)
    return model.get_layer("logits")(sequence)

  def label_values(self, split):
    ids = {tag: i for i, tag in enumerate(self.label_vocabulary.labels)}
    tag_ids = []
    for i, tags in enumerate(split.tags):
      for j, tag in enumerate(tags):
        if tag not in ids:
          raise DataError(
              f"{split.word_origin(i, j)}: tag {tag!r} of the {split.name} split is not among "
              f"the {len(ids)} tags seen in train {self.label_vocabulary.labels[:20]}")
      tag_ids.append(np.asarray([ids[t] for t in tags], np.int32))
    return WordTags(tag_ids, *word_positions(split.tokens, self.encoder))

  def input_tensors(self, split, label_values):
    """Sentences of words, a tag id per word."""
    return {"words": _ragged(split.tokens, tf.string),
            "word_labels": _ragged(label_values.tag_ids, tf.int32)}

  def batch_for_encoding(self, dataset, batch_size):
    return dataset.ragged_batch(batch_size)  # sentences of different lengths

  def encode_inputs(self, batch):
    features = self.encoder.encode_words(batch["words"])
    label = _piece_labels(features["token_ids"], features["word_rows"],
                          features["word_positions"], batch["word_labels"])
    return base.with_example_index(
        {"token_ids": features["token_ids"], "segment_ids": features["segment_ids"],
         "label": label}, batch, features.get("document"))

  def example_logits(self, split, logits):
    """Unchanged: WordTags locate each word in the model's rows, windows or not."""
    return logits

  def example_lengths(self, split, piece_counts=None):
    if piece_counts is None:
      piece_counts = self.encoder.word_piece_counts(split.tokens)
    return np.array([c.sum() for c in piece_counts], np.int64) + 2

  def log_lengths(self, name, split):
    """Also: how many words the cut costs their prediction (they count as predicted O)."""
    piece_counts = self.encoder.word_piece_counts(split.tokens)
    lost = words_without_piece(piece_counts, self.encoder)
    if lost:
      cut = (f"data.max_windows={self.encoder.max_windows}" if self.windowed else
             f"data.max_seq_length={self.encoder.max_seq_length}")
      logging.warning("%s: %d of %d words get no prediction (cut by %s, or no wordpiece "
                      "left after cleaning) and count as predicted O", name, lost,
                      sum(len(t) for t in split.tokens), cut)
    self._log_lengths(name, split, self.example_lengths(split, piece_counts))

  def build_losses(self, labels, logits):
    """Per sentence, the mean cross-entropy over its labelled wordpieces (labels >= 0)."""
    return self._summed_losses(labels, logits) / tf.maximum(_labelled_pieces(labels), 1.0)

  def training_losses(self, labels, logits):
    """task.loss_average=sentence: build_losses. token: per sentence, the summed
    cross-entropy, which training divides by the step's labelled words (loss_counts)."""
    if self.config.task.loss_average == "token":
      return self._summed_losses(labels, logits)
    return self.build_losses(labels, logits)

  def loss_counts(self, labels):
    if self.config.task.loss_average == "token":
      return _labelled_pieces(labels)
    return None

  def _summed_losses(self, labels, logits):
    labels = tf.cast(labels, tf.int32)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(labels, 0), logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(losses * tf.cast(labels >= 0, tf.float32), axis=-1)

  def word_predictions(self, word_tags, logits):
    """Per sentence: predicted tag ids (into self.tag_names) and their probabilities, one
    per word (a word without a piece: O, probability 1)."""
    logits = np.asarray(logits, np.float32)
    predicted, scores = [], []
    for rows, positions in zip(word_tags.rows, word_tags.positions):
      kept = positions >= 0
      word_logits = logits[rows[kept], positions[kept]]
      probabilities = np.exp(word_logits - word_logits.max(-1, keepdims=True))
      probabilities /= probabilities.sum(-1, keepdims=True)
      tags = np.full(len(positions), len(self.label_vocabulary), np.int32)
      tags[kept] = probabilities.argmax(-1)
      score = np.ones(len(positions), np.float32)
      score[kept] = probabilities.max(-1)
      predicted.append(tags)
      scores.append(score)
    return predicted, scores

  def _loss(self, word_tags, logits):
    """build_losses per sentence on its words' first-piece logits (wherever each was read)
    and tags (-1 for a word without a piece), averaged over sentences."""
    logits = np.asarray(logits, np.float32)
    longest = max([len(p) for p in word_tags.positions] + [1])
    word_logits = np.zeros([len(word_tags), longest, logits.shape[-1]], np.float32)
    labels = np.full([len(word_tags), longest], -1, np.int32)
    for i, (tags, rows, positions) in enumerate(
        zip(word_tags.tag_ids, word_tags.rows, word_tags.positions)):
      kept = positions >= 0
      word_logits[i, :len(kept)][kept] = logits[rows[kept], positions[kept]]
      labels[i, :len(kept)][kept] = tags[kept]
    return float(np.mean(self.build_losses(labels, word_logits).numpy()))

  def report(self, label_values, logits, calibration=None):
    names = self.tag_names
    predicted, _ = self.word_predictions(label_values, logits)
    report = metrics.entity_report([[names[t] for t in tags] for tags in label_values.tag_ids],
                                   [[names[t] for t in tags] for tags in predicted])
    for name in self.types:  # types neither in gold nor predicted: listed with zeros
      report["per_class"].setdefault(name, {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                            "support": 0})
    report["per_class"] = dict(sorted(report["per_class"].items()))
    report["words_without_prediction"] = int(sum((p < 0).sum() for p in label_values.positions))
    report["loss"] = self._loss(label_values, logits)
    return report

  def prediction_fields(self, label_values, logits, calibration=None):
    """Gold and predicted tags, one per word, space-separated; the mean word probability."""
    names = self.tag_names
    predicted, scores = self.word_predictions(label_values, logits)
    for gold, tags, score in zip(label_values.tag_ids, predicted, scores):
      yield (" ".join(names[t] for t in gold), " ".join(names[t] for t in tags),
             f"{float(np.mean(score)) if len(score) else 1.0:.6f}")

  def serving_outputs(self, logits, calibration=None):
    tag_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1), "tag_id": tag_id,
            "tag": tf.gather(tf.constant(self.label_vocabulary.labels), tag_id)}

  def serve_text(self, model, texts, text_pairs=None, calibration=None):
    """Raw strings -> words (BERT's basic tokenization, with character offsets) -> a tag
    per word at its first wordpiece -> entities (strict IOB2, as the report counts them)."""
    encoder = self.encoder
    words, starts, ends = encoder.split_words(texts)
    if self.config.data.mask_pii:  # as training data was masked (pii.mask_sentences)
      words, starts, ends, _ = pii.merge_words(texts, words, starts, ends)
    features = encoder.encode_words(words)
    logits = tf.cast(self.forward(model, encoder.pad(features)), tf.float32)
    positions = features["word_positions"]
    rows = tf.cast(positions.value_rowids(), tf.int32)  # the sentence of each word
    flat_positions = positions.flat_values
    word_logits = tf.gather_nd(logits, tf.stack(
        [tf.maximum(features["word_rows"].flat_values, 0), tf.maximum(flat_positions, 0)], -1))
    probabilities = tf.nn.softmax(word_logits, axis=-1)
    no_tag = len(self.label_vocabulary)  # a word that kept no wordpiece: outside any entity
    tag = tf.where(flat_positions >= 0, tf.argmax(word_logits, -1, output_type=tf.int32), no_tag)
    score = tf.where(flat_positions >= 0, tf.reduce_max(probabilities, -1), 1.0)
    entities = self._entities(tag, score, rows, starts.flat_values, ends.flat_values,
                              tf.shape(texts)[0])
    entity_text = tf.strings.substr(
        tf.gather(texts, entities["row"]), entities["start"],
        entities["end"] - entities["start"], unit="UTF8_CHAR")

    def padded(values, default, row_ids=entities["row"]):
      return tf.RaggedTensor.from_value_rowids(values, row_ids, nrows=tf.shape(texts)[0]) \
          .to_tensor(default_value=default)
    tag_names = tf.constant(self.tag_names)
    return {
        "entity_type": padded(entities["type"], ""),
        "entity_start": padded(entities["start"], -1),
        "entity_end": padded(entities["end"], -1),
        "entity_score": padded(entities["score"], 0.0),
        "entity_text": padded(entity_text, ""),
        "entity_count": tf.cast(tf.math.bincount(entities["row"], minlength=tf.shape(texts)[0],
                                                 maxlength=tf.shape(texts)[0]), tf.int32),
        "word_tag": padded(tf.gather(tag_names, tag), "", rows),
        "word_start": starts.to_tensor(default_value=-1),
        "word_end": ends.to_tensor(default_value=-1),
        "word_count": tf.cast(words.row_lengths(), tf.int32),
        "truncated": features["truncated"],
        **({"windows_used": features["windows_used"]} if self.windowed else {}),
    }

  def _entities(self, tag, score, rows, starts, ends, num_rows):
    """Strict IOB2 spans over the flat words of a batch: a span starts at a word whose tag
    does not continue the previous word's (I-type after B-/I-type of the same sentence) and
    is an entity when that first tag is B-type. Vectorized, so it runs inside the graph;
    tests check it against seqeval."""
    tags = self.label_vocabulary.labels
    type_of = [self.types.index(t[2:]) + 1 if t != "O" else 0 for t in tags] + [0]
    type_id = tf.gather(tf.constant(type_of, tf.int32), tag)
    begins = tf.gather(tf.constant([t.startswith("B-") for t in tags] + [False]), tag)
    inside = tf.gather(tf.constant([t.startswith("I-") for t in tags] + [False]), tag)
    previous = lambda x, fill: tf.concat([tf.fill([1], fill), x[:-1]], 0)
    continues = inside & tf.equal(type_id, previous(type_id, -1)) & tf.equal(
        rows, previous(rows, -1))
    new_span = tf.logical_not(continues)
    span = tf.cumsum(tf.cast(new_span, tf.int32)) - 1
    num_spans = tf.reduce_sum(tf.cast(new_span, tf.int32))
    index = tf.range(tf.shape(tag)[0])
    first = tf.math.unsorted_segment_min(index, span, num_spans)
    last = tf.math.unsorted_segment_max(index, span, num_spans)
    mean_score = tf.math.unsorted_segment_mean(score, span, num_spans)
    is_entity = tf.gather(begins, first)
    first, last = tf.boolean_mask(first, is_entity), tf.boolean_mask(last, is_entity)
    return {"row": tf.gather(rows, first),
            "type": tf.gather(tf.constant([""] + self.types), tf.gather(type_id, first)),
            "start": tf.gather(starts, first), "end": tf.gather(ends, last),
            "score": tf.boolean_mask(mean_score, is_entity)}


def _ragged(rows, dtype):
  lengths = [len(r) for r in rows]
  flat = np.concatenate([np.asarray(r) for r in rows]) if rows else np.zeros([0])
  return tf.RaggedTensor.from_row_lengths(tf.constant(flat, dtype), lengths)


def _piece_labels(token_ids, word_rows, word_positions, word_labels):
  """Wordpiece labels: a word's tag on its first piece (in the row encode_words read it
  from), IGNORED_LABEL everywhere else."""
  positions = word_positions.flat_values
  kept = positions >= 0
  rows = tf.maximum(word_rows.flat_values, 0)
  flat_index = tf.gather(tf.cast(token_ids.row_splits, tf.int32), rows) + positions
  labels = tf.tensor_scatter_nd_update(
      tf.fill(tf.shape(token_ids.flat_values), IGNORED_LABEL),
      tf.boolean_mask(flat_index, kept)[:, None], tf.boolean_mask(word_labels.flat_values, kept))
  return token_ids.with_flat_values(labels)


def words_without_piece(piece_counts, encoder):
  """How many words of sentences with these wordpiece counts per word get no piece read
  by the model (max_seq_length, or with windows max_windows, cut them; or they have no
  piece): those TextEncoder.encode_words gives position -1."""
  lengths = np.array([int(c.sum()) for c in piece_counts], np.int32)
  if encoder.long_text == "windows":
    _, ends, _ = encoder.window_spans(tf.constant(lengths))
    read = [row[-1] for row in ends.to_list()]
  else:
    read = [encoder.max_seq_length - 2] * len(piece_counts)
  return sum(int(((c == 0) | (np.cumsum(c) - c >= r)).sum())
             for c, r in zip(piece_counts, read))


def _labelled_pieces(labels):
  return tf.reduce_sum(tf.cast(tf.cast(labels, tf.int32) >= 0, tf.float32), axis=-1)


def word_positions(sentences, encoder):
  """Per sentence (a list of words), each word's model row (numbered over the sentences'
  rows in order, as the pipeline emits them) and first-wordpiece index in that row, or -1,
  as the pipeline's encoder.encode_words computes them: (rows, positions)."""
  rows, positions, rows_before = [], [], 0
  for start in range(0, len(sentences), ENCODE_BATCH):
    batch = sentences[start:start + ENCODE_BATCH]
    words = tf.ragged.constant(batch, dtype=tf.string, ragged_rank=1)
    out = encoder.encode_words(words)
    for r, p in zip(out["word_rows"].to_list(), out["word_positions"].to_list()):
      p = np.asarray(p, np.int32)
      rows.append(np.where(p >= 0, np.asarray(r, np.int32) + rows_before, -1))
      positions.append(p)
    rows_before += int(out["token_ids"].nrows())
  return rows, positions
