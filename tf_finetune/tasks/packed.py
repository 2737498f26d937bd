"""The model's forward pass on packed rows (data/packing.py), through the model's own
layers and weights: the backbone's embeddings with per-token position ids, its
transformer layers with attention kept inside each example, then the head per example.
keras-hub's backbones take no position ids or attention mask, so this calls their layers
one by one, as each family's constructor wires them (families.embed, transformer_stack)."""
import tensorflow as tf

from tf_finetune import families
from tf_finetune.data import packing


def sequence_output(model, batch, training):
  """[rows, length, hidden]: each token's last hidden state within its own example."""
  backbone = families.backbone_of(model)
  x = families.embed(backbone, batch["token_ids"], batch["segment_ids"],
                     batch["position_ids"], training=training)
  mask = packing.attention_mask(batch["example_ids"])
  for layer in families.transformer_stack(backbone):
    x = layer(x, attention_mask=mask, training=training)
  return x


def pooled_output(model, batch, pooling, training):
  """Per example ([batch, hidden], the batch's example order): the pooler or [CLS] vector
  at its first token, or the mean of its tokens."""
  x = sequence_output(model, batch, training)
  if pooling == "mean":
    example = tf.reshape(batch["example_ids"], [-1]) - 1  # padding: -1, dropped
    return tf.math.unsorted_segment_mean(tf.reshape(x, [-1, tf.shape(x)[-1]]), example,
                                         tf.shape(batch["example_rows"])[0])
  pooled = tf.gather_nd(x, tf.stack([batch["example_rows"], batch["example_starts"]], 1))
  if pooling == "pooler":
    pooled = families.pooler(model, families.backbone_of(model))(pooled)
  return pooled


def pooled_logits(model, batch, pooling, training):
  """A pooled head's logits per example ([batch, outputs], the batch's example order)."""
  pooled = pooled_output(model, batch, pooling, training)
  pooled = model.get_layer("head_dropout")(pooled, training=training)
  return model.get_layer("logits")(pooled)
