"""Single-label classification of a sentence or a sentence pair."""
import keras
import numpy as np
import tensorflow as tf

from tf_finetune.evaluation import reports
from tf_finetune.tasks import base


def pool(backbone_outputs, padding_mask, pooling):
  sequence = backbone_outputs["sequence_output"]
  if pooling == "pooler":
    return backbone_outputs["pooled_output"]
  if pooling == "cls":
    return sequence[:, 0, :]
  mask = keras.ops.cast(keras.ops.expand_dims(padding_mask, -1), sequence.dtype)
  return keras.ops.sum(sequence * mask, axis=1) / keras.ops.maximum(
      keras.ops.sum(mask, axis=1), 1.0)


class ClassificationTask(base.Task):
  """Softmax over the labels of labels.json, cross-entropy loss, sklearn report."""

  def build_model(self, backbone):
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    pooled = pool(backbone(inputs), inputs["padding_mask"], self.config.model.pooling)
    pooled = keras.layers.Dropout(self.config.model.dropout, name="head_dropout")(pooled)
    logits = keras.layers.Dense(
        len(self.label_vocabulary),
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        dtype="float32", name="logits")(pooled)
    return keras.Model(inputs, logits, name="classifier")

  def label_values(self, split):
    return np.asarray(self.label_vocabulary.encode(split), np.int32)

  def build_losses(self, labels, logits):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))

  def validation_step_outputs(self, logits):
    probabilities = tf.nn.softmax(logits.astype(np.float32), axis=-1).numpy()
    return {"probabilities": probabilities, "label_id": probabilities.argmax(-1)}

  def report(self, split, label_values, logits):
    outputs = self.validation_step_outputs(logits)
    loss = float(np.mean(self.build_losses(label_values, logits).numpy()))
    return reports.classification_report(
        label_values, outputs["label_id"], self.label_vocabulary.labels, loss=loss)
