"""A hook on a model's token-embedding output: watch it on a gradient tape and add a delta.

Adversarial training (training/adversarial.py) perturbs the word embeddings with it, and
integrated gradients (evaluation/explain.py) walks the path from a baseline's embeddings
to the text's. The hook wraps the layer's call, so it needs no variable, works under every
tf.distribute strategy and with every head and PEFT method.
"""
import tensorflow as tf

from tf_finetune import peft


class EmbeddingPerturbation:
  """Hooks the token embedding of `model`: can watch its output on a tape and add a delta."""

  def __init__(self, model):
    layer = peft.backbone(model).token_embedding
    original = layer.call
    self.tape, self.output, self.delta = None, None, None

    def call(inputs, reverse=False, **kwargs):
      outputs = original(inputs, reverse=reverse, **kwargs)
      if reverse:
        return outputs
      if self.delta is not None:
        outputs = outputs + tf.cast(self.delta, outputs.dtype)
      if self.tape is not None:
        self.tape.watch(outputs)
        self.output = outputs
      return outputs
    layer.call = call

  def forward(self, tape, model, features, delta=None, training=True):
    """model(features, training=training) with `delta` added to the word embeddings; the
    embedding output is watched on `tape` (self.output after the call)."""
    self.tape, self.delta = tape, delta
    try:
      return model(features, training=training)
    finally:
      self.tape, self.delta = None, None
