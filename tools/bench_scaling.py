"""Training throughput on 1 and 2 replicas (logical CPU devices) and on 2 worker processes.

  python tools/bench_scaling.py [--steps=40] [--per_replica_batch=16] [--max_seq_length=128]

Runs `python -m tf_finetune.train` on the embedded default (all-MiniLM-L6-v2 on BBC News)
three ways, one after the other, with the per-replica batch fixed (weak scaling):
  1 replica    distribution.strategy=default
  2 replicas   distribution.strategy=mirrored, the CPU split into 2 logical devices
  2 workers    distribution.strategy=multi_worker, two processes on 127.0.0.1 (TF_CONFIG)
It reads examples/s from the training log, leaving out the first window (tracing), and
prints examples/s and the scaling efficiency: examples/s / (N * examples/s on 1 replica).
Logical devices and local workers share this machine's cores, so the figure measures the
overhead of the distributed step (all-reduce, input sharding), not added compute.
"""
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from tf_finetune import distribute

_STEPS = flags.DEFINE_integer("steps", 40, "Optimizer steps per run.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Steps per throughput window.")
_PER_REPLICA_BATCH = flags.DEFINE_integer("per_replica_batch", 16, "Batch size per replica.")
_MAX_SEQ_LENGTH = flags.DEFINE_integer("max_seq_length", 128, "data.max_seq_length.")

WINDOW = re.compile(r"step (\d+)/\d+ \| .*\| ([\d.]+) examples/s")


def _command(workdir, strategy, replicas):
  return [sys.executable, "-m", "tf_finetune.train", "--config=configs/default.py",
          f"--workdir={workdir}", f"--config.distribution.strategy={strategy}",
          f"--config.train.steps={_STEPS.value}", f"--config.train.log_every={_LOG_EVERY.value}",
          f"--config.train.eval_every={_STEPS.value}", "--config.train.eval_splits=dev",
          f"--config.train.batch_size={_PER_REPLICA_BATCH.value * replicas}",
          f"--config.data.max_seq_length={_MAX_SEQ_LENGTH.value}"] + (
              ["--config.distribution.num_cpu_devices=2"] if strategy == "mirrored" else [])


def _examples_per_sec(log):
  windows = [(int(step), float(rate)) for step, rate in WINDOW.findall(log)]
  steady = [rate for step, rate in windows if step > _LOG_EVERY.value]
  if not steady:
    raise RuntimeError(f"no throughput lines after step {_LOG_EVERY.value} in:\n{log[-3000:]}")
  return sum(steady) / len(steady)


def _run(name, strategy, replicas, processes):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = tempfile.mkdtemp(prefix=f"bench_scaling_{strategy}_")
  os.rmdir(workdir)
  envs = ([dict(os.environ, TF_CONFIG=c) for c in distribute.local_tf_configs(processes)]
          if strategy == "multi_worker" else [dict(os.environ)])
  start = time.time()
  running = [subprocess.Popen(_command(workdir, strategy, replicas), env=env, cwd=repo,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for env in envs]
  try:
    logs = [p.communicate(timeout=3600)[0] for p in running]
  finally:
    for p in running:
      if p.poll() is None:
        p.kill()
  for p, log in zip(running, logs):
    if p.returncode:
      raise RuntimeError(f"{name} failed:\n{log[-3000:]}")
  rate = _examples_per_sec(logs[0])  # the chief's log; every worker logs the global rate
  print(f"  {name}: {rate:.1f} examples/s ({time.time() - start:.0f} s wall)", flush=True)
  return rate


def main(argv):
  del argv
  print(f"all-MiniLM-L6-v2 on BBC News, {_STEPS.value} steps, {_PER_REPLICA_BATCH.value} "
        f"examples per replica, max_seq_length {_MAX_SEQ_LENGTH.value}, {os.cpu_count()} cores")
  runs = [("1 replica", "default", 1, 1), ("2 replicas (mirrored)", "mirrored", 2, 1),
          ("2 workers (multi_worker)", "multi_worker", 2, 2)]
  rates = {name: _run(name, strategy, replicas, processes)
           for name, strategy, replicas, processes in runs}
  base = rates["1 replica"]
  print(f"\n{'setup':<28}{'replicas':>9}{'examples/s':>12}{'efficiency':>12}")
  for name, _, replicas, _ in runs:
    print(f"{name:<28}{replicas:>9}{rates[name]:>12.1f}{rates[name] / (replicas * base):>12.2f}")


if __name__ == "__main__":
  app.run(main)
