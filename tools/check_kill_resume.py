"""kill -9 a training run at random moments, rerun the same command until it ends, and
check that it ends as an uninterrupted run does: the same weights (bit for bit), best.json,
eval/report.json and TensorBoard scalars (each logged step once, with the same values; the
speed aside).

  python tools/check_kill_resume.py                                  # configs/smoke.py
  python tools/check_kill_resume.py --rounds=4 --kills=2 -- \
      --config=configs/smoke_ner.py --config.train.steps=400 --config.train.eval_every=50
  python tools/check_kill_resume.py --damage    # and damage a checkpoint after each kill
  python tools/check_kill_resume.py --diverge   # a run that diverges and goes back

Each round starts the command in a fresh workdir and kills it (SIGKILL: no handler runs,
as with the OOM killer or a lost VM) after a random time in [5 s, 95% of the uninterrupted
run's time], up to --kills times, then reruns it to the end. With --damage, after each
kill the newest checkpoint is damaged as a disk or a person might (a file cut short, a bit
flipped, its data file or all its files deleted; or TensorFlow's state file deleted), one
way drawn at random, when there is an older checkpoint to resume from. With --diverge, the
run is a regression on ../shared/data/tiny/sst2 whose train labels hold one 1e30 (its squared
error is infinite in float32), so each batch holding that example diverges and the run goes
back to its last checkpoint (train.divergence_rollbacks; a checkpoint every 4 steps, 200
steps): kills land around rollbacks, and the uninterrupted run's message at each divergence
must name that line (train.tsv:11) alone. Arguments after `--` go to
tf_finetune.train (default: configs/smoke.py, 600 steps, a checkpoint every 20). Prints
where each kill landed (the rerun's "Resuming from" line, and the TensorBoard events of
the killed process it removed), then the largest weight difference and whether the run
files match, per round; exits 1 if any round differs.
"""
import json
import logging
import pathlib
import random
import re
import subprocess
import sys
import time

import benchlib
import numpy as np
from absl import app
from absl import flags

_ROUNDS = flags.DEFINE_integer("rounds", 6, "Killed runs to compare.")
_KILLS = flags.DEFINE_integer("kills", 2, "Kills per round (fewer when the run ends first).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill times.")
_DAMAGE = flags.DEFINE_bool("damage", False, "After each kill, damage the newest checkpoint.")
_DIVERGE = flags.DEFINE_bool("diverge", False, "Train on data with an example whose loss is "
                             "infinite, going back to the last checkpoint at each divergence.")
DEFAULT_ARGS = ["--config=configs/smoke.py", "--config.train.steps=600",
                "--config.train.eval_every=50", "--config.train.checkpoint_every=20",
                "--config.train.log_every=10"]
RUN_FILES = ("checkpoints/best.json", "eval/report.json")
SPEED_TAGS = ("steps_per_sec", "examples_per_sec")


def _train(workdir, args, timeout=None):
  """Returns the exit code ("killed" when the timeout came first) and the output."""
  process = subprocess.Popen([sys.executable, "-m", "tf_finetune.train", f"--workdir={workdir}",
                              *args], cwd=benchlib.REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  try:
    output = process.communicate(timeout=timeout)[0]
    return process.returncode, output
  except subprocess.TimeoutExpired:
    process.kill()
    return "killed", process.communicate()[0]


def _flip_a_bit(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))


def _cut_short(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "cut short": lambda index, data: _cut_short(data),
    "a bit flipped": lambda index, data: _flip_a_bit(data),
    "a bit flipped in its index": lambda index, data: _flip_a_bit(index),
    "its data deleted": lambda index, data: data.unlink(),
    "its files deleted": lambda index, data: (index.unlink(), data.unlink()),
    "the state file deleted": lambda index, data: (index.parent / "checkpoint").unlink(
        missing_ok=True),
}


def _damage_newest(workdir, rng):
  """Damages the newest checkpoint one way drawn from DAMAGE, when an older one exists."""
  from tf_finetune import experiment
  found = experiment.training_checkpoints(experiment.Workdir(workdir))
  if len(found) < 2:
    return "no older checkpoint: not damaged"
  how = rng.choice(sorted(DAMAGE))
  index = pathlib.Path(found[0] + ".index")
  data = next(index.parent.glob(index.stem + ".data-*"))
  DAMAGE[how](index, data)
  return f"{index.stem} damaged: {how}"


def _diverging_args(root):
  """A regression on the tiny SST-2 cut whose 10th train label is 1e30: its squared error
  overflows float32, so every step whose batch holds it is non-finite."""
  from tf_finetune import config as config_lib
  shared = config_lib.shared_data_dir()
  if shared is None or not (shared / "tiny" / "sst2_train.tsv").is_file():
    sys.exit("--diverge reads ../shared/data/tiny/sst2_{train,dev}.tsv, absent here")
  data = root / "diverging_data"
  data.mkdir()
  for name in ("train", "dev"):
    lines = (shared / "tiny" / f"sst2_{name}.tsv").read_text().splitlines()
    if name == "train":
      text, _ = lines[10].rsplit("\t", 1)
      lines[10] = f"{text}\t1e30"
    (data / f"{name}.tsv").write_text("\n".join(lines) + "\n")
  return ["--config=configs/smoke.py", "--config.task.name=regression",
          "--config.data.source=tsv", f"--config.data.dir={data}",
          "--config.data.train_file=train.tsv", "--config.data.dev_file=dev.tsv",
          "--config.data.text_column=sentence", "--config.train.steps=200",
          "--config.train.eval_every=50", "--config.train.checkpoint_every=4",
          "--config.train.log_every=10", "--config.train.divergence_rollbacks=1000"]


def _check_named(output):
  """--diverge: each divergence's message names the 1e30 line, train.tsv:11, alone. Prints
  how many did; True if any did not."""
  said = [line for line in output.splitlines()
          if re.search(r"step \d+: loss \S+ and gradient norm", line)]
  named = [line for line in said if re.search(
      r"recomputed, the loss is not finite on 1 of the step's \d+ train examples: "
      r"\S*/train\.tsv:11 \(loss inf\)", line)]
  print(f"divergences naming train.tsv:11 alone: {len(named)} of {len(said)}", flush=True)
  return len(named) != len(said) or not said


def _resumed_from(output):
  """"from ckpt-N" if the start resumed, with the TensorBoard events it removed."""
  found = []
  for line in output.splitlines():
    if ": damaged (" in line:
      found.append(line.split(": damaged (", 1)[0].rsplit("/", 1)[-1] + " found damaged")
    elif "Resuming from " in line:
      checkpoint = line.split("Resuming from ", 1)[1].split(" at step")[0].rsplit("/", 1)[-1]
      found.append(f"from {checkpoint}")
    elif "TensorBoard events of steps" in line and "went back to" in line:
      continue  # a rollback's own removal, counted below
    elif "TensorBoard events of steps" in line:
      removed = line.split(": removed ", 1)[1].split(" from ")[0]
      found.append(f"{found.pop() if found else 'anew'} (removed {removed})")
  rollbacks = sum("Went back to " in line for line in output.splitlines())
  return found + ([f"went back {rollbacks} time{'s' if rollbacks > 1 else ''}"]
                  if rollbacks else [])


def _run_files(workdir):
  from tf_finetune.training import summaries
  files = {name: json.loads((workdir / name).read_text().replace(str(workdir), "WORKDIR"))
           if (workdir / name).is_file() else None for name in RUN_FILES}
  files["tensorboard"] = {key: values for key, values in
                          summaries.read_scalars(workdir / "tensorboard").items()
                          if key[1] not in SPEED_TAGS}
  return files


def _scalar_differences(expected, found):
  """Where two runs' TensorBoard scalars differ: per tag, the steps only one has, and the
  first step whose values differ."""
  said = []
  for key in sorted(set(expected) | set(found)):
    a, b = dict(expected.get(key, [])), dict(found.get(key, []))
    counts = (len(expected.get(key, [])), len(found.get(key, [])))
    only = sorted(set(a) ^ set(b))
    differ = [step for step in sorted(set(a) & set(b)) if a[step] != b[step]]
    if only or differ or counts[0] != counts[1]:
      said.append(f"{'/'.join(key)}: {counts[0]} against {counts[1]} points"
                  + (f", steps in one only {only[:5]}" if only else "")
                  + (f", values differ from step {differ[0]}" if differ else ""))
  return "; ".join(said)


def main(argv):
  logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its loader's per-file lines
  from tf_finetune import experiment
  root = pathlib.Path(benchlib.scratch_dir("check_kill_resume_"))
  args = argv[1:] or (_diverging_args(root) if _DIVERGE.value else DEFAULT_ARGS)
  start = time.time()
  code, output = _train(root / "whole", args)
  whole_seconds = time.time() - start
  if code != 0:
    sys.exit(f"the uninterrupted run failed:\n{output[-3000:]}")
  print(f"uninterrupted: {whole_seconds:.0f} s{', ' if _DIVERGE.value else ''}"
        f"{', '.join(_resumed_from(output))}", flush=True)
  misnamed = _DIVERGE.value and not argv[1:] and _check_named(output)
  expected_weights = [np.asarray(v) for v in
                      experiment.load_run(root / "whole", "latest").model.weights]
  expected_files = _run_files(root / "whole")
  rng = random.Random(_SEED.value)
  differing = 0
  for round_ in range(_ROUNDS.value):
    workdir = root / f"killed_{round_}"
    story = []  # kill times and the checkpoint each start resumed from
    for _ in range(_KILLS.value):
      seconds = rng.uniform(5, 0.95 * whole_seconds)
      code, output = _train(workdir, args, timeout=seconds)
      story += _resumed_from(output)
      story.append(f"killed at {seconds:.1f} s" if code == "killed" else f"ended ({code})")
      if code != "killed":
        break
      if _DAMAGE.value:
        story.append(_damage_newest(workdir, rng))
    code, output = _train(workdir, args)
    story += _resumed_from(output) + [f"rerun ended ({code})"]
    if code != 0:
      print(f"round {round_}: {', '.join(story)}:\n{output[-3000:]}")
      differing += 1
      continue
    weights = [np.asarray(v) for v in experiment.load_run(workdir, "latest").model.weights]
    gap = max(float(np.max(np.abs(a - b))) if a.size else 0.0
              for a, b in zip(expected_weights, weights))
    files = _run_files(workdir)
    same = {name: files[name] == expected_files[name] for name in files}
    differing += gap > 0 or not all(same.values())
    print(f"round {round_}: {', '.join(story)}; largest weight difference {gap:.3g}; "
          + "; ".join(f"{name} {'same' if same[name] else 'DIFFERENT'}" for name in same),
          flush=True)
    if not same["tensorboard"]:
      print("  " + _scalar_differences(expected_files["tensorboard"], files["tensorboard"]))
  print(f"{_ROUNDS.value - differing} of {_ROUNDS.value} killed runs ended as the uninterrupted one")
  sys.exit(1 if differing or misnamed else 0)


if __name__ == "__main__":
  app.run(main)
