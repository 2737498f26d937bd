"""What the tools share: each side of a benchmark in its own process, peak RSS, configs.

A tool runs itself again with --run=SIDE (or another flag) for each side; the child
prints its result with `emit`, the parent reads it back with `run_side`. Tools run as
`python tools/NAME.py`, so this module imports as `benchlib` (its folder is on sys.path)
and tf_finetune comes from the installed package (`pip install -e .`); configs are loaded
by path with tf_finetune.config.load, the one override idiom.
"""
import atexit
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
_RESULT = "RESULT "
# The HF Trainer sides of the benchmarks: side -> TrainingArguments.bf16.
TORCH_SIDES = {"torch": False, "torch_bf16": True}


def peak_rss_mb():
  """This process's peak resident memory, MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scratch_dir(prefix):
  """A temporary run directory, removed when this process exits: a run with its
  checkpoints is hundreds of MB, and a benchmark's sides leave nothing behind."""
  path = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


def emit(result):
  """The child's side of run_side: one line the parent finds among the logs."""
  print(_RESULT + json.dumps(result), flush=True)


def run_side(script, args, env=None):
  """Runs `python script *args` in a fresh process (clean memory, its own threads; env: its
  environment, this one's by default) and returns the dict it emitted; stops with the
  child's last output when it failed."""
  proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                        env=env)
  lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
  if proc.returncode or not lines:
    print(proc.stderr[-4000:], file=sys.stderr)
    raise SystemExit(f"{pathlib.Path(script).name} {' '.join(args)}: failed "
                     f"(exit {proc.returncode})")
  return json.loads(lines[-1][len(_RESULT):])


def load_config(name, overrides=None):
  """configs/<name>.py with {"section.key": value} overrides, validated."""
  from tf_finetune import config as config_lib
  return config_lib.load(CONFIGS / f"{name}.py", overrides)


def sst2_budget(overrides=None, max_train_examples=8000, epochs=1.0):
  """configs/sst2.py at configs/common.py's reduced technique budget, plus overrides."""
  from tf_finetune import config as config_lib
  config = config_lib.common().sst2_technique_budget(
      config_lib.load_module(CONFIGS / "sst2.py").get_config(), max_train_examples, epochs)
  return config_lib.override(config, overrides)


class Sst2BudgetTable:
  """The SST-2 budget tables' flags (--rows, --max_train_examples, --epochs, --run) and
  loop: each row trained in its own process (bench_techniques, bench_privacy)."""

  def __init__(self, rows, what):
    from absl import flags
    self.rows = rows
    self.names = flags.DEFINE_list(what, list(rows), "Rows to run.")
    self.run = flags.DEFINE_string("run", None, "Internal: run one row in this process.")
    self.max_train = flags.DEFINE_integer("max_train_examples", 8000, "Train examples.")
    self.epochs = flags.DEFINE_float("epochs", 1.0, "Epochs.")

  def header(self):
    return (f"SST-2, {self.max_train.value} train examples, {self.epochs.value} epoch(s), "
            "max 64 wordpieces, dev 872 sentences, all-MiniLM-L6-v2, 2-core CPU")

  def train(self, name):
    """(trainer, result) of row `name`, in this process."""
    trainer, _, _, result = train_sst2_budget(name, self.rows[name], self.max_train.value,
                                              self.epochs.value)
    return trainer, dict(result, row=name)

  def results(self, script):
    """Yields (name, result) of each chosen row, each run in a fresh process that gets this
    process's command-line flags (absl's argv no longer holds them)."""
    for name in self.names.value:
      yield name, run_side(script, [f"--run={name}", *sys.argv[1:]])


def train_sst2_budget(name, overrides, max_train_examples, epochs):
  """Trains one row of a budget table (sst2_budget plus overrides) in a fresh run directory;
  returns (the trainer, its config, training seconds, the common result fields)."""
  import time
  from tf_finetune.training import trainer as trainer_lib
  config = sst2_budget(overrides, max_train_examples, epochs)
  trainer = trainer_lib.Trainer(config, scratch_dir(f"bench_{name}_"))
  start = time.time()
  trainer.train()
  seconds = time.time() - start
  return trainer, config, seconds, {
      "dev_accuracy": trainer.best["value"], "best_step": trainer.best["step"],
      "steps": trainer.step,
      "examples_per_sec": trainer.step * config.train.batch_size / seconds,
      "peak_rss_mb": peak_rss_mb()}


def torch_dataset(encodings, labels):
  """A torch Dataset of a tokenizer's batch encodings and per-example labels, as the HF
  Trainer takes it (PyTorch sides of the benchmarks)."""
  import torch

  class Examples(torch.utils.data.Dataset):
    def __len__(self):
      return len(labels)

    def __getitem__(self, i):
      return dict({k: v[i] for k, v in encodings.items()}, labels=labels[i])
  return Examples()


def op_times_ms(run_steps, steps, phase_of):
  """{(phase, op type): ms per step} of TensorFlow's profiler over run_steps(), which runs
  `steps` train steps; phase_of(op name with its name scopes) -> the op's phase. Reads the
  profiler's XSpace: the host plane's per-op events on the `tf_Compute` lines (TensorFlow's
  executor threads, which overlap: the sum exceeds the steps' wall time)."""
  import collections
  import glob
  import tensorflow as tf
  from tensorflow.tsl.profiler.protobuf import xplane_pb2
  logdir = tempfile.mkdtemp(prefix="op_times_")
  tf.profiler.experimental.start(logdir)
  run_steps()
  tf.profiler.experimental.stop()
  space = xplane_pb2.XSpace()
  space.ParseFromString(pathlib.Path(
      glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb")[0]).read_bytes())
  shutil.rmtree(logdir, ignore_errors=True)
  times = collections.Counter()
  for plane in (p for p in space.planes if p.name == "/host:CPU"):
    for line in (l for l in plane.lines if l.name.startswith("tf_Compute")):
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name  # "scope/op_name:OpType"
        if ":" not in name or name.startswith("ExecutorState") or "ParallelFor" in name:
          continue  # the executor's own spans, which hold the ops
        times[(phase_of(name), name.rsplit(":", 1)[1])] += event.duration_ps / 1e9 / steps
  return times
