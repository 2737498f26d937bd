"""The Task interface: what a kind of problem adds to the shared loop, data and export."""
import abc

import numpy as np
import tensorflow as tf
from absl import logging

from tf_finetune import config as config_lib
from tf_finetune.data import labels as labels_lib
from tf_finetune.data import packing
from tf_finetune.data import pii

MODEL_INPUTS = ("token_ids", "segment_ids", "padding_mask")


def with_example_index(features, batch, document=None):
  """encode_inputs' features, with the rows' "example_index" where the batch has one (a
  window's: its text's, through `document`)."""
  if "example_index" in batch:
    index = batch["example_index"]
    features["example_index"] = index if document is None else tf.gather(index, document)
  return features


class Task(abc.ABC):
  """A task owns its label vocabulary, head, loss, decoding, report and serving outputs.

  The trainer, evaluator, exporter and the data pipeline call only these methods, so adding
  a task never touches them (the shape of tf-models' Task: build_model, build_inputs'
  pieces, build_losses, and report as reduce_aggregated_logs over a split's logits).
  `calibration` is what a task fits on dev logits after training (the multi-label
  thresholds); it is saved in eval/report.json and baked into the export. The task is
  given the run's TextEncoder; it never builds one.
  """

  serving_doc = ""  # the serving_default outputs, for the model card
  token_ids_doc = "the same outputs"  # the token_ids signature's outputs
  trains = True  # False: the model as built is the run's one checkpoint (zero_shot)
  needs_calibration = False  # True: export needs the dev calibration from eval/report.json
  # True: the trainer evaluates (and keeps as the best) its weights mixed with the weights it
  # started from (setfit's task.wise_ft_alpha < 1).
  interpolates_weights = False
  # True: fit_head fits part of the model to the encoder's train outputs (setfit), so the
  # trainer fits it again before saving weights it was not fitted on.
  fits_head = False

  label_padding_value = 0  # what padded_batch puts in "label" beyond an example's length
  packs = False  # packed_logits reads packed batches (data.packing)
  token_labels = False  # a label per wordpiece (packing lays them out like the tokens)
  # (pooling, normalize, where read) of the checkpoint's sentence-transformers files, which
  # experiment.build_model reads (checkpoints.sentence_pooling) for the sentence-embedding
  # tasks (zero_shot, setfit).
  sentence_pooling = ("mean", False, "the default")

  def __init__(self, config, label_vocabulary, encoder=None):
    self.config = config
    self.label_vocabulary = label_vocabulary
    self.encoder = encoder

  @property
  def metric_names(self):
    """Reported at every evaluation; train.best_metric is one of them."""
    return config_lib.TASK_METRICS[self.config.task.name]

  @property
  def best_metric(self):
    return config_lib.resolved_best_metric(self.config)

  def is_better(self, value, best):
    return value < best if self.best_metric == "loss" else value > best

  @classmethod
  def build_vocabulary(cls, config, train):
    """labels.json's contents, from the train split."""
    return labels_lib.LabelVocabulary.from_train(train.labels)

  @abc.abstractmethod
  def build_model(self, backbone):
    """A keras.Model from BERT inputs (token_ids, segment_ids, padding_mask) to logits."""

  def packed_logits(self, model, batch, training):
    """Per-example logits of a packed batch (data/packing.py), equal to `model`'s on the
    same examples unpacked."""
    raise NotImplementedError(f"task.name={self.config.task.name!r} does not read packed "
                              "batches")

  def training_logits(self, model, batch, training):
    """The logits training_losses reads, of a padded (or packed) training batch."""
    if "example_ids" in batch:  # a packed batch (data.packing)
      return self.packed_logits(model, batch, training=training)
    return model({k: batch[k] for k in MODEL_INPUTS}, training=training)

  def fit_head(self, model, label_values, outputs_of):
    """What the task fits on the train split before each evaluation (setfit: its head).
    outputs_of(a model) -> that model's outputs on every train example, in order."""

  @abc.abstractmethod
  def label_values(self, split):
    """Numeric labels (numpy) for a Split; raises DataError naming file:line for bad ones."""

  # The data pipeline's questions (data/pipeline.py): raw example rows, how to batch them
  # for tokenization, and how to turn a batch of them into model inputs plus "label".

  def input_tensors(self, split, label_values):
    """Columns for tf.data.Dataset.from_tensor_slices: one raw example per row."""
    features = {"text": split.texts}
    if split.text_pairs is not None:
      features["text_pair"] = split.text_pairs
    labels = np.asarray(label_values)  # int class ids, float scores or multi-hot rows
    features["label"] = labels.astype(np.int32 if labels.dtype.kind in "iu" else np.float32)
    return features

  def train_input_tensors(self, split, label_values):
    """The training stream's rows (input_tensors; setfit: contrastive pairs)."""
    return self.input_tensors(split, label_values)

  def train_rows(self, split):
    """Rows of the training stream a split makes: one per example, one per window under
    data.long_text=windows (setfit: task.pairs_per_example per example)."""
    return int(self.window_counts(split).sum())

  def batch_for_encoding(self, dataset, batch_size):
    return dataset.batch(batch_size)

  def encode_inputs(self, batch):
    """A batch of input_tensors rows -> ragged token_ids, segment_ids, and the label. With
    data.long_text=windows, one row per window, carrying its text's label."""
    if self.windowed:
      features = self.encoder.windows(batch["text"])
      label = tf.gather(batch["label"], features["document"])
      return with_example_index(
          {"token_ids": features["token_ids"], "segment_ids": features["segment_ids"],
           "label": label}, batch, features["document"])
    features = self.encoder(batch["text"], batch.get("text_pair"))
    features["label"] = batch["label"]
    return with_example_index(features, batch)

  def train_row_examples(self, row):
    """The train examples (indices into the split) of one row of train_input_tensors."""
    return [int(row)]

  @property
  def windowed(self):
    return self.encoder is not None and self.encoder.long_text == "windows"

  def window_counts(self, split):
    """Model inputs per example: 1, or its windows under data.long_text=windows."""
    if not self.windowed:
      return np.ones(len(split), np.int64)
    starts, _, _ = self.encoder.window_spans(tf.constant(self.example_lengths(split) - 2))
    return starts.row_lengths().numpy()

  def example_logits(self, split, logits):
    """The logits of a split's model rows, in file order -> what report() takes: with
    windows, each text's windows pooled (as the exported model pools them)."""
    if not self.windowed:
      return logits
    document = np.repeat(np.arange(len(split), dtype=np.int32), self.window_counts(split))
    return self.pool_windows(logits, document, len(split)).numpy()

  def pool_windows(self, window_logits, document, num_documents):
    """The logits of a text's windows pooled into the text's (task.window_pooling: mean or
    max); in the serving graph and, eagerly, in evaluation."""
    pool = (tf.math.unsorted_segment_max if self.config.task.window_pooling == "max"
            else tf.math.unsorted_segment_mean)
    return pool(tf.cast(window_logits, tf.float32), document, num_documents)

  def example_lengths(self, split):
    """Wordpieces of each example before truncation ([CLS], [SEP] and the pair included)."""
    return self.encoder.lengths(split.texts, split.text_pairs)

  def log_lengths(self, name, split):
    """Logs the split's wordpiece lengths and how many examples max_seq_length cuts
    (never silent); with windows, the windows per text and how many the cap cut."""
    self._log_lengths(name, split, self.example_lengths(split))

  def _log_lengths(self, name, split, lengths):
    encoder = self.encoder
    logging.info("%s: %d examples, wordpieces per example: median %d, 95th pct %d, max %d",
                 name, len(split), np.median(lengths), np.percentile(lengths, 95), lengths.max())
    if self.windowed:
      starts, _, cut = encoder.window_spans(tf.constant(lengths - 2))
      counts, cut = starts.row_lengths().numpy(), int(cut.numpy().sum())
      logging.info("%s: %d windows of %d wordpieces (data.window_stride=%d): per example "
                   "median %d, 95th pct %d, max %d; %.1f%% of examples have more than one",
                   name, counts.sum(), encoder.max_seq_length, encoder.window_stride,
                   np.median(counts), np.percentile(counts, 95), counts.max(),
                   100 * (counts > 1).mean())
      what, over = f"need more than data.max_windows={encoder.max_windows} windows", cut
    else:
      what = (f"are longer than data.max_seq_length={encoder.max_seq_length} and are cut "
              f"(data.long_text={encoder.long_text})")
      over = int((lengths > encoder.max_seq_length).sum())
    if over:
      logging.warning("%s: %d of %d examples (%.1f%%) %s; their unread wordpieces count "
                      "nowhere", name, over, len(split), 100 * over / len(split), what)

  @abc.abstractmethod
  def build_losses(self, labels, logits):
    """Per-example losses, shape [batch]: the loss that reports show."""

  def prepare(self, train_label_values):
    """Takes what the training loss needs from the train labels (class weights)."""

  def training_losses(self, labels, logits):
    """Per-example losses that training minimizes (build_losses, possibly weighted)."""
    return self.build_losses(labels, logits)

  def loss_counts(self, labels):
    """None: training averages training_losses over the examples of the optimizer step.
    Otherwise per example, how many terms its training loss sums; training then divides
    the step's summed losses by the step's summed counts, over every replica and
    micro-batch (tagging's task.loss_average=token)."""
    return None

  def calibrate(self, dev_label_values, dev_logits):
    """What to fit on dev after training (None: nothing)."""
    return None

  @abc.abstractmethod
  def report(self, label_values, logits, calibration=None):
    """A JSON-ready dict of metrics for a split, holding at least metric_names."""

  @abc.abstractmethod
  def prediction_fields(self, label_values, logits, calibration=None):
    """Per example: (gold, predicted, score) strings for eval/predictions.tsv."""

  @abc.abstractmethod
  def serving_outputs(self, logits, calibration=None):
    """The SavedModel's outputs (tensors) from float32 logits."""

  def serve_text(self, model, texts, text_pairs=None, calibration=None):
    """serving_default: raw strings [batch] (and pairs) -> the SavedModel's outputs; with
    windows, each text's windows go through the model and their logits are pooled, as in
    evaluation (`windows_used` says how many). With data.mask_pii, texts are masked first,
    as training masked its data."""
    texts = self.masked(texts)
    if text_pairs is not None:
      text_pairs = self.masked(text_pairs)
    if self.windowed:
      features = self.encoder.windows(texts)
      window_logits = self.forward(model, self.encoder.pad(features))
      logits = self.pool_windows(window_logits, features["document"], tf.shape(texts)[0])
      return dict(self.serving_outputs(logits, calibration), truncated=features["truncated"],
                  windows_used=features["windows_used"])
    features = self.encoder(texts, text_pairs, with_truncation=True)
    logits = tf.cast(self.forward(model, self.encoder.pad(features)), tf.float32)
    return dict(self.serving_outputs(logits, calibration), truncated=features["truncated"])

  def extra_signatures(self, model):
    """Signatures the export adds beside serving_default and token_ids: {name: tf.function
    with an input_signature}."""
    del model
    return {}

  def masked(self, strings):
    """data.mask_pii: [batch] strings with PII replaced by placeholders (data/pii.py), in
    the graph; else the strings."""
    return pii.mask(strings)[0] if self.config.data.mask_pii else strings

  def pack(self, batch):
    """A padded batch of encode_inputs' rows -> packed rows (data/packing.py)."""
    return packing.pack(batch, self.encoder.max_seq_length, self.encoder.pad_id,
                        self.token_labels)

  def packing_refusal(self, training=True):
    """Why this task's training (or inference) does not pack ("" when it does)."""
    if training and not self.trains:
      return f"task.name={self.config.task.name!r} does not train"
    if not self.packs:
      return f"task.name={self.config.task.name!r} reads no packed rows"
    return config_lib.packing_refusal(self.config, training)

  def traced_inference(self, model):
    """(the model evaluation's packed forward pass traces, the layer it then applies to
    that forward pass's outputs, or None): `model` itself here."""
    return model, None

  def inference_logits(self, model, packed_batch):
    """Inference logits of a packed batch, laid out as the model gives them for the same
    examples padded: per example, or (token_labels) per example and wordpiece."""
    logits = self.packed_logits(model, packed_batch, training=False)
    return packing.unpack(logits, packed_batch) if self.token_labels else logits

  def forward(self, model, inputs):
    """Inference logits of padded model inputs: through packed rows where data.packing
    applies (as evaluation packs) and the batch holds more than one row, else the model as
    it is (a single row has no padding to remove: packing it would only add work)."""
    if self.packing_refusal(training=False):
      return model(inputs, training=False)
    return tf.cond(tf.shape(inputs["token_ids"])[0] > 1,
                   lambda: self.inference_logits(model, self.pack(inputs)),
                   lambda: model(inputs, training=False))
