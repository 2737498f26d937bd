"""Regression: one real-valued score per text (or text pair), as STS-B."""
import numpy as np
import tensorflow as tf

from tf_finetune.data import labels as labels_lib
from tf_finetune.errors import DataError
from tf_finetune.tasks import metrics
from tf_finetune.tasks import classification


class RegressionTask(classification.PooledTask):
  """A linear head with one output, mean squared error; Pearson and Spearman."""

  num_outputs = 1

  @classmethod
  def build_vocabulary(cls, config, train):
    # One output, named after the label column; labels.json records it like a label.
    return labels_lib.LabelVocabulary([config.data.label_column or "score"])

  def label_values(self, split):
    values = np.empty(len(split), np.float32)
    for i, (cell, origin) in enumerate(zip(split.labels, split.origins)):
      try:
        values[i] = float(cell)
      except ValueError:
        raise DataError(f"{origin}: label {cell!r} is not a number (task.name='regression')") from None
      if not np.isfinite(values[i]):
        raise DataError(f"{origin}: label {cell!r} is not a finite number")
    return values

  def build_losses(self, labels, logits):
    return tf.square(tf.cast(logits, tf.float32)[:, 0] - tf.cast(labels, tf.float32))

  def predictions(self, logits, calibration=None):
    return {"score": np.asarray(logits, np.float32)[:, 0]}

  def report(self, label_values, logits, calibration=None):
    report = metrics.regression_report(label_values, self.predictions(logits)["score"])
    report["loss"] = report["mse"]
    return report

  def prediction_fields(self, label_values, logits, calibration=None):
    for gold, score in zip(label_values, self.predictions(logits)["score"]):
      yield f"{gold:g}", f"{score:.6f}", ""

  def serving_outputs(self, logits, calibration=None):
    return {"score": logits[:, 0], "logits": logits}

  serving_doc = "`score` float32 [batch], `logits` float32 [batch, 1]"
