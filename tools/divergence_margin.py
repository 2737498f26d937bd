"""How far below train.divergence_loss_ratio healthy runs stay: trains configs for a few
steps, logging every step, and prints the peak of the training loss's moving average over
the loss of the first step, the quantity the trainer stops a run at (default 10).

  python tools/divergence_margin.py                      # the shipped configs, 150 steps
  python tools/divergence_margin.py --configs=configs/sst2.py --steps=300 \
      --overrides=train.learning_rate=1e-3

Each config runs as `python -m tf_finetune.train` in its own process with the check off
(train.divergence_loss_ratio=0, so a run that would stop shows how far it went), into a
temporary workdir removed afterwards; the average is recomputed from the logged per-step
losses with the trainer's own decay. A run that fails (its data absent: ../shared/data, or
tools/make_wnut17_derived.py's output for configs/wnut17_count.py and wnut17_types.py, which
take --overrides=data.dir=...) is reported with its error line.
"""
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from tf_finetune.training.trainer import LOSS_AVERAGE_DECAY

REPO = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = ["configs/default.py", "configs/sst2.py", "configs/emotion.py", "configs/trec.py",
           "configs/rte.py", "configs/wnut17.py", "configs/setfit.py"]

_CONFIGS = flags.DEFINE_list("configs", SHIPPED, "Config files to run.")
_STEPS = flags.DEFINE_integer("steps", 150, "Training steps of each run (train.steps).")
_OVERRIDES = flags.DEFINE_list("overrides", [], "KEY=VALUE config overrides for every run.")


def peak_ratio(losses):
  """(peak of the moving average over the first loss, the step it peaked at)."""
  first = average = losses[0]
  peak, at = 1.0, 1
  for step, loss in enumerate(losses[1:], start=2):
    average = LOSS_AVERAGE_DECAY * average + (1 - LOSS_AVERAGE_DECAY) * loss
    if average / first > peak:
      peak, at = average / first, step
  return peak, at


def main(argv):
  del argv
  for path in _CONFIGS.value:
    with tempfile.TemporaryDirectory() as workdir:
      start = time.time()
      result = subprocess.run(
          [sys.executable, "-m", "tf_finetune.train", f"--config={path}",
           f"--workdir={workdir}/run", f"--config.train.steps={_STEPS.value}",
           f"--config.train.eval_every={_STEPS.value}", "--config.train.log_every=1",
           "--config.train.divergence_loss_ratio=0",
           *[f"--config.{item}" for item in _OVERRIDES.value]],
          cwd=REPO, capture_output=True, text=True)
    losses = [float(m) for m in re.findall(r"step \d+/\d+ \| loss (\S+)", result.stderr)]
    if result.returncode or not losses:
      error = [line for line in result.stderr.splitlines() if line.startswith("error")]
      print(f"{path}: exit {result.returncode}: {error[:1] or result.stderr[-500:]}")
      continue
    peak, at = peak_ratio(losses)
    print(f"{path}: {len(losses)} steps, first loss {losses[0]:.4f}, last {losses[-1]:.4f}; "
          f"moving average over the first loss peaked at {peak:.2f} (step {at}) "
          f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
  app.run(main)
