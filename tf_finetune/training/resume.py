"""Which checkpoint a resumed run starts from: the newest whose files read whole.

Hand-written: TensorFlow's CheckpointManager trusts its `checkpoint` state file, which
names a checkpoint whether or not its files are intact and is itself one file to lose.
"""
import pathlib
import time

import tensorflow as tf
from absl import logging

from tf_finetune import experiment
from tf_finetune.errors import WorkdirError

DAMAGED_DIR = "damaged"


def restore_newest_intact(workdir, restore, *, repair):
  """Restores the newest training checkpoint that reads whole with `restore(path)` (which
  raises WorkdirError) and returns its path; None when the run has no checkpoint yet.

  A checkpoint whose files cannot be read whole (cut short, garbled, a shard missing) is
  damaged: the one before it is restored instead, with a warning; with `repair` (the chief
  only), the damaged one's files are moved to checkpoints/damaged/ and TensorFlow's state
  file is rewritten to name the checkpoints left. One that reads whole but does not fit the
  model (another run's) stops the resume, as does a run whose checkpoints are all damaged,
  or gone while the state file still names them: a run is never started anew over its
  steps."""
  state = _read_state(workdir.checkpoints)
  found = experiment.training_checkpoints(workdir)
  if not found and state is not None:
    named = [pathlib.Path(p).name for p in state.all_model_checkpoint_paths] or [
        pathlib.Path(state.model_checkpoint_path).name]
    raise WorkdirError(
        f"{workdir.checkpoints}: the state file `checkpoint` names {', '.join(named)}, "
        "but no checkpoint's files are here; restore them to resume, or move "
        f"{workdir.checkpoints} away to start this run anew")
  damaged = []
  for path in found:
    try:
      restore(path)
    except WorkdirError:
      reason = experiment.unreadable_checkpoint(path)
      if reason is None:  # intact: it does not fit the model, and an older one is no answer
        raise
      damaged.append((path, reason))
      logging.warning("%s: damaged (%s)%s", path, reason,
                      "; trying the checkpoint before it" if path != found[-1] else "")
      continue
    if damaged:
      logging.warning("%s: the newest intact checkpoint, resumed from: %d newer one(s) could "
                      "not be read whole (%s); the steps after it are done again", path,
                      len(damaged), ", ".join(pathlib.Path(p).name for p, _ in damaged))
    if repair:
      _set_aside(workdir, [p for p, _ in damaged])
      _rewrite_state_file(workdir.checkpoints, state, found[len(damaged):])
    return path
  if not found:
    return None
  raise WorkdirError(
      f"{workdir.checkpoints}: every checkpoint is damaged ("
      + "; ".join(f"{pathlib.Path(p).name}: {reason}" for p, reason in damaged)
      + "); the run cannot resume: restore them from a copy, or train in a new --workdir")


def _read_state(directory):
  """TensorFlow's state file in `directory`, or None when it is missing or cannot be read
  (the files on disk are used either way)."""
  state_file = directory / "checkpoint"
  if not state_file.is_file():
    return None
  try:
    state = tf.train.get_checkpoint_state(str(directory))
  except (tf.errors.OpError, ValueError):  # ValueError: no model_checkpoint_path, not UTF-8
    state = None
  if state is None:
    logging.warning("%s: cannot be read; the checkpoints found beside it are used",
                    state_file)
  return state


def repair_best_state(workdir):
  """Rewrites the best checkpoints' state file (checkpoints/best/checkpoint), which their
  CheckpointManager reads to know which to delete next, when TensorFlow cannot read it: to
  name the best checkpoints on disk, or, with none there, moves it to checkpoint.unreadable.
  TensorFlow skips a state file it cannot parse but raises on one that is not UTF-8 or names
  no checkpoint."""
  directory = workdir.best
  if not (directory / "checkpoint").is_file() or _read_state(directory) is not None:
    return
  found = experiment.checkpoints_in(directory)
  if found:
    _rewrite_state_file(directory, None, found)
  else:
    (directory / "checkpoint").rename(directory / "checkpoint.unreadable")


def _set_aside(workdir, damaged):
  """Moves the damaged checkpoints' files to checkpoints/damaged/ (a numbered folder in it
  when a name is taken): nothing is deleted, and no later resume tries them again."""
  if not damaged:
    return
  files = [f for path in damaged for f in sorted(pathlib.Path(path).parent.glob(
      pathlib.Path(path).name + ".*"))]
  target, number = workdir.checkpoints / DAMAGED_DIR, 1
  while any((target / f.name).exists() for f in files):
    number += 1
    target = workdir.checkpoints / DAMAGED_DIR / str(number)
  target.mkdir(parents=True, exist_ok=True)
  for f in files:
    f.rename(target / f.name)
  logging.warning("Moved %s to %s", ", ".join(f.name for f in files), target)


def _rewrite_state_file(directory, state, intact):
  """TensorFlow's state file naming `intact` (newest first), when `state` (as read, or None)
  names anything else: its CheckpointManager reads it to know which checkpoints to delete
  as new ones come. Their times are kept from the old file where it had them, else the
  index files'."""
  names = [pathlib.Path(p).name for p in reversed(intact)]
  if state is not None and [pathlib.Path(p).name for p in state.all_model_checkpoint_paths] \
      == names and pathlib.Path(state.model_checkpoint_path).name == names[-1]:
    return
  times = {}
  if state is not None:
    times = {pathlib.Path(p).name: t for p, t in zip(state.all_model_checkpoint_paths,
                                                        state.all_model_checkpoint_timestamps)}
  stamps = [min(times.get(n) or (directory / f"{n}.index").stat().st_mtime,
                time.time()) for n in names]
  preserved = state.last_preserved_timestamp if state is not None and \
      state.last_preserved_timestamp else min(stamps) - 1
  tf.compat.v1.train.update_checkpoint_state(
      str(directory), names[-1], names, all_model_checkpoint_timestamps=stamps,
      last_preserved_timestamp=preserved)
  logging.warning("%s: rewritten to name %s", directory / "checkpoint",
                  ", ".join(names))
