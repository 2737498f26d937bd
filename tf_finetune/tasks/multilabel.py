"""Multi-label classification: any subset of the labels per text (sigmoid per label)."""
import numpy as np
import tensorflow as tf

from tf_finetune.data import labels as labels_lib
from tf_finetune.data import sources
from tf_finetune.errors import DataError
from tf_finetune.tasks import metrics
from tf_finetune.tasks import classification


class MultiLabelTask(classification.PooledTask):
  """Binary cross-entropy per label; a threshold per label, tuned on dev for F1.

  A label cell holds the example's labels joined by data.multilabel_separator; in JSONL it
  may also be a list.
  """

  needs_calibration = True


  @classmethod
  def build_vocabulary(cls, config, train):
    sources.check_label_spellings({"train": train}, lambda cell: cls.split_labels(config, cell))
    names = {name for cell in train.labels for name in cls.split_labels(config, cell)}
    if len(names) < 1:
      raise DataError(f"{train.source}: no labels in the train split")
    return labels_lib.LabelVocabulary.from_train(names)

  @staticmethod
  def split_labels(config, cell):
    return [x.strip() for x in cell.split(config.data.multilabel_separator) if x.strip()]

  def label_values(self, split):
    ids = {name: i for i, name in enumerate(self.label_vocabulary.labels)}
    values = np.zeros([len(split), len(ids)], np.float32)
    for row, (cell, origin) in enumerate(zip(split.labels, split.origins)):
      for name in self.split_labels(self.config, cell):
        if name not in ids:
          raise DataError(f"{origin}: label {name!r} of the {split.name} split is not among the "
                          f"{len(ids)} labels seen in train {self.label_vocabulary.labels[:20]}")
        values[row, ids[name]] = 1.0
    return values

  def build_losses(self, labels, logits):
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.float32), logits=tf.cast(logits, tf.float32)), axis=-1)

  def calibrate(self, dev_label_values, dev_logits):
    return {"thresholds": metrics.tune_thresholds(dev_label_values, _sigmoid(dev_logits)).tolist()}

  def _thresholds(self, calibration):
    return np.asarray(calibration["thresholds"] if calibration else
                      [0.5] * len(self.label_vocabulary), np.float32)

  def predictions(self, logits, calibration=None):
    probabilities = _sigmoid(logits)
    return {"probabilities": probabilities,
            "predicted": (probabilities >= self._thresholds(calibration)).astype(np.int32)}

  def report(self, label_values, logits, calibration=None):
    outputs = self.predictions(logits, calibration)
    report = metrics.multilabel_report(label_values, outputs["predicted"],
                                       self.label_vocabulary.labels)
    report["loss"] = float(np.mean(self.build_losses(label_values, logits).numpy()))
    at_half = metrics.multilabel_report(label_values, (outputs["probabilities"] >= 0.5),
                                        self.label_vocabulary.labels)
    report["micro_f1_at_0.5"], report["macro_f1_at_0.5"] = at_half["micro_f1"], at_half["macro_f1"]
    report["thresholds"] = dict(zip(self.label_vocabulary.labels,
                                    self._thresholds(calibration).tolist()))
    return report

  def prediction_fields(self, label_values, logits, calibration=None):
    outputs = self.predictions(logits, calibration)
    names = np.asarray(self.label_vocabulary.labels)
    sep = self.config.data.multilabel_separator
    for gold, predicted, probabilities in zip(label_values, outputs["predicted"],
                                              outputs["probabilities"]):
      yield (sep.join(names[gold > 0]), sep.join(names[predicted > 0]),
             " ".join(f"{p:.4f}" for p in probabilities))

  def serving_outputs(self, logits, calibration=None):
    probabilities = tf.sigmoid(logits)
    predicted = probabilities >= tf.constant(self._thresholds(calibration))
    names = tf.broadcast_to(tf.constant(self.label_vocabulary.labels), tf.shape(predicted))
    joined = tf.strings.reduce_join(tf.ragged.boolean_mask(names, predicted), axis=-1,
                                    separator=self.config.data.multilabel_separator)
    return {"logits": logits, "probabilities": probabilities,
            "predicted": tf.cast(predicted, tf.int32), "labels": joined}

  serving_doc = ("`labels` string [batch] (the predicted labels joined by the separator), "
                 "`predicted` int32 [batch, labels] (0/1 at the thresholds tuned on dev), "
                 "`probabilities` and `logits` float32 [batch, labels]")


def _sigmoid(logits):
  return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
