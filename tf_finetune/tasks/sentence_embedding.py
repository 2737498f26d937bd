"""Sentence embeddings from an encoder, as sentence-transformers computes them: the pooling
(and unit normalization) of the checkpoint's modules.json and 1_Pooling/config.json
(checkpoints.sentence_pooling, given to the task as Task.sentence_pooling); zero_shot and
setfit build their models on them."""
import keras
from absl import logging

from tf_finetune.tasks import base
from tf_finetune.tasks import classification
from tf_finetune.tasks import packed

EMBEDDING_LAYER = "sentence_embedding"


def build_model(backbone, sentence_pooling, num_labels, *, normalize, use_bias, name):
  """BERT inputs -> the checkpoint's pooling -> (unit length) -> layer EMBEDDING_LAYER ->
  a float32 Dense "logits" of num_labels (its weights are set by the task).
  sentence_pooling: (mean or cls, whether the checkpoint normalizes, where that was read);
  normalize=None follows the checkpoint."""
  pooling, checkpoint_normalizes, source = sentence_pooling
  normalize = checkpoint_normalizes if normalize is None else normalize
  logging.info("Sentence embedding: %s pooling%s (%s)", pooling,
               ", unit length" if normalize else "", source)
  inputs = {key: keras.Input(shape=(None,), dtype="int32", name=key)
            for key in base.MODEL_INPUTS}
  pooled = classification.pool(backbone, inputs, pooling)
  layer = (keras.layers.UnitNormalization(axis=-1, name=EMBEDDING_LAYER) if normalize
           else keras.layers.Identity(name=EMBEDDING_LAYER))
  logits = keras.layers.Dense(num_labels, use_bias=use_bias, dtype="float32",
                              kernel_initializer="zeros", name="logits")(layer(pooled))
  return keras.Model(inputs, logits, name=name)


def embedder(model):
  """The model up to its sentence embedding (the same layers and weights)."""
  return keras.Model(model.inputs, model.get_layer(EMBEDDING_LAYER).output)


class PacksSentenceEmbeddings:
  """Packing (data.packing) for a task on build_model's models."""

  packs = True
  _embedder_of = (None, None)  # (model, its embedder)

  def packed_logits(self, model, batch, training):
    """`model`'s outputs for a packed batch (data/packing.py), per example in the batch's
    order: a model of build_model's logits, or its embedder's embeddings."""
    embeddings = model.get_layer(EMBEDDING_LAYER)(
        packed.pooled_output(model, batch, self.sentence_pooling[0], training=training))
    if not _has_logits(model):  # the embedder
      return embeddings
    return model.get_layer("logits")(embeddings)

  def traced_inference(self, model):
    """Evaluation traces the embedder and applies the logits layer after it, so the
    embeddings SetFit's head is fitted on and the dev logits come from one traced function."""
    if not _has_logits(model):
      return model, None
    return self._embedder(model), model.get_layer("logits")

  def _embedder(self, model):
    """The model's embedder, built once per model (a new one would retrace the traced
    forward pass evaluation keeps per model)."""
    if self._embedder_of[0] is not model:
      self._embedder_of = (model, embedder(model))
    return self._embedder_of[1]


def _has_logits(model):
  return "logits" in [layer.name for layer in model.layers]
