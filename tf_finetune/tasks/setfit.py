"""Few-shot classification in SetFit's two stages (task.name=setfit; Tunstall et al. 2022,
arXiv 2209.11055).

Stage 1 fine-tunes the sentence encoder contrastively in the shared training loop on
n * task.pairs_per_example pairs of the n train examples, half of one label (similarity 1),
half of two labels (0), drawn once with train.seed as SetFit 1.x draws them; the
loss is SetFit's CosineSimilarityLoss, the squared difference between the pair's cosine
similarity and its target; with data.packing, both texts of a batch's pairs are packed into
the same rows. Stage 2 fits a logistic regression (scikit-learn, SetFit's
default head) on the encoder's embeddings of the train examples and writes it into the
model's Dense head, with C=task.head_c (scikit-learn's inverse of the L2 penalty's strength;
SetFit keeps its 1.0, which on unit-length embeddings holds the weights small; README,
"Few-shot, SetFit-style", for the default). It is fitted again before every evaluation, so
each dev figure, the best checkpoint and the export hold the head of their own encoder (and
before any other save of the training checkpoint: trainer._save_training_checkpoint); the
exported model is one graph from raw text to label. With task.wise_ft_alpha < 1 the encoder
each evaluation reads is WiSE-FT's mix of the trained weights and the checkpoint's
(trainer.Trainer._mix_in_start_weights); the head is fitted on that one.
"""
import numpy as np
import tensorflow as tf
from absl import logging

from tf_finetune.errors import DataError
from tf_finetune.tasks import base
from tf_finetune.tasks import classification
from tf_finetune.tasks import sentence_embedding


# All unordered pairs are laid out as index arrays (about 40 bytes a pair at the peak): past
# this many (about 5,800 train texts) the draw would take gigabytes, so it is refused.
MAX_UNORDERED_PAIRS = 2**24


def contrastive_pairs(label_values, pairs_per_example, seed):
  """(first, second, similarity) arrays in SetFit 1.x's scheme: the unordered pairs of train
  examples (an example with itself included) in one order drawn with `seed`, split into pairs
  of one label (similarity 1) and of two labels (0); n * pairs_per_example / 2 of each kind,
  taken in that order and cycled when a kind has fewer, alternating one of each. No pair
  repeats while its kind has enough, and the order is already random."""
  labels = np.asarray(label_values)
  pair_count = len(labels) * (len(labels) + 1) // 2
  if pair_count > MAX_UNORDERED_PAIRS:
    raise ValueError(f"{len(labels)} train texts make {pair_count} unordered pairs, more than "
                     f"{MAX_UNORDERED_PAIRS} to draw from; SetFit is for few texts: cap them "
                     "with data.examples_per_class or data.max_train_examples")
  count = len(labels) * (pairs_per_example // 2)
  first, second = np.triu_indices(len(labels))
  order = np.random.default_rng(seed).permutation(pair_count)
  same = labels[first[order]] == labels[second[order]]
  same_label, two_labels = (order[np.flatnonzero(kind)[np.arange(count) % np.count_nonzero(kind)]]
                            for kind in (same, ~same))
  picked = np.stack([same_label, two_labels], 1).reshape(-1)
  return (first[picked].astype(np.int64), second[picked].astype(np.int64),
          np.tile(np.array([1.0, 0.0], np.float32), count))


class SetFitTask(sentence_embedding.PacksSentenceEmbeddings, classification.ClassificationTask):

  serving_doc = classification.ClassificationTask.serving_doc + (
      " (a logistic regression on the contrastively tuned sentence embedding)")
  fits_head = True

  @property
  def interpolates_weights(self):
    return self.config.task.wise_ft_alpha < 1

  def build_model(self, backbone):
    return sentence_embedding.build_model(
        backbone, self.sentence_pooling, len(self.label_vocabulary),
        normalize=None, use_bias=True, name="setfit")

  def train_rows(self, split):
    return len(split) * self.config.task.pairs_per_example

  def train_input_tensors(self, split, label_values):
    """One row per contrastive pair: text, text_b and the target similarity as label."""
    if split.text_pairs is not None:
      raise DataError(f"{split.source}: has a second text column; task.name='setfit' "
                      "classifies single texts")
    if len(set(np.asarray(label_values).tolist())) < 2:
      raise DataError(f"{split.source}: task.name='setfit' needs examples of at least two "
                      "labels to build pairs")
    try:
      first, second, similarity = contrastive_pairs(
          label_values, self.config.task.pairs_per_example, self.config.train.seed)
    except ValueError as e:
      raise DataError(f"{split.source}: task.name='setfit': {e}") from None
    logging.info("SetFit pairs: %d train texts x task.pairs_per_example=%d = %d pairs, half "
                 "of the same label (train.seed=%d)", len(split),
                 self.config.task.pairs_per_example, len(first), self.config.train.seed)
    self._pairs = first, second
    texts = np.asarray(split.texts, dtype=object)
    return {"text": texts[first], "text_b": texts[second], "label": similarity}

  def train_row_examples(self, row):
    """A pair's two train examples."""
    return [int(self._pairs[0][row]), int(self._pairs[1][row])]

  def encode_inputs(self, batch):
    if "text_b" not in batch:
      return super().encode_inputs(batch)
    first, second = self.encoder(batch["text"]), self.encoder(batch["text_b"])
    return base.with_example_index(
        {"token_ids": first["token_ids"], "segment_ids": first["segment_ids"],
         "token_ids_b": second["token_ids"], "segment_ids_b": second["segment_ids"],
         "label": batch["label"]}, batch)

  def pack(self, batch):
    """A batch of pairs packs all its texts, the first texts then the second ones."""
    if "token_ids_b" not in batch:
      return super().pack(batch)
    pairs = {k: batch[k] for k in ("label", "example_index") if k in batch}
    return super().pack(dict(self._both_texts(batch), **pairs))

  def _both_texts(self, batch):
    """A batch of pairs -> the model inputs of its first texts, then of its second texts."""
    width = tf.maximum(tf.shape(batch["token_ids"])[1], tf.shape(batch["token_ids_b"])[1])
    both = {}
    for key in base.MODEL_INPUTS:
      fill = self.encoder.pad_id if key == "token_ids" else 0
      pad = lambda x: tf.pad(x, [[0, 0], [0, width - tf.shape(x)[1]]], constant_values=fill)
      both[key] = tf.concat([pad(batch[key]), pad(batch[key + "_b"])], axis=0)
    return both

  def training_logits(self, model, batch, training):
    """A batch of pairs, padded or packed (pack) -> the cosine similarity of each pair's
    embeddings [batch]; both texts go through the encoder as one batch."""
    embedder = self._embedder(model)
    if "example_ids" in batch:
      embeddings = self.packed_logits(embedder, batch, training=training)
    else:
      embeddings = embedder(self._both_texts(batch), training=training)
    first, second = tf.split(tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1),
                             2, axis=0)
    return tf.reduce_sum(first * second, axis=-1)

  def training_losses(self, labels, logits):
    """CosineSimilarityLoss: training batches are pairs (training_logits' similarities)."""
    return tf.square(logits - tf.cast(labels, tf.float32))

  def fit_head(self, model, label_values, outputs_of):
    """Stage 2: a logistic regression on the train examples' embeddings, into "logits"."""
    from sklearn.linear_model import LogisticRegression
    embeddings = np.asarray(outputs_of(self._embedder(model)), np.float64)
    head = LogisticRegression(C=self.config.task.head_c, max_iter=1000).fit(
        embeddings, label_values)
    kernel = np.zeros((embeddings.shape[1], len(self.label_vocabulary)), np.float32)
    bias = np.zeros(len(self.label_vocabulary), np.float32)
    if head.coef_.shape[0] == 1:  # two labels: softmax over (0, z) is the logistic's sigmoid
      kernel[:, head.classes_[1]], bias[head.classes_[1]] = head.coef_[0], head.intercept_[0]
    else:
      kernel[:, head.classes_], bias[head.classes_] = head.coef_.T, head.intercept_
    layer = model.get_layer("logits")
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    logging.info("SetFit head: logistic regression (C=%g) on %d train embeddings, train "
                 "accuracy %.4f", self.config.task.head_c, len(embeddings),
                 head.score(embeddings, label_values))
