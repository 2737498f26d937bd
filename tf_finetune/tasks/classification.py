"""Single-label classification of a sentence or a sentence pair."""
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_finetune import families
from tf_finetune.errors import DataError
from tf_finetune.tasks import base
from tf_finetune.tasks import metrics
from tf_finetune.tasks import packed


def pool(backbone, inputs, pooling):
  """The backbone's output for model inputs, pooled: pooler (families.add_pooler), the
  first token's ([CLS]) vector, or the mean of the tokens."""
  backbone_outputs = families.encode(backbone, inputs)
  sequence = backbone_outputs["sequence_output"]
  padding_mask = inputs["padding_mask"]
  if pooling == "pooler":
    return families.add_pooler(backbone, backbone_outputs)["pooled_output"]
  if pooling == "cls":
    return sequence[:, 0, :]
  mask = keras.ops.cast(keras.ops.expand_dims(padding_mask, -1), sequence.dtype)
  return keras.ops.sum(sequence * mask, axis=1) / keras.ops.maximum(
      keras.ops.sum(mask, axis=1), 1.0)


def build_pooled_model(backbone, config, num_outputs):
  """BERT inputs -> pooled vector -> dropout -> a float32 Dense of num_outputs logits."""
  inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in ("token_ids", "segment_ids", "padding_mask")}
  pooled = pool(backbone, inputs, config.model.pooling)
  pooled = keras.layers.Dropout(config.model.dropout, name="head_dropout")(pooled)
  logits = keras.layers.Dense(
      num_outputs, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
      dtype="float32", name="logits")(pooled)
  return keras.Model(inputs, logits, name=config.task.name)


class PooledTask(base.Task):
  """A task whose head reads one pooled vector per example (build_pooled_model): it reads
  packed batches too."""

  packs = True

  @property
  def num_outputs(self):
    return len(self.label_vocabulary)

  def build_model(self, backbone):
    return build_pooled_model(backbone, self.config, self.num_outputs)

  def packed_logits(self, model, batch, training):
    return packed.pooled_logits(model, batch, self.config.model.pooling, training)


class ClassificationTask(PooledTask):
  """Softmax over the labels of labels.json, cross-entropy loss (optionally class-weighted),
  sklearn report with a confusion matrix."""

  serving_doc = ("`label` string, `label_id` int32 [batch], `probabilities` and `logits` "
                 "float32 [batch, labels]")

  def __init__(self, config, label_vocabulary, encoder=None):
    super().__init__(config, label_vocabulary, encoder)
    self.class_weights = None

  @classmethod
  def build_vocabulary(cls, config, train):
    vocabulary = super().build_vocabulary(config, train)
    if len(vocabulary) < 2:
      raise DataError(f"{train.source}: train has only {len(vocabulary)} "
                      "distinct label(s); classification needs at least 2")
    return vocabulary

  def label_values(self, split):
    return np.asarray(self.label_vocabulary.encode(split), np.int32)

  def build_losses(self, labels, logits):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))

  def prepare(self, train_label_values):
    if self.config.task.class_weights != "balanced":
      return
    from sklearn.utils.class_weight import compute_class_weight
    self.class_weights = compute_class_weight(
        "balanced", classes=np.arange(len(self.label_vocabulary)), y=train_label_values)
    logging.info("Class weights (balanced): %s", ", ".join(
        f"{name} {w:.3f}" for name, w in zip(self.label_vocabulary.labels, self.class_weights)))

  def training_losses(self, labels, logits):
    smoothing = self.config.task.label_smoothing
    if smoothing:
      targets = tf.one_hot(tf.cast(labels, tf.int32), len(self.label_vocabulary))
      targets = targets * (1.0 - smoothing) + smoothing / len(self.label_vocabulary)
      losses = tf.nn.softmax_cross_entropy_with_logits(labels=targets,
                                                       logits=tf.cast(logits, tf.float32))
    else:
      losses = self.build_losses(labels, logits)
    if self.class_weights is None:
      return losses
    weights = tf.constant(self.class_weights, tf.float32)
    return losses * tf.gather(weights, tf.cast(labels, tf.int32))

  def predictions(self, logits, calibration=None):
    probabilities = tf.nn.softmax(np.asarray(logits, np.float32), axis=-1).numpy()
    return {"probabilities": probabilities, "label_id": probabilities.argmax(-1)}

  def report(self, label_values, logits, calibration=None):
    loss = float(np.mean(self.build_losses(label_values, logits).numpy()))
    return metrics.classification_report(
        label_values, self.predictions(logits)["label_id"], self.label_vocabulary.labels,
        loss=loss)

  def prediction_fields(self, label_values, logits, calibration=None):
    outputs = self.predictions(logits)
    names = self.label_vocabulary.labels
    for gold, predicted, probabilities in zip(label_values, outputs["label_id"],
                                              outputs["probabilities"]):
      yield names[gold], names[predicted], f"{probabilities[predicted]:.6f}"

  def serving_outputs(self, logits, calibration=None):
    label_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1),
            "label_id": label_id,
            "label": tf.gather(tf.constant(self.label_vocabulary.labels), label_id)}
