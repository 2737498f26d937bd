"""Where the training loop's step time goes, on the run's own batches (issue 13, point 4).

  python tools/profile_loop.py                       # configs/sst2.py as tools/bench_sst2.py runs it
  python tools/profile_loop.py --dataset=emotion --rounds=5 --steps=30
  python tools/profile_loop.py --op_profile          # + TensorFlow's busiest ops in the step

tools/profile_step.py times a model step at fixed shapes on random ids; this times the
trainer's own step (training/trainer.py) on the batches its input pipeline makes
(packed, with the bench's hyperparameters and the precision `train.precision=auto` picks),
in one process, in --rounds rounds that alternate the measurements (so a host that drifts
moves them all alike), each the median ms of --steps calls after 3 warm-up calls:

  loop              the trainer's train_step on its real input pipeline (the distributed
                    iterator it trains from): what a training step costs
  loop_preloaded    the same train_step on batches the pipeline made before the round,
                    read from tf.data's in-memory cache (tf.data does no work while it
                    runs): loop minus this is the input wait
  step              the trainer's replica_step (forward, backward, all-reduce, clip, the
                    divergence guard, AdamW) on each preloaded batch: loop_preloaded minus
                    this is the host's share (iterator, distribution, dispatch)
  forward_backward  the packed forward pass and every gradient (their global norm is read,
                    so none is pruned): step minus this is all-reduce + clip + optimizer
  forward           the packed forward pass (training=True)

The weights change as the steps run; the batches are real, so the shapes vary as in training.
"""
import statistics
import time

import benchlib
from absl import app
from absl import flags

_DATASET = flags.DEFINE_enum("dataset", "sst2", ["sst2", "emotion"], "configs/<dataset>.py.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed calls per measurement and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds, each measuring everything once.")
_OP_PROFILE = flags.DEFINE_bool("op_profile", False, "Also list the step's busiest op types "
                                "(TensorFlow's profiler, as tools/profile_step.py does).")
_TOP_OPS = 20
WARMUP = 3
MEASUREMENTS = ("loop", "loop_preloaded", "step", "forward_backward", "forward")


def _median_ms(call, batches):
  for batch in batches[:WARMUP]:
    call(batch)
  times = []
  for batch in batches[WARMUP:]:
    start = time.perf_counter()
    call(batch)
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def main(argv):
  del argv
  import tensorflow as tf
  from tf_finetune.training import trainer as trainer_lib
  config = benchlib.load_config(_DATASET.value, {
      "data.max_seq_length": 64, "train.batch_size": 32, "train.learning_rate": 5e-5,
      "train.adam_epsilon": 1e-8, "train.seed": 0, "train.eval_every": 10**9})
  trainer = trainer_lib.Trainer(config, benchlib.scratch_dir("profile_loop_"))
  if trainer.accum_steps != 1 or trainer.dp_sgd is not None:
    raise SystemExit("profile_loop times one micro-batch a step without DP-SGD")
  model, task, strategy = trainer.model, trainer.task, trainer.strategy
  calls = WARMUP + _STEPS.value
  iterator = iter(strategy.distribute_datasets_from_function(trainer._dataset_fn))
  spec = iterator.element_spec
  train_step = trainer._build_train_step()

  def preload():
    """The pipeline's first `calls` batches (the same in every round), made now and held in
    memory: (a distributed iterator that reads them from tf.data's in-memory cache, the
    batches)."""
    dataset = trainer._dataset_fn(tf.distribute.InputContext()).take(calls).cache()
    batches = list(dataset)  # fills the cache
    return iter(strategy.experimental_distribute_dataset(dataset)), batches

  def loop(_):
    train_step(iterator)[0].numpy()

  step = tf.function(lambda batch: strategy.run(trainer.replica_step, args=(batch,))[0],
                     input_signature=[spec])

  forward_backward = tf.function(  # every gradient, read through their norm: none pruned
      lambda batch: tf.linalg.global_norm([g for g in trainer._gradients(
          batch, tf.constant(float(config.train.batch_size)))[1] if g is not None]),
      input_signature=[spec])
  forward = tf.function(lambda batch: task.training_logits(model, batch, training=True),
                        input_signature=[spec])
  results = {name: [] for name in MEASUREMENTS}
  shapes = []
  for _ in range(_ROUNDS.value):
    results["loop"].append(_median_ms(loop, [None] * calls))
    preloaded, batches = preload()
    shapes += [tuple(b["token_ids"].shape) for b in batches]
    results["loop_preloaded"].append(
        _median_ms(lambda _: train_step(preloaded)[0].numpy(), batches))
    results["step"].append(_median_ms(lambda b: step(b).numpy(), batches))
    results["forward_backward"].append(
        _median_ms(lambda b: forward_backward(b).numpy(), batches))
    results["forward"].append(_median_ms(lambda b: forward(b).numpy(), batches))
    print("round: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
  median = {name: statistics.median(values) for name, values in results.items()}
  rows = statistics.mean(s[0] for s in shapes)
  print(f"{_DATASET.value}, {trainer.precision}, packing {'on' if trainer.packing else 'off'}; "
        f"batches of {config.train.batch_size} examples in {rows:.1f} rows on average, of up "
        f"to {max(s[1] for s in shapes)} wordpieces; median over {_ROUNDS.value} rounds of the "
        f"per-round median ms of {_STEPS.value} calls (range over rounds):")
  for name in MEASUREMENTS:
    print(f"  {name:>16} {median[name]:7.1f}  ({min(results[name]):.1f}-"
          f"{max(results[name]):.1f})")
  parts = {
      "input wait (loop - loop_preloaded)": median["loop"] - median["loop_preloaded"],
      "host (loop_preloaded - step)": median["loop_preloaded"] - median["step"],
      "all-reduce + clip + guard + optimizer (step - forward_backward)":
          median["step"] - median["forward_backward"],
      "backward (forward_backward - forward)": median["forward_backward"] - median["forward"],
      "forward": median["forward"]}
  for name, ms in parts.items():
    print(f"  {ms:7.1f} ms {100 * ms / median['loop']:5.1f}%  {name}")
  if _OP_PROFILE.value:
    _, batches = preload()
    backward = lambda op_name: "backward" if op_name.startswith("gradient_tape") else "other"
    ops = benchlib.op_times_ms(lambda: [step(b).numpy() for b in batches], len(batches),
                               backward)
    total = sum(ops.values())
    print(f"step's ops, ms per step summed over TensorFlow's executor threads: {total:.1f} "
          f"(backward: ops under gradient_tape/; other: forward, clip, optimizer)")
    for (phase, op), ms in ops.most_common(_TOP_OPS):
      print(f"  {phase:>10} {op:<28} {ms:7.1f} ms {100 * ms / total:5.1f}%")


if __name__ == "__main__":
  app.run(main)
