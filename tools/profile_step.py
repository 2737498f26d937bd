"""Where a training step's time goes, TensorFlow (keras-hub) beside PyTorch (transformers).

  pip install -e ".[torch]"
  python tools/profile_step.py [--batch_size=32] [--lengths=16,32,64,128] [--steps=20]
  python tools/profile_step.py --precision=mixed_bfloat16      # torch side: bf16 autocast
  python tools/profile_step.py --tf_jit_compile                 # TF side compiled by XLA
  python tools/profile_step.py --tf_op_profile --lengths=64      # + TF's time per op type

all-MiniLM-L6-v2 with a 2-label head, dropout 0.1, on fixed random token ids (no input
pipeline). For each sequence length, ms per call of: forward (training=True), forward +
backward, and the whole step (+ clip by global norm + AdamW), after 3 warm-up calls; the
median of --steps calls; from them the backward and the optimizer's share. Also the
step's achieved GFLOP/s (matmul FLOPs of forward and backward, counted from the
architecture) against this machine's matmul peak measured in the same process (a
2048 x 2048 matmul, float32 and bfloat16). Each side runs in its own process.
With --tf_op_profile, the TensorFlow step also runs under TensorFlow's profiler and the
busiest op types are listed per phase (forward, backward, clip + optimizer; told apart by
the name scopes the step's code opens): ms per step summed over TensorFlow's inter-op
threads (two of them overlap, so the sum exceeds the step's wall time).
"""
import sys
import time

import benchlib
import numpy as np
from absl import app
from absl import flags

_SIDE = flags.DEFINE_enum("side", None, ["tf", "torch"], "Internal: run one side here.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_LENGTHS = flags.DEFINE_list("lengths", ["16", "32", "64", "128"], "Sequence lengths.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed calls per measurement.")
_PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16"],
                               "Compute precision of both sides.")
_TF_JIT_COMPILE = flags.DEFINE_bool(
    "tf_jit_compile", False, "TensorFlow side: compile forward, backward and the step with "
    "XLA (tf.function(jit_compile=True)) instead of running TensorFlow's graph kernels.")
_TF_OP_PROFILE = flags.DEFINE_bool(
    "tf_op_profile", False, "TensorFlow side: also profile --steps steps and list the op "
    "types that take the most time.")
_TOP_OPS = 15

# all-MiniLM-L6-v2
LAYERS, HIDDEN, INTERMEDIATE = 6, 384, 1536


def step_gflop(batch, length):
  """Matmul FLOPs of one train step (forward + backward = 3 x forward): per layer and token
  the Q, K, V and output projections (4 H^2), the feed-forward (2 H I), and attention's
  scores and weighted sum (2 L H), each 2 FLOPs per multiply-add; plus the pooler."""
  per_token = LAYERS * 2 * (4 * HIDDEN ** 2 + 2 * HIDDEN * INTERMEDIATE + 2 * length * HIDDEN)
  return 3 * (batch * length * per_token + batch * 2 * HIDDEN ** 2) / 1e9


def matmul_peak_gflops(dtype, size=2048):
  """GFLOP/s of a size x size matmul in `dtype` (TensorFlow, oneDNN): the machine's peak as
  a train step can reach it."""
  import tensorflow as tf
  a = tf.random.normal([size, size], dtype=tf.float32)
  a = tf.cast(a, dtype)
  matmul = tf.function(lambda x: tf.matmul(x, x))
  ms = _median_ms(lambda: matmul(a)[0, 0].numpy())
  return 2 * size ** 3 / (ms / 1000) / 1e9


def _median_ms(fn):
  for _ in range(3):
    fn()
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def _phase(op_name):
  """forward, backward (ops under gradient_tape/ or backward/) or optimizer (under
  optimizer/: clip and AdamW), by the name scopes the step's code opens."""
  return ("backward" if op_name.startswith(("gradient_tape", "backward")) else
          "optimizer" if op_name.startswith("optimizer") else "forward")


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
  import keras
  config = config_lib.base_config()
  keras.mixed_precision.set_global_policy(_PRECISION.value)
  task, model = experiment.build_model(config, labels_lib.LabelVocabulary(["0", "1"]))
  optimizer = optim.build_optimizer(config.train, 1000, model.trainable_variables)
  variables = model.trainable_variables
  compiled = tf.function(jit_compile=_TF_JIT_COMPILE.value)

  @compiled
  def forward(features):
    return model(features, training=True)

  def loss_and_gradients(features, labels):
    # Name scopes: the op profile tells the phases apart by them (op_times_ms).
    with tf.GradientTape() as tape, tf.name_scope("forward"):
      loss = tf.reduce_mean(task.build_losses(labels, model(features, training=True)))
    with tf.name_scope("backward"):  # the embedding gradient densified
      return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

  @compiled
  def forward_backward(features, labels):
    return loss_and_gradients(features, labels)[1]

  @compiled
  def step(features, labels):
    loss, grads = loss_and_gradients(features, labels)
    with tf.name_scope("optimizer"):
      grads, _ = tf.clip_by_global_norm(grads, 1.0)
      optimizer.apply(grads, variables)
    return loss

  results = {"peak_gflops": {"float32": matmul_peak_gflops(tf.float32),
                             "bfloat16": matmul_peak_gflops(tf.bfloat16)}}
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
    if _TF_OP_PROFILE.value:
      def run_steps():
        for _ in range(_STEPS.value):
          step(features, labels).numpy()
      ops = benchlib.op_times_ms(run_steps, _STEPS.value, _phase)
      results[length]["ops"] = [[phase, op, ms] for (phase, op), ms in ops.most_common()]
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

    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16,
                                      enabled=_PRECISION.value == "mixed_bfloat16")

    def forward():
      with torch.no_grad(), autocast():
        return model(input_ids=ids, attention_mask=mask).logits

    def forward_backward():
      model.zero_grad(set_to_none=True)
      with autocast():
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
      loss.backward()

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
  peak = sides["tf"].pop("peak_gflops")
  compute = "bfloat16" if _PRECISION.value == "mixed_bfloat16" else "float32"
  xla = ", TF side compiled by XLA" if _TF_JIT_COMPILE.value else ""
  print(f"batch {_BATCH.value}, {_PRECISION.value}{xla}, median ms per call (torch threads: "
        f"{sides['torch'].pop('threads')}); matmul peak here: float32 "
        f"{peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s")
  print(f"{'length':>6} {'what':>17} {'tf':>9} {'torch':>9} {'tf/torch':>9}")
  for length in _LENGTHS.value:
    tf_ms, torch_ms = sides["tf"][length], sides["torch"][length]
    for ms in (tf_ms, torch_ms):
      ms["backward"] = ms["forward_backward"] - ms["forward"]
      ms["optimizer"] = ms["step"] - ms["forward_backward"]
    for what in ("forward", "backward", "optimizer", "step"):
      print(f"{length:>6} {what:>17} {tf_ms[what]:9.1f} {torch_ms[what]:9.1f} "
            f"{tf_ms[what] / torch_ms[what]:9.2f}")
    gflop = step_gflop(_BATCH.value, int(length))
    for side, ms in (("tf", tf_ms), ("torch", torch_ms)):
      achieved = gflop / (ms["step"] / 1000)
      print(f"{length:>6} {side + ' GFLOP/s':>17} {achieved:9.0f} ({100 * achieved / peak[compute]:.0f}% "
            f"of the {compute} matmul peak; {gflop:.1f} GFLOP a step)")
    if "ops" in tf_ms:
      total = sum(ms for _, _, ms in tf_ms["ops"])
      phases = {p: sum(ms for q, _, ms in tf_ms["ops"] if q == p)
                for p in ("forward", "backward", "optimizer")}
      print(f"{length:>6} tf ops, ms per step summed over threads: {total:.1f} (" +
            ", ".join(f"{p} {ms:.1f}" for p, ms in phases.items()) + "); the busiest:")
      for phase, op, ms in tf_ms["ops"][:_TOP_OPS]:
        print(f"{'':>6} {phase:>17} {op:<28} {ms:7.1f} ms {100 * ms / total:5.1f}%")


if __name__ == "__main__":
  app.run(main)
