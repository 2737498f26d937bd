"""Where a training step's time goes, TensorFlow (keras-hub) beside PyTorch (transformers).

  pip install -e ".[torch]"
  python tools/profile_step.py [--batch_size=32] [--lengths=16,32,64] [--steps=20]

all-MiniLM-L6-v2 with a 2-label head, fp32, dropout 0.1, on fixed random token ids (no
input pipeline). For each sequence length, ms per call of: forward (training=True), forward
+ backward, and the whole step (+ clip by global norm + AdamW), after 3 warm-up calls; the
median of --steps calls. Each side runs in its own process, one after the other.
"""
import sys
import time

import benchlib
import numpy as np
from absl import app
from absl import flags

_SIDE = flags.DEFINE_enum("side", None, ["tf", "torch"], "Internal: run one side here.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_LENGTHS = flags.DEFINE_list("lengths", ["16", "32", "64"], "Sequence lengths.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed calls per measurement.")


def _median_ms(fn):
  for _ in range(3):
    fn()
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def _batch(length, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, 30000, size=(_BATCH.value, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 101, 102
  return ids, rng.integers(0, 2, size=_BATCH.value).astype(np.int32)


def run_tf():
  import tf_finetune  # noqa: F401
  import tensorflow as tf
  from tf_finetune import config as config_lib
  from tf_finetune import experiment
  from tf_finetune.data import labels as labels_lib
  from tf_finetune.training import optim
  config = config_lib.base_config()
  task, model = experiment.build_model(config, labels_lib.LabelVocabulary(["0", "1"]))
  optimizer = optim.build_optimizer(config.train, 1000, model.trainable_variables)
  variables = model.trainable_variables

  @tf.function
  def forward(features):
    return model(features, training=True)

  @tf.function
  def forward_backward(features, labels):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(task.build_losses(labels, model(features, training=True)))
    return [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

  @tf.function
  def step(features, labels):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(task.build_losses(labels, model(features, training=True)))
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
    grads, _ = tf.clip_by_global_norm(grads, 1.0)
    optimizer.apply(grads, variables)
    return loss

  results = {}
  for length in map(int, _LENGTHS.value):
    ids, labels = _batch(length)
    features = {"token_ids": tf.constant(ids), "segment_ids": tf.zeros_like(ids),
                "padding_mask": tf.ones_like(ids)}
    labels = tf.constant(labels)
    results[length] = {
        "forward": _median_ms(lambda: forward(features)[0, 0].numpy()),
        "forward_backward": _median_ms(lambda: forward_backward(features, labels)[0].numpy()),
        "step": _median_ms(lambda: step(features, labels).numpy()),
    }
  return results


def run_torch():
  import torch
  import transformers
  from tf_finetune import checkpoints
  path = checkpoints.resolve_checkpoint_dir(checkpoints.MINILM)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
  results = {}
  for length in map(int, _LENGTHS.value):
    ids, labels = _batch(length)
    ids, labels = torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
    mask = torch.ones_like(ids)

    def forward():
      with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits

    def forward_backward():
      model.zero_grad(set_to_none=True)
      model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()

    def step():
      forward_backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()

    results[length] = {"forward": _median_ms(forward),
                       "forward_backward": _median_ms(forward_backward),
                       "step": _median_ms(step)}
  return {"threads": torch.get_num_threads(), **results}


def main(argv):
  del argv
  if _SIDE.value:
    benchlib.emit(run_tf() if _SIDE.value == "tf" else run_torch())
    return
  sides = {side: benchlib.run_side(__file__, [f"--side={side}", *sys.argv[1:]])
           for side in ("tf", "torch")}
  print(f"batch {_BATCH.value}, median ms per call (torch threads: {sides['torch'].pop('threads')})")
  print(f"{'length':>6} {'what':>17} {'tf':>9} {'torch':>9} {'tf/torch':>9}")
  for length in _LENGTHS.value:
    for what in ("forward", "forward_backward", "step"):
      tf_ms, torch_ms = sides["tf"][length][what], sides["torch"][length][what]
      print(f"{length:>6} {what:>17} {tf_ms:9.1f} {torch_ms:9.1f} {tf_ms / torch_ms:9.2f}")


if __name__ == "__main__":
  app.run(main)
