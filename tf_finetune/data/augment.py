"""Training-text augmentation that needs no network: EDA's random deletion, random swap and
random insertion (Wei and Zou, 2019) on whitespace-separated words, in the tf.data graph.

Written here: no maintained TF library does EDA in the graph (nlpaug and textattack are
Python-side and download models or WordNet for their synonym steps; no synonym list ships
offline, so EDA's synonym replacement is left out). Randomness is stateless, keyed by
(train.seed, the example's position in the endless stream), so a resumed run draws the
same augmentations as an uninterrupted one.
"""
import collections

import tensorflow as tf

MAX_VOCABULARY = 50_000


class Augmenter:
  """Each of deletion, swap, insertion touches about `probability` of an example's words:
  every word is deleted with that probability (one always stays), round(p * n) random
  pairs are swapped, round(p * n) words drawn from the training vocabulary are inserted at
  random places (n: the number of words)."""

  def __init__(self, train_texts, probability, seed):
    counts = collections.Counter(w for text in train_texts for w in text.split())
    self.vocabulary = tf.constant([w for w, _ in counts.most_common(MAX_VOCABULARY)] or [""])
    self.probability = float(probability)
    self.seed = int(seed)

  def __call__(self, index, example):
    """example dict (text, text_pair, label) -> the same with augmented texts."""
    example = dict(example)
    seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(index, tf.int64)])
    seeds = tf.random.experimental.stateless_split(seed, 2)
    for key, key_seed in zip(("text", "text_pair"), tf.unstack(seeds)):
      if key in example:
        example[key] = self.augment_text(example[key], key_seed)
    return example

  def augment_text(self, text, seed):
    p = self.probability
    delete_seed, swap_seed, place_seed, word_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    words = tf.strings.split(text)
    n = tf.size(words)
    # Random deletion; the first-drawn survivor is kept when everything would go.
    draws = tf.random.stateless_uniform([n], delete_seed)
    keep = draws >= p
    keep = tf.logical_or(keep, tf.logical_and(tf.logical_not(tf.reduce_any(keep)),
                                              tf.equal(draws, tf.reduce_max(draws))))
    words = tf.boolean_mask(words, keep)
    n = tf.size(words)
    changes = tf.cast(tf.round(p * tf.cast(n, tf.float32)), tf.int32)
    # Random swap: `changes` transpositions of two random positions, one after the other.
    pairs = tf.random.stateless_uniform([changes, 2], swap_seed, maxval=tf.maximum(n, 1),
                                        dtype=tf.int32)
    def swap(k, order):
      i, j = pairs[k, 0], pairs[k, 1]
      return k + 1, tf.tensor_scatter_nd_update(order, [[i], [j]], tf.stack([order[j], order[i]]))
    _, order = tf.while_loop(lambda k, _: k < changes, swap, [0, tf.range(n)])
    words = tf.gather(words, order)
    # Random insertion: vocabulary words placed between random neighbours.
    inserted = tf.gather(self.vocabulary, tf.random.stateless_uniform(
        [changes], word_seed, maxval=tf.shape(self.vocabulary)[0], dtype=tf.int32))
    places = tf.random.stateless_uniform([changes], place_seed, maxval=tf.cast(n, tf.float32) + 1)
    keys = tf.concat([tf.cast(tf.range(n), tf.float32) + 0.5, places], 0)
    words = tf.gather(tf.concat([words, inserted], 0), tf.argsort(keys, stable=True))
    return tf.strings.reduce_join(words, separator=" ")
