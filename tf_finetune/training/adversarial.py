"""Adversarial training on the word embeddings (adversarial.method: fgm or pgd).

FGM (Miyato et al., 2017): after the clean forward and backward pass, the word-embedding
output of each example is pushed by r = epsilon * g / ||g|| (g: the loss's gradient with
respect to that example's embeddings) and the loss on the pushed input is added, so the
step minimizes loss(x) + loss(x + r). PGD (Madry et al., 2018, on embeddings as in FreeLB):
`steps` ascent steps of size alpha * g / ||g||, each projected back into the epsilon ball,
then the loss at the last point is added.

Written here: neither Keras nor keras-hub has adversarial training; FGM exists for TF only
in bert4keras (tf-keras 2.x). The perturbation goes into the backbone's token-embedding
layer's output through a wrapper around that layer's call, so it needs no variable and
works under every tf.distribute strategy (each replica perturbs its own examples).
"""
import tensorflow as tf

from tf_finetune.embedding_hook import EmbeddingPerturbation


def _unit(gradient):
  """Per example: the gradient divided by its L2 norm over positions and dimensions."""
  norm = tf.sqrt(tf.reduce_sum(tf.square(gradient), axis=[1, 2], keepdims=True))
  return gradient / (norm + 1e-12)


def _project(delta, epsilon):
  norm = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=[1, 2], keepdims=True))
  return delta * tf.minimum(1.0, epsilon / (norm + 1e-12))


class AdversarialLoss:
  """Adds the adversarial loss's gradients to a clean step's gradients."""

  def __init__(self, config, model):
    self.config = config.adversarial
    self.model = model
    self.perturbation = EmbeddingPerturbation(model)

  def clean(self, features, loss_fn):
    """The clean pass: (loss, gradients of the trainable variables, gradient of the word
    embeddings). loss_fn: logits -> this replica's scalar loss."""
    return self._pass(features, loss_fn, None)

  def _pass(self, features, loss_fn, delta, variables=True):
    with tf.GradientTape() as tape:
      logits = self.perturbation.forward(tape, self.model, features, delta)
      embeddings = self.perturbation.output
      loss = loss_fn(logits)
    targets = (self.model.trainable_variables if variables else []) + [embeddings]
    grads = tape.gradient(loss, targets)
    return loss, grads[:-1], tf.stop_gradient(grads[-1])

  def gradients(self, features, loss_fn, embedding_gradient):
    """(adversarial loss, its gradients), to add to the clean pass's."""
    c = self.config
    if c.method == "fgm":
      delta = c.epsilon * _unit(embedding_gradient)
    else:  # pgd
      delta = _project(c.alpha * _unit(embedding_gradient), c.epsilon)
      for _ in range(c.steps - 1):
        _, _, g = self._pass(features, loss_fn, delta, variables=False)
        delta = _project(delta + c.alpha * _unit(g), c.epsilon)
    loss, grads, _ = self._pass(features, loss_fn, delta)
    return loss, grads
