"""The Task interface: what a kind of problem adds to the shared loop, data and export."""
import abc

import tensorflow as tf

from tf_finetune import config as config_lib
from tf_finetune.data import labels as labels_lib


class Task(abc.ABC):
  """A task owns its label vocabulary, head, loss, decoding, report and serving outputs.

  The trainer, evaluator and exporter call only these methods, so adding a task never
  touches them. `calibration` is what a task fits on dev logits after training (the
  multi-label thresholds); it is saved in eval/report.json and baked into the export.
  """

  serving_doc = ""  # the serving_default outputs, for the model card
  token_ids_doc = "the same outputs"  # the token_ids signature's outputs
  needs_calibration = False  # True: export needs the dev calibration from eval/report.json

  def __init__(self, config, label_vocabulary):
    self.config = config
    self.label_vocabulary = label_vocabulary

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

  @abc.abstractmethod
  def label_values(self, split):
    """Numeric labels (numpy) for a Split; raises DataError naming file:line for bad ones."""

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

  def serve_text(self, model, encoder, texts, text_pairs=None, calibration=None):
    """serving_default: raw strings [batch] (and pairs) -> the SavedModel's outputs."""
    features = encoder.pad(encoder(texts, text_pairs))
    return self.serving_outputs(tf.cast(model(features, training=False), tf.float32), calibration)
