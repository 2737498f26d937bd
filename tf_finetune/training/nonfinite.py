"""Which examples a non-finite training step read, and whether their losses say why.

A step whose loss or gradient norm is not finite is not applied (trainer.replica_step).
Whether one bad example caused it (a label far out of range, a text that breaks the model)
or the optimization did (a learning rate too high) decides what to do; this tells them
apart. The trainer rebuilds the step's batches from the data stream (a pure function of
data, seed and position, with each row's index carried along) and this recomputes their
per-example losses on the weights at hand, without dropout, then names the examples whose
loss is not finite by file and line. Hand-written: no library on this stack traces a
diverged step back to its examples.
"""
import numpy as np
import tensorflow as tf

from tf_finetune.data import packing

NAMED = 5  # examples named in a message; the rest are counted


def per_example_losses(task, model, batch):
  """The task's training loss of each row of a training batch (padded or packed), float64
  [batch]: the terms a step sums, recomputed without dropout."""
  logits = task.training_logits(model, batch, training=False)
  labels = batch["label"]
  if task.token_labels and "example_ids" in batch:  # packed: back to a row per example
    logits = packing.unpack(logits, batch)
    labels = packing.unpack(tf.cast(labels, tf.int32) + 1, batch) - 1  # outside: -1
  losses = np.asarray(task.training_losses(labels, logits), np.float64)
  return losses.reshape(len(losses), -1).sum(axis=1)


def describe(task, model, batches, split, worker=None):
  """A clause for the divergence message: the examples of `batches` (a step's, from
  pipeline.train_dataset(example_index=True)) whose recomputed loss is not finite, by
  file:line (a text's windows count once; setfit names a pair's two lines), or, when every
  one is finite, that no one example's loss explains the step. worker: (index, count) of
  the input pipeline whose share of the step `batches` are, when there are several."""
  losses = {}  # origin -> a non-finite loss of its rows, else their largest
  for batch in batches:
    rows = np.asarray(batch["example_index"]).tolist()
    for row, loss in zip(rows, per_example_losses(task, model, batch).tolist()):
      origin = " with ".join(split.origins[i] for i in task.train_row_examples(row))
      kept = losses.get(origin)
      if kept is None or (np.isfinite(kept) and not loss <= kept):
        losses[origin] = loss
  whose = "the step's" if worker is None else \
      f"worker {worker[0]}'s (input pipeline {worker[0] + 1} of {worker[1]}) share of the step's"
  bad = [(origin, loss) for origin, loss in losses.items() if not np.isfinite(loss)]
  if bad:
    named = ", ".join(f"{origin} (loss {loss})" for origin, loss in bad[:NAMED])
    more = f" and {len(bad) - NAMED} more" if len(bad) > NAMED else ""
    return (f"recomputed, the loss is not finite on {len(bad)} of {whose} {len(losses)} "
            f"train examples: {named}{more}; fix or remove them")
  largest = sorted(losses.items(), key=lambda item: -item[1])[:3]
  named = ", ".join(f"{origin} ({loss:.4g})" for origin, loss in largest)
  if worker is not None:
    return (f"recomputed without dropout on the weights at hand, each of {whose} "
            f"{len(losses)} train examples has a finite loss (the largest: {named}); the other "
            "workers' logs say the same of their shares")
  return (f"recomputed without dropout on the weights at hand, each of {whose} "
          f"{len(losses)} train examples has a finite loss (the largest: {named}): no one "
          "example's loss explains it; the gradient or the learning rate went out of range")
