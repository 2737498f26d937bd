"""What a run does when things go wrong: divergence, signals, a second trainer, a damaged run
directory, crashes between an evaluation and a checkpoint, leftovers (README "Failure modes")."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, override, tiny_config, write_sentiment_tsv
from tf_finetune import experiment
from tf_finetune.errors import ConfigError, TrainingError, UserError, WorkdirError
from tf_finetune.evaluation import evaluator
from tf_finetune.training import summaries
from tf_finetune.training import trainer as trainer_lib


def _weights(model):
  return [v.numpy().copy() for v in model.trainable_variables]


def _poison_step(trainer, bad_iterations):
  """Makes the training loss NaN at the given optimizer iterations (0-based), on device."""
  clean = trainer.task.training_losses

  def losses(labels, logits):
    bad = tf.reduce_any(tf.equal(trainer.optimizer.iterations, bad_iterations))
    return tf.where(bad, np.nan, clean(labels, logits))
  trainer.task.training_losses = losses


def test_a_nonfinite_step_stops_the_run_and_touches_no_checkpoint(sentiment_dir, tmp_path):
  run = tmp_path / "run"
  config = tiny_config(sentiment_dir, train__steps=6, train__eval_every=3)
  trainer_lib.Trainer(config, run).train(until_step=3)
  best_json = (run / "checkpoints" / "best.json").read_text()
  files = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
  t = trainer_lib.Trainer(config, run)
  _poison_step(t, [3])  # the 4th step, the first after resuming
  with pytest.raises(TrainingError, match=r"training diverged at step 4: loss nan") as e:
    t.train()
  assert f"the last checkpoint is {run / 'checkpoints' / 'ckpt-3'}" in str(e.value)
  saved = experiment.load_run(run, "latest")
  assert saved.step == 3
  for a, b in zip(_weights(saved.model), _weights(t.model)):  # the bad step was not applied
    np.testing.assert_array_equal(a, b)
  assert (run / "checkpoints" / "best.json").read_text() == best_json
  assert not [p for p in (run / "checkpoints").rglob("*ckpt-4*")]
  for path, data in files.items():
    if "best" in str(path):
      assert path.read_bytes() == data, path


def test_a_diverged_run_rerun_ends_its_tensorboard_session_once(sentiment_dir, tmp_path):
  """A diverged run ends its HParams session as a failure; the rerun resumes from its last
  checkpoint and ends the session itself (here diverging again), so one end is left."""
  config = tiny_config(sentiment_dir, train__steps=6, train__eval_every=3)
  run = tmp_path / "run"
  for _ in range(2):
    t = trainer_lib.Trainer(config, run)
    _poison_step(t, [3])
    with pytest.raises(TrainingError, match=r"training diverged at step 4"):
      t.train()
    assert _tensorboard_scalars(run)["", "sessions ended"] == 1
    assert _tensorboard_scalars(run)["", "sessions started"] == 1


def _poisoned_sentiment(directory):
  """The sentiment data with a "#" in one train text: _poison_text makes each batch that
  holds it non-finite, as a bad example can (the step's position does not matter)."""
  data = write_sentiment_tsv(directory)
  lines = (data / "train.tsv").read_text().splitlines()
  lines[5] = lines[5].replace("\t", " #\t")
  (data / "train.tsv").write_text("\n".join(lines) + "\n")
  return data


def _poison_text(trainer):
  token = int(trainer.encoder.tokenizer.token_to_id("#"))
  clean = trainer.task.training_logits

  def logits(model, batch, training):
    out = clean(model, batch, training)
    return tf.where(tf.reduce_any(tf.equal(batch["token_ids"], token)), np.nan, out)
  trainer.task.training_logits = logits
  return trainer


def _counts(trainer):
  return {k: int(trainer.run_state[k].numpy())
          for k in ("divergence_rollbacks", "batches_left_out", "nonfinite_steps")}


def test_a_diverged_run_goes_back_to_its_last_checkpoint_and_leaves_out_the_batches_since(
    tmp_path, caplog):
  """train.divergence_rollbacks: each batch holding the bad example diverges; the run goes
  back to its newest checkpoint (ckpt-0, saved first, before the first one), leaves out the
  batches since and ends at train.steps, each step once in TensorBoard. Killed after a
  rollback, before the next checkpoint, the rerun redoes the rollback and ends the same."""
  import logging
  data = _poisoned_sentiment(tmp_path / "data")
  config = tiny_config(data, train__steps=12, train__eval_every=4, train__checkpoint_every=2,
                       train__divergence_rollbacks=3)
  whole = _poison_text(trainer_lib.Trainer(config, tmp_path / "whole"))
  with caplog.at_level(logging.WARNING, logger="absl"):
    whole.train()
  went_back = [re.search(r"Went back to .*ckpt-(\d+) \(step (\d+)\) and left out the data "
                         r"of steps? ((\d+)-)?(\d+), the batches it had trained on since",
                         r.getMessage()) for r in caplog.records]
  went_back = [(int(m[1]), int(m[2]), int(m[4] or m[5]), int(m[5])) for m in went_back if m]
  assert whole.step == 12 and len(went_back) == 3, went_back
  assert went_back[0][:2] == (0, 0)  # the first divergence comes before ckpt-2
  for checkpoint, step, first, last in went_back:
    assert checkpoint == step and first == step + 1 and last >= first
  assert _counts(whole) == {"divergence_rollbacks": 3, "nonfinite_steps": 0,
                            "batches_left_out": sum(g[3] - g[1] for g in went_back)}
  assert all(np.isfinite(w).all() for w in _weights(whole.model))
  scalars = _tensorboard_scalars(tmp_path / "whole")
  assert [s for s, _ in scalars["train", "loss"]] == list(range(1, 13))
  assert ("train", "nonfinite_steps") not in scalars  # of undone steps
  assert scalars["", "sessions started"] == scalars["", "sessions ended"] == 1

  class Crash(Exception):
    pass
  crashed = _poison_text(trainer_lib.Trainer(config, tmp_path / "crashed"))
  save = crashed._save_checkpoint
  def save_unless_rolled_back_twice(manager, step):  # dies at the first save after
    if int(crashed.run_state["divergence_rollbacks"].numpy()) >= 2:
      raise Crash()
    return save(manager, step)
  crashed._save_checkpoint = save_unless_rolled_back_twice
  with pytest.raises(Crash):
    crashed.train()
  crashed._close()
  resumed = _poison_text(trainer_lib.Trainer(config, tmp_path / "crashed"))
  assert _counts(resumed)["divergence_rollbacks"] == 1
  resumed.train()
  assert _counts(resumed) == _counts(whole)
  for a, b in zip(_weights(whole.model), _weights(resumed.model)):
    np.testing.assert_array_equal(a, b)
  assert _tensorboard_scalars(tmp_path / "crashed") == scalars
  for name in ("best.json", "checkpoint"):
    assert (tmp_path / "crashed" / "checkpoints" / name).read_text().split("timestamp")[0] == \
        (tmp_path / "whole" / "checkpoints" / name).read_text().split("timestamp")[0]


def test_a_diverged_run_rerun_with_more_rollbacks_goes_on_as_if_set_from_the_start(tmp_path):
  """A run out of rollbacks stops in one line naming train.divergence_rollbacks; rerun with
  a larger one (a change a resume accepts, recorded in config.json) it resumes from its
  last checkpoint and ends as the run that had the larger value from the start."""
  data = _poisoned_sentiment(tmp_path / "data")
  config = tiny_config(data, train__steps=12, train__eval_every=4, train__checkpoint_every=2,
                       train__divergence_rollbacks=3)
  whole = _poison_text(trainer_lib.Trainer(config, tmp_path / "whole"))
  whole.train()
  run = tmp_path / "run"
  one = tiny_config(data, train__steps=12, train__eval_every=4, train__checkpoint_every=2,
                    train__divergence_rollbacks=1)
  with pytest.raises(TrainingError, match=r"training diverged at step \d+: loss nan .* "
                     r"already gone back to a checkpoint as often as "
                     r"train.divergence_rollbacks=1 allows"):
    _poison_text(trainer_lib.Trainer(one, run)).train()
  rerun = _poison_text(trainer_lib.Trainer(config, run))
  assert rerun.step > 0 and _counts(rerun)["divergence_rollbacks"] == 1
  rerun.train()
  assert _counts(rerun) == _counts(whole)
  for a, b in zip(_weights(whole.model), _weights(rerun.model)):
    np.testing.assert_array_equal(a, b)
  assert _tensorboard_scalars(run) == _tensorboard_scalars(tmp_path / "whole")
  assert json.loads((run / "config.json").read_text())["train"]["divergence_rollbacks"] == 3
  with pytest.raises(TrainingError, match=r"or rerun the same command with "
                     r"--config.train.divergence_rollbacks=2: it resumes from the last"):
    _poison_text(trainer_lib.Trainer(tiny_config(data), tmp_path / "none")).train()


def test_a_run_resumed_from_its_ckpt_0_starts_its_tensorboard_session_once(sentiment_dir,
                                                                           tmp_path):
  config = tiny_config(sentiment_dir, train__steps=6, train__eval_every=1,
                       train__checkpoint_every=4, train__divergence_rollbacks=1)
  trainer_lib.Trainer(config, tmp_path / "whole").train()
  _train_until_a_crash_after_evaluating(trainer_lib.Trainer(config, tmp_path / "run"), 1)
  resumed = trainer_lib.Trainer(config, tmp_path / "run")
  assert resumed.step == 0 and resumed.resumed_from.endswith("ckpt-0")
  resumed.train()
  assert _tensorboard_scalars(tmp_path / "run") == _tensorboard_scalars(tmp_path / "whole")
  assert _tensorboard_scalars(tmp_path / "run")["", "sessions started"] == 1


def test_divergence_rollbacks_are_refused_with_dp_sgd_and_below_zero():
  from tf_finetune import config as config_lib
  with pytest.raises(ConfigError, match=r"train.divergence_rollbacks=-1.*must be >= 0"):
    config_lib.load(REPO / "configs" / "smoke.py", {"train.divergence_rollbacks": -1})
  with pytest.raises(ConfigError, match=r"privacy.method='dp_sgd'.*cannot be made private "
                     r"with train.divergence_rollbacks"):
    config_lib.load(REPO / "configs" / "smoke.py", {"train.divergence_rollbacks": 1,
                                                    "privacy.method": "dp_sgd"})


def test_a_finite_loss_far_above_the_first_steps_stops_the_run_as_diverged(sentiment_dir,
                                                                           tmp_path):
  """A learning rate far too high drove a 2-label run's loss to hundreds, finite, and the run
  trained on to its end and reported chance accuracy with no word of it. Now the loss's
  moving average past train.divergence_loss_ratio times the first step's loss stops it as a
  non-finite step does: nothing saved after it; with train.divergence_loss_ratio=0 the same
  run trains to its end."""
  config = tiny_config(sentiment_dir, train__steps=24, train__eval_every=24,
                       train__checkpoint_every=2, train__learning_rate=100.0)
  run = tmp_path / "run"
  with pytest.raises(TrainingError) as e:
    trainer_lib.Trainer(config, run).train()
  message = str(e.value)
  diverged = re.match(r"training diverged at step (\d+): its loss \S+ brought the training "
                      r"loss's moving average to (\S+), (\d+) times the loss of the run's "
                      r"first step, (\S+) \(train.divergence_loss_ratio=10\.0\)\. ", message)
  assert diverged, message
  step, average, start = int(diverged[1]), float(diverged[2]), float(diverged[4])
  assert average > 10 * start and 0.5 < start < 0.9, message  # two labels: about ln 2
  assert "\n" not in message and "--config.train.divergence_loss_ratio=0" in message, message
  saved = experiment.load_run(run, "latest")
  assert saved.step < step and f"the last checkpoint is {run}/checkpoints/ckpt-" \
      f"{saved.step}" in message, message
  assert not [p for p in (run / "checkpoints").glob(f"ckpt-{step}.*")]
  assert _tensorboard_scalars(run)["", "sessions ended"] == 1

  unchecked = trainer_lib.Trainer(override(config, {"train.divergence_loss_ratio": 0.0}),
                                  tmp_path / "unchecked")
  unchecked.train()
  assert unchecked.step == 24


def test_a_finite_divergence_is_met_at_the_same_step_after_a_resume_and_rolls_back(
    sentiment_dir, tmp_path, caplog):
  """The first step's loss and the moving average are kept in the checkpoints, so a run
  resumed before its divergence stops at the step an uninterrupted run stops at; with
  train.divergence_rollbacks it goes back to its last checkpoint first, as for a non-finite
  step, and then stops."""
  import logging
  config = tiny_config(sentiment_dir, train__steps=40, train__eval_every=40,
                       train__checkpoint_every=2, train__learning_rate=5.0,
                       train__warmup_fraction=0.9)
  with pytest.raises(TrainingError, match=r"training diverged at step (\d+): its loss") as e:
    trainer_lib.Trainer(config, tmp_path / "whole").train()
  step = int(re.match(r"training diverged at step (\d+)", str(e.value))[1])
  assert step > 4, e.value  # else no resume comes before it
  resumed = tmp_path / "resumed"
  trainer_lib.Trainer(config, resumed).train(until_step=step - 1 - (step - 1) % 2)
  with pytest.raises(TrainingError) as again:
    trainer_lib.Trainer(config, resumed).train()
  assert str(again.value).replace(str(resumed), str(tmp_path / "whole")) == str(e.value)

  with caplog.at_level(logging.WARNING, logger="absl"):
    with pytest.raises(TrainingError, match=r"It had already gone back to a checkpoint as "
                       r"often as train.divergence_rollbacks=1 allows"):
      trainer_lib.Trainer(override(config, {"train.divergence_rollbacks": 1}),
                          tmp_path / "rolled").train()
  messages = [r.getMessage() for r in caplog.records]
  assert any(m.startswith(f"step {step}: its loss") for m in messages), messages
  assert any(m.startswith("Went back to ") for m in messages), messages


def test_divergence_loss_ratio_is_refused_between_zero_and_one():
  from tf_finetune import config as config_lib
  for value in (-1.0, 0.5, 1.0):
    with pytest.raises(ConfigError, match=rf"train.divergence_loss_ratio={value}.*must be 0 "
                       r"\(no check\) or above 1"):
      config_lib.load(REPO / "configs" / "smoke.py", {"train.divergence_loss_ratio": value})


def test_a_checkpoint_without_the_newer_run_state_resumes(sentiment_dir, tmp_path):
  """A run made before the rollback counts and the log window were kept in its checkpoints
  resumes with them at zero, and its best state from the checkpoint."""
  config = tiny_config(sentiment_dir, train__steps=6, train__eval_every=2)
  run = tmp_path / "run"
  t = trainer_lib.Trainer(config, run)
  t.train(until_step=4)
  old_state = {k: v for k, v in t.run_state.items()
               if k in ("best_value", "best_step", "evaluations_without_improvement",
                        "stopped_early_at_step", "nonfinite_steps")}
  for path in (run / "checkpoints").glob("ckpt-4.*"):
    path.unlink()
  old = experiment.new_checkpoint(t.model, t.optimizer, run_state=old_state)
  old.save_counter.assign(2)  # as CheckpointManager had counted
  old.write(str(run / "checkpoints" / "ckpt-4"))
  names = [n for n, _ in tf.train.list_variables(str(run / "checkpoints" / "ckpt-4"))]
  assert not [n for n in names if "batches_left_out" in n]
  resumed = trainer_lib.Trainer(config, run)
  assert resumed.step == 4 and resumed.best == t.best
  assert _counts(resumed)["batches_left_out"] == 0
  resumed.train()
  assert resumed.step == 6


def test_a_full_disk_at_a_checkpoint_stops_in_one_line_and_the_rerun_resumes(
    sentiment_dir, tmp_path, monkeypatch):
  """TensorFlow raises ResourceExhaustedError from SaveV2 when the disk is full (seen on a
  20 MB tmpfs); the checkpoint half written stays as ckpt-6_temp."""
  run = tmp_path / "run"
  config = tiny_config(sentiment_dir, train__steps=6, train__eval_every=3)
  save = tf.train.CheckpointManager.save

  def full_disk_at_step_6(manager, checkpoint_number=None, **kwargs):
    if checkpoint_number == 6 and manager.directory.endswith("checkpoints"):
      os.makedirs(os.path.join(manager.directory, "ckpt-6_temp"))
      raise tf.errors.ResourceExhaustedError(
          None, None, f"{manager.directory}/ckpt-6_temp/part-00000-of-00001.data-00000-of-"
          "00001.tempstate1; No space left on device [Op:SaveV2]")
    return save(manager, checkpoint_number=checkpoint_number, **kwargs)
  monkeypatch.setattr(tf.train.CheckpointManager, "save", full_disk_at_step_6)
  with pytest.raises(WorkdirError) as e:
    trainer_lib.Trainer(config, run).train()
  assert str(e.value) == (
      f"{run / 'checkpoints'}: could not save the checkpoint of step 6 (No space left on "
      f"device); the last complete one is {run / 'checkpoints' / 'ckpt-3'}. Free space and run "
      "the same command: it resumes from there")
  monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
  trainer_lib.Trainer(config, run).train()
  assert not (run / "checkpoints" / "ckpt-6_temp").exists()
  assert experiment.load_run(run, "latest").step == 6


def test_a_write_the_disk_refuses_is_one_line_from_any_entry_point(monkeypatch, capsys):
  import errno
  from tf_finetune import cli

  def write_report(argv):
    raise OSError(errno.ENOSPC, "No space left on device", "runs/x/eval/report.json")
  with pytest.raises(SystemExit) as e:
    cli.guard(write_report)([])
  assert str(e.value.code) == ("error: runs/x/eval/report.json: No space left on device; free "
                               "space and run the same command again")

  def read_only(argv):
    raise OSError(errno.EROFS, "Read-only file system", "runs/x/eval/report.json")
  with pytest.raises(SystemExit) as e:
    cli.guard(read_only)([])
  assert str(e.value.code).endswith("Read-only file system; use a writable directory and run "
                                    "the same command again")

  def export_variables(argv):  # TensorFlow's error from MergeV2Checkpoints on a full disk
    raise tf.errors.ResourceExhaustedError(
        None, None, "{{function_node __wrapped__MergeV2Checkpoints}} runs/x/export/x/.tmp-2/"
        "variables/variables.index; No space left on device [Op:MergeV2Checkpoints]")
  with pytest.raises(SystemExit) as e:
    cli.guard(export_variables)([])
  assert str(e.value.code).startswith("error: runs/x/export/x/.tmp-2/variables/variables.index: "
                                      "No space left on device; free space")

  def not_permitted(argv):  # EPERM: /sys, an immutable file, some network file systems
    raise PermissionError(errno.EPERM, "Operation not permitted", "/sys/x")
  with pytest.raises(SystemExit) as e:
    cli.guard(not_permitted)([])
  assert str(e.value.code) == ("error: /sys/x: Operation not permitted; fix its permissions "
                               "or use a writable directory and run the same command again")

  def other_error(argv):
    raise OSError(errno.EIO, "Input/output error", "x")
  with pytest.raises(OSError):  # not a storage refusal: the traceback stays
    cli.guard(other_error)([])


def test_a_file_written_into_place_names_itself_not_its_temporary_in_errors(tmp_path):
  from tf_finetune import atomic
  folder = tmp_path / "report.json"
  folder.mkdir()
  with pytest.raises(IsADirectoryError) as e:
    atomic.write_text(folder, "{}")
  assert e.value.filename == str(folder)
  assert list(tmp_path.iterdir()) == [folder] and not list(folder.iterdir())
  with pytest.raises(FileNotFoundError) as e:
    atomic.write_text(tmp_path / "missing" / "report.json", "{}")
  assert e.value.filename == str(tmp_path / "missing" / "report.json")


def test_a_folder_that_refuses_files_is_found_before_the_work(tmp_path, monkeypatch):
  import errno
  import pathlib
  from tf_finetune import atomic
  assert atomic.writable_directory(tmp_path / "a" / "b") == tmp_path / "a" / "b"
  assert not list((tmp_path / "a" / "b").iterdir())

  def refused(path, data):
    raise PermissionError(errno.EACCES, "Permission denied", str(path))
  monkeypatch.setattr(pathlib.Path, "write_bytes", refused)
  with pytest.raises(PermissionError) as e:
    atomic.writable_directory(tmp_path / "a")
  assert e.value.filename == str(tmp_path / "a")
  assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]


def test_skip_nonfinite_steps_skips_and_counts_them(sentiment_dir, tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  run = tmp_path / "run"
  t = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=4,
                                      train__skip_nonfinite_steps=1), run)
  _poison_step(t, [1])
  before = None

  original = t._nonfinite_step
  def spy(step, loss, norm):
    nonlocal before
    before = step
    original(step, loss, norm)
  t._nonfinite_step = spy
  t.train()
  assert before == 2 and t.step == 4
  assert int(t.run_state["nonfinite_steps"].numpy()) == 1
  acc = event_accumulator.EventAccumulator(str(run / "tensorboard" / "train"),
                                           size_guidance={"tensors": 0})
  acc.Reload()
  assert [(e.step, float(tf.make_ndarray(e.tensor_proto)))
          for e in acc.Tensors("nonfinite_steps")] == [(2, 1.0)]
  t2 = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=4,
                                       train__skip_nonfinite_steps=1), tmp_path / "two")
  _poison_step(t2, [1, 2])
  with pytest.raises(TrainingError, match="at step 3"):
    t2.train()


def test_ctrl_c_saves_at_the_step_boundary_and_says_how_to_resume(sentiment_dir, tmp_path):
  run = tmp_path / "run"
  config = tiny_config(sentiment_dir, train__steps=6, train__eval_every=100)
  t = trainer_lib.Trainer(config, run)
  scalars = t.writers.train_scalars

  def press_ctrl_c_at_step_3(step, values):
    scalars(step, values)
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)
  t.writers.train_scalars = press_ctrl_c_at_step_3
  handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN under `nohup ... &`
  with pytest.raises(trainer_lib.Preempted) as e:
    t.train()
  assert e.value.exit_code == 130
  assert str(e.value) == (f"SIGINT received: saved {run / 'checkpoints' / 'ckpt-3'} at step 3; "
                          "run the same command to resume")
  assert signal.getsignal(signal.SIGINT) == handler_before  # handlers restored
  assert not (run / ".lock").exists()
  resumed = trainer_lib.Trainer(config, run)
  assert resumed.step == 3
  resumed.train()
  whole = trainer_lib.Trainer(config, tmp_path / "whole")
  whole.train()
  for a, b in zip(_weights(resumed.model), _weights(whole.model)):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_config_values_are_refused():
  from tf_finetune import config as config_lib
  for key in ("train.max_grad_norm", "train.learning_rate"):
    with pytest.raises(ConfigError, match=f"config.{key}=inf: must be a finite number"):
      config_lib.load(REPO / "configs" / "smoke.py", {key: float("inf")})


def test_a_nan_metric_never_becomes_best_and_report_json_stays_strict(sentiment_dir, tmp_path):
  from tf_finetune.evaluation import reports
  t = trainer_lib.Trainer(tiny_config(sentiment_dir), tmp_path / "run")
  t._write_run_files()
  t._maybe_update_best({"accuracy": float("nan")}, 3)
  assert t.best is None
  t._maybe_update_best({"accuracy": 0.5}, 6)
  t._maybe_update_best({"accuracy": float("nan")}, 9)
  assert t.best["step"] == 6 and t.best["evaluations_without_improvement"] == 1
  reports.write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
  assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [None, 1.0]}
  t._close()


def _scripted_dev_metrics(trainer):
  """Dev accuracy rises until step 7, then stays: with patience 3 the run stops at step 10."""
  def evaluate_dev():
    value = min(trainer.step, 7) / 10
    return {"accuracy": value, "macro_f1": value, "loss": 1 - value, "num_examples": 16}
  trainer.evaluate_dev = evaluate_dev
  return trainer


def _train_until_a_crash_after_evaluating(trainer, crash_step):
  """Trains until the process dies right after the evaluation of `crash_step`."""
  class Crash(Exception):
    pass
  evaluate = trainer._evaluate

  def crashing(step):
    report = evaluate(step)
    if step == crash_step:
      raise Crash()
    return report
  trainer._evaluate = crashing
  with pytest.raises(Crash):
    trainer.train()
  trainer._close()


def test_early_stopping_is_exact_after_a_crash_between_evaluation_and_checkpoint(
    sentiment_dir, tmp_path):
  config = tiny_config(sentiment_dir, train__steps=30, train__eval_every=1,
                       train__checkpoint_every=4, train__early_stopping_patience=3)
  whole = _scripted_dev_metrics(trainer_lib.Trainer(config, tmp_path / "whole"))
  whole.train()
  assert whole.best["stopped_early_at_step"] == 10 and whole.best["step"] == 7

  # dies after the evaluation of step 9, before a checkpoint (at 12)
  _train_until_a_crash_after_evaluating(
      _scripted_dev_metrics(trainer_lib.Trainer(config, tmp_path / "crashed")), 9)
  # best.json already counts the evaluations of steps 8 and 9 without improvement...
  assert json.loads((tmp_path / "crashed" / "checkpoints" / "best.json").read_text())[
      "evaluations_without_improvement"] == 2
  resumed = _scripted_dev_metrics(trainer_lib.Trainer(config, tmp_path / "crashed"))
  assert resumed.step == 8  # ...but the run resumes at step 8 and redoes 9: counted once
  assert resumed.best["evaluations_without_improvement"] == 1
  resumed.train()
  assert resumed.best["stopped_early_at_step"] == 10 and resumed.best["step"] == 7
  best = json.loads((tmp_path / "crashed" / "checkpoints" / "best.json").read_text())
  assert best["stopped_early_at_step"] == 10
  assert (tmp_path / "crashed" / "checkpoints" / "best" / f"{best['checkpoint']}.index").is_file()
  rerun = trainer_lib.Trainer(config, tmp_path / "crashed")
  rerun.train()  # stays stopped
  assert rerun.step == 10


def test_a_run_resumed_between_two_logged_steps_logs_what_an_uninterrupted_run_logs(
    sentiment_dir, tmp_path):
  """Logged every 3 steps, checkpoints every 4: the run resumed from ckpt-4 logs at step 6
  the mean loss and padding of steps 4-6, as the uninterrupted run does (the steps before
  the checkpoint are in it), not of steps 5-6."""
  config = tiny_config(sentiment_dir, train__steps=12, train__eval_every=6,
                       train__checkpoint_every=4, train__log_every=3)
  trainer_lib.Trainer(config, tmp_path / "whole").train()
  _train_until_a_crash_after_evaluating(trainer_lib.Trainer(config, tmp_path / "run"), 6)
  resumed = trainer_lib.Trainer(config, tmp_path / "run")
  assert resumed.step == 4
  resumed.train()
  scalars = _tensorboard_scalars(tmp_path / "run")
  assert [s for s, _ in scalars["train", "loss"]] == [3, 6, 9, 12]
  assert scalars == _tensorboard_scalars(tmp_path / "whole")


def test_a_crash_after_the_first_evaluation_before_a_checkpoint_holding_a_best_counts_once(
    sentiment_dir, tmp_path):
  """Checkpoint 2 holds no best yet; the evaluation of step 3 wrote best.json, then the
  process died. The run resumes at 2 with no best (best.json is of a step it redoes), so
  its early stopping comes at the uninterrupted run's step, not an evaluation sooner."""
  def flat_dev_metrics(trainer):  # the first evaluation stays the best
    trainer.evaluate_dev = lambda: {"accuracy": 0.5, "macro_f1": 0.5, "loss": 0.5,
                                    "num_examples": 16}
    return trainer
  config = tiny_config(sentiment_dir, train__steps=30, train__eval_every=3,
                       train__checkpoint_every=2, train__early_stopping_patience=3)
  whole = flat_dev_metrics(trainer_lib.Trainer(config, tmp_path / "whole"))
  whole.train()
  assert whole.best["stopped_early_at_step"] == 12 and whole.best["step"] == 3

  _train_until_a_crash_after_evaluating(
      flat_dev_metrics(trainer_lib.Trainer(config, tmp_path / "crashed")), 3)
  assert json.loads((tmp_path / "crashed" / "checkpoints" / "best.json").read_text())[
      "step"] == 3
  resumed = flat_dev_metrics(trainer_lib.Trainer(config, tmp_path / "crashed"))
  assert resumed.step == 2 and resumed.best is None
  resumed.train()
  assert resumed.step == 12
  assert (tmp_path / "crashed" / "checkpoints" / "best.json").read_text() == (
      tmp_path / "whole" / "checkpoints" / "best.json").read_text()


def test_a_resume_whose_best_checkpoint_was_replaced_by_later_bests_chooses_the_best_anew(
    sentiment_dir, tmp_path, caplog):
  """best/ keeps two checkpoints: bests at steps 5, 6 and 7 replaced checkpoint 4's best
  before the process died. The run resumed from ckpt-4 cannot name ckpt-4 as its best (a
  rollback writes best.json at once): it says so and chooses the best from its next
  evaluation on, ending as the uninterrupted run."""
  import logging
  config = tiny_config(sentiment_dir, train__steps=8, train__eval_every=1,
                       train__checkpoint_every=4)
  whole = _scripted_dev_metrics(trainer_lib.Trainer(config, tmp_path / "whole"))
  whole.train()

  _train_until_a_crash_after_evaluating(
      _scripted_dev_metrics(trainer_lib.Trainer(config, tmp_path / "crashed")), 7)
  assert not (tmp_path / "crashed" / "checkpoints" / "best" / "ckpt-4.index").exists()
  with caplog.at_level(logging.WARNING, logger="absl"):
    resumed = _scripted_dev_metrics(trainer_lib.Trainer(config, tmp_path / "crashed"))
  assert resumed.step == 4 and resumed.best is None
  assert any("the best checkpoint as of step 4, ckpt-4, is gone" in r.getMessage()
             for r in caplog.records)
  resumed.train()
  assert (tmp_path / "crashed" / "checkpoints" / "best.json").read_text() == (
      tmp_path / "whole" / "checkpoints" / "best.json").read_text()


def test_leftovers_of_killed_processes_are_removed_at_the_next_start(sentiment_dir, tmp_path):
  run = tmp_path / "run"
  config = tiny_config(sentiment_dir, train__steps=4)
  trainer_lib.Trainer(config, run).train(until_step=2)
  dead_pid = 2**22 + 12345  # above Linux's pid_max default: no such process
  half_written = run / "checkpoints" / "ckpt-3_temp"
  (half_written / "part-00000-of-00001").mkdir(parents=True)
  stale = run / "eval" / f".report.json.tmp-{dead_pid}"
  stale.parent.mkdir(exist_ok=True)
  stale.write_text("{")
  export = run / "export" / "run" / f".tmp-1-{dead_pid}"
  export.mkdir(parents=True)
  t = trainer_lib.Trainer(config, run)
  assert not half_written.exists() and not stale.exists()
  t.train()
  from tf_finetune.export import serving
  with serving.new_version_dir(run / "export" / "run") as (tmp, _):
    tmp.mkdir()
  assert not export.exists()


def test_a_start_killed_before_config_json_is_started_anew_by_the_same_command(
    sentiment_dir, tmp_path, caplog):
  """data_digest.json and labels.json are written before config.json, which marks a run
  directory; a kill between them left a directory the same command refused."""
  import logging
  config = tiny_config(sentiment_dir, train__steps=3, train__eval_every=3)
  finished = tmp_path / "finished"
  trainer_lib.Trainer(config, finished).train()
  killed = tmp_path / "killed"
  killed.mkdir()
  for name in ("data_digest.json", "model_digest.json", "labels.json"):
    shutil.copy(finished / name, killed / name)
  with caplog.at_level(logging.WARNING):
    trainer_lib.Trainer(config, killed).train()
  assert any("removed data_digest.json, labels.json, model_digest.json, written by a start "
             "that was stopped before it wrote config.json" in r.getMessage()
             for r in caplog.records)
  assert experiment.load_run(killed, "latest").step == 3
  earlier = tmp_path / "earlier"  # killed while writing data_digest.json: its temporary file
  earlier.mkdir()
  (earlier / ".data_digest.json.tmp-999999999").write_text("{")
  trainer_lib.Trainer(config, earlier).train()
  assert experiment.load_run(earlier, "latest").step == 3
  other = tmp_path / "other"  # a file of the user's beside them: not ours to remove
  other.mkdir()
  shutil.copy(finished / "data_digest.json", other / "data_digest.json")
  (other / "notes.txt").write_text("mine")
  with pytest.raises(WorkdirError, match="is not empty and holds no tf_finetune run"):
    trainer_lib.Trainer(config, other).train()
  assert (other / "notes.txt").is_file() and (other / "data_digest.json").is_file()


def _tensorboard_scalars(run):
  """The run's TensorBoard scalars, but for the speed, which differs from run to run; and
  the number of HParams sessions started and ended."""
  from tensorboard.backend.event_processing import event_accumulator
  found = {key: values for key, values in summaries.read_scalars(run / "tensorboard").items()
           if key[1] not in ("steps_per_sec", "examples_per_sec")}
  root = event_accumulator.EventAccumulator(str(run / "tensorboard"),
                                            size_guidance={"tensors": 0})
  root.Reload()
  for what in ("start", "end"):
    tag = f"_hparams_/session_{what}_info"
    found["", f"sessions {what}ed"] = len(root.Tensors(tag)) if tag in root.Tags()[
        "tensors"] else 0
  return found


def test_a_resumed_run_removes_the_summaries_a_killed_process_wrote_after_its_checkpoint(
    sentiment_dir, tmp_path, caplog):
  """A process killed after checkpoint 4 had written the summaries of steps 5-8 (and a last
  record cut short); the run resumed from 4 writes them again, so each step would appear
  twice to TensorBoard's Python loader. A start killed before its first checkpoint: the
  run starts anew, and so does its TensorBoard."""
  import logging
  config = tiny_config(sentiment_dir, train__steps=12, train__eval_every=4)
  whole = tmp_path / "whole"
  trainer_lib.Trainer(config, whole).train()
  run = tmp_path / "run"
  trainer_lib.Trainer(config, run).train(until_step=4)
  shutil.copytree(run / "checkpoints", tmp_path / "at_4")
  trainer_lib.Trainer(config, run).train(until_step=8)
  shutil.rmtree(run / "checkpoints")  # as if killed before checkpoint 8 was complete
  shutil.copytree(tmp_path / "at_4", run / "checkpoints")
  from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
  length = (48).to_bytes(8, "little")  # a record's length and checksum, then 2 of its 48 bytes
  with sorted((run / "tensorboard" / "train").glob("events.out.tfevents.*"))[-1].open("ab") as f:
    f.write(length + pywrap_tensorflow.masked_crc32c(length).to_bytes(4, "little") + b"\x09\0")
  assert [s for s, _ in _tensorboard_scalars(run)["train", "loss"]] == list(range(1, 9))
  with caplog.at_level(logging.WARNING):
    trainer_lib.Trainer(config, run).train()
  assert any(re.search(r"removed \d+ TensorBoard events of steps 5-8 and 1 records cut short "
                       r"from 2 event files, written after ckpt-4, the checkpoint this run "
                       r"resumes from", r.getMessage())
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert _tensorboard_scalars(run) == _tensorboard_scalars(whole)
  assert _tensorboard_scalars(run)["", "sessions started"] == 1

  anew = tmp_path / "anew"
  trainer_lib.Trainer(config, anew).train(until_step=2)
  shutil.rmtree(anew / "checkpoints")  # as if killed before its first checkpoint
  trainer_lib.Trainer(config, anew).train()
  assert _tensorboard_scalars(anew) == _tensorboard_scalars(whole)

  damaged = tmp_path / "damaged"  # a record garbled mid-file is no kill's: the file is kept
  trainer_lib.Trainer(config, damaged).train(until_step=4)
  shutil.rmtree(tmp_path / "at_4")
  shutil.copytree(damaged / "checkpoints", tmp_path / "at_4")
  trainer_lib.Trainer(config, damaged).train(until_step=8)
  shutil.rmtree(damaged / "checkpoints")
  shutil.copytree(tmp_path / "at_4", damaged / "checkpoints")
  events = sorted((damaged / "tensorboard" / "train").glob("events.out.tfevents.*"))[0]
  data = bytearray(events.read_bytes())
  data[len(data) // 2] ^= 0xFF
  events.write_bytes(bytes(data))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    trainer_lib.Trainer(config, damaged).close()
  assert events.read_bytes() == bytes(data)
  assert any(f"{events}: the record at byte" in r.getMessage() and "is damaged, not cut short "
             "by a kill; the file is left as it is" in r.getMessage() for r in caplog.records)


def test_a_run_killed_after_its_last_checkpoint_ends_its_tensorboard_session_at_the_rerun(
    sentiment_dir, tmp_path):
  """The HParams session's end and best_<metric> are written after the last checkpoint; a
  kill between them left a finished run whose session never ended."""
  from tensorboard.backend.event_processing import event_accumulator
  config = tiny_config(sentiment_dir, train__steps=6)
  whole = tmp_path / "whole"
  trainer_lib.Trainer(config, whole).train()
  run = tmp_path / "run"
  killed = trainer_lib.Trainer(config, run)
  killed._end_session = lambda status: None
  killed.train()
  assert not summaries.session_ended(run / "tensorboard")
  for _ in range(2):  # the second rerun finds the session ended and writes nothing
    trainer_lib.Trainer(config, run).train()
    assert summaries.session_ended(run / "tensorboard")
    assert _tensorboard_scalars(run) == _tensorboard_scalars(whole)
    root = event_accumulator.EventAccumulator(str(run / "tensorboard"),
                                              size_guidance={"tensors": 0})
    root.Reload()
    assert len(root.Tensors("_hparams_/session_end_info")) == 1


def test_a_resume_on_changed_data_is_refused_naming_the_file_and_examples(tmp_path):
  from tests.conftest import write_sentiment_tsv
  data = write_sentiment_tsv(tmp_path / "data", n_train=2500)
  run = tmp_path / "run"
  config = tiny_config(data, train__steps=4)
  trainer_lib.Trainer(config, run).train(until_step=2)
  train_file = data / "train.tsv"
  original = train_file.read_text()
  lines = original.splitlines(keepends=True)
  lines[1500] = "an edited sentence\t0\n"  # example 1500, line 1501
  train_file.write_text("".join(lines))
  with pytest.raises(WorkdirError) as e:
    trainer_lib.Trainer(config, run)
  assert str(e.value).startswith(f"{train_file}: the train data differ from those the run in "
                                 f"{run} started on (2500 examples then, 2500 now; the first "
                                 "difference is among examples 1001-2000, which start at "
                                 f"{train_file}:1002)")
  train_file.write_text(original + "one more sentence\t1\n")
  with pytest.raises(WorkdirError, match=r"2500 examples then, 2501 now; the first difference is among examples 2001-2501"):
    trainer_lib.Trainer(config, run)
  train_file.write_text("".join(original.splitlines(keepends=True)[:2001]))  # 2000 examples
  with pytest.raises(WorkdirError, match=r"2500 examples then, 2000 now; the first 2000 are "
                                         r"the same\)"):
    trainer_lib.Trainer(config, run)
  train_file.write_text(original)
  (data / "dev.tsv").write_text((data / "dev.tsv").read_text().replace("\t1\n", "\t0\n", 1))
  with pytest.raises(WorkdirError, match=r"dev.tsv: the dev data differ .* examples 1-16"):
    trainer_lib.Trainer(config, run)
  write_sentiment_tsv(data, n_train=2500)  # the data the run started on, written again
  digest = (run / "data_digest.json").read_bytes()
  (run / "data_digest.json").write_bytes(b"\xff" + digest)
  with pytest.raises(WorkdirError, match=r"data_digest.json: cannot be read as JSON"):
    trainer_lib.Trainer(config, run)
  (run / "data_digest.json").write_bytes(digest)
  resumed = trainer_lib.Trainer(config, run)
  resumed.train()
  assert resumed.step == 4


def test_a_checkpoint_directory_changed_since_the_run_started_is_refused_naming_the_file(
    sentiment_dir, tmp_path):
  """A run keeps config.model.checkpoint's directory by name and reads its tokenizer again to
  resume, evaluate and export: before model_digest.json a vocab.txt edited (or another model
  put in its place) after the start was taken silently, the resumed steps and the export's
  in-graph tokenizer using other token ids than the run had trained on."""
  from tests.conftest import tiny_checkpoint_dir
  from tf_finetune.export import serving
  checkpoint = tmp_path / "checkpoint"
  shutil.copytree(tiny_checkpoint_dir(), checkpoint)
  config = tiny_config(sentiment_dir, train__steps=4, train__eval_every=2,
                       model__checkpoint=str(checkpoint))
  run = tmp_path / "run"
  trainer_lib.Trainer(config, run).train(until_step=2)
  vocab = checkpoint / "vocab.txt"
  original = vocab.read_text()
  pieces = original.splitlines()
  good, dull = pieces.index("good"), pieces.index("dull")
  pieces[good], pieces[dull] = pieces[dull], pieces[good]  # the same size, other ids
  vocab.write_text("\n".join(pieces) + "\n")
  changed = f"{vocab}: changed since the run in {run} started (SHA-256 "
  for load in (lambda: trainer_lib.Trainer(config, run), lambda: experiment.load_run(run),
               lambda: serving.export_saved_model(run)):
    with pytest.raises(WorkdirError) as e:
      load()
    assert str(e.value).startswith(changed), str(e.value)
    assert "restore the files the run started on" in str(e.value)
  assert not (run / "export").exists()
  vocab.unlink()
  with pytest.raises(WorkdirError, match=rf"^{re.escape(str(vocab))}: missing; the run in "):
    experiment.load_run(run)
  vocab.write_text(original)
  (checkpoint / "tokenizer_config.json").write_text('{"do_lower_case": false}')
  with pytest.raises(WorkdirError, match=r"tokenizer_config.json: not there when the run in "):
    trainer_lib.Trainer(config, run)
  (checkpoint / "tokenizer_config.json").unlink()
  (checkpoint / "README.md").write_text("notes of mine")  # a file no reader reads
  resumed = trainer_lib.Trainer(config, run)
  resumed.train()
  assert resumed.step == 4
  digest = run / "model_digest.json"
  saved = json.loads(digest.read_text())
  saved["files"]["vocab.txt"] = "not a digest"
  digest.write_text(json.dumps(saved))
  with pytest.raises(WorkdirError, match=rf"^{re.escape(str(digest))}: .*vocab.txt.* the file "
                                         "is damaged"):
    experiment.load_run(run)


def test_changed_weights_refuse_a_resume_but_not_load_run_which_reads_none_of_them(
    sentiment_dir, tmp_path):
  """A pretrained start digests model.safetensors too: a resume builds the model from it (and
  task.wise_ft_alpha mixes it in); load_run (evaluate, export) restores the run's own weights
  only."""
  checkpoint = tmp_path / "checkpoint"
  shutil.copytree(REPO / "tests" / "fixtures" / "tiny_checkpoints" / "bert", checkpoint)
  config = tiny_config(sentiment_dir, train__steps=4, train__eval_every=2,
                       model__checkpoint=str(checkpoint), model__random_init=False,
                       model__num_layers=0, model__hidden_dim=0, model__num_heads=0,
                       model__intermediate_dim=0)
  run = tmp_path / "run"
  trainer_lib.Trainer(config, run).train(until_step=2)
  weights = checkpoint / "model.safetensors"
  data = bytearray(weights.read_bytes())
  data[-1] ^= 1  # a bit of the last number: safetensors keeps no checksum
  weights.write_bytes(bytes(data))
  with pytest.raises(WorkdirError, match=rf"^{re.escape(str(weights))}: changed since the run"):
    trainer_lib.Trainer(config, run)
  assert experiment.load_run(run).step == 2


DIGEST_DAMAGE = {  # each ended in a resume that checked less than the run's data, or blamed them
    "the train split left out": (lambda d: d.pop("train"), r"'train' is missing"),
    "the dev split left out": (lambda d: d.pop("dev"), r"'dev' is missing"),
    "a chunk digest replaced by a number": (
        lambda d: d["train"]["chunks"].__setitem__(0, 0), r"train's chunk 1 is 0, not 16 hex"),
    "a chunk digest added": (
        lambda d: d["train"]["chunks"].append("x"), r"train's 2 chunk digests are not the 1"),
    "the example count changed": (
        lambda d: d["dev"].update(examples=10**12), r"dev's 1 chunk digests are not the "
        r"1000000000 of 1000000000000 examples"),
    "a split that is not an object": (lambda d: d.update(dev=[]), r"'dev' is \[\]"),
}


@pytest.mark.parametrize("case", list(DIGEST_DAMAGE))
def test_a_damaged_data_digest_is_refused_as_damaged_not_taken_for_other_data(
    finished_run, tmp_path, case):
  """data_digest.json lets a resume check that the data are those the run started on; one
  damaged so that it names less, or other counts, stops the resume in one line calling the
  file damaged, neither checking less nor blaming the data."""
  import ml_collections
  damage, named = DIGEST_DAMAGE[case]
  run = tmp_path / "run"
  shutil.copytree(finished_run, run)
  config = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
  _edit_json(run / "data_digest.json", damage)
  with pytest.raises(WorkdirError) as e:
    trainer_lib.Trainer(config, run)
  message = str(e.value)
  assert message.startswith(f"{run / 'data_digest.json'}: "), message
  assert re.search(named, message), message
  assert message.endswith("the file is damaged; remove it to resume without checking the "
                          "data, as a run made before it was kept does"), message


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  from tests.conftest import write_sentiment_tsv
  root = tmp_path_factory.mktemp("damaged")
  run = root / "run"
  trainer_lib.Trainer(tiny_config(write_sentiment_tsv(root / "data"), train__steps=6), run).train()
  return run


def _truncate(path):
  path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _garble(path):
  data = bytearray(path.read_bytes())
  for i in range(0, len(data), 7):
    data[i] ^= 0x5A
  path.write_bytes(bytes(data))


def _best_path(run):
  return run / "checkpoints" / "best" / json.loads(
      (run / "checkpoints" / "best.json").read_text())["checkpoint"]


def _without_the_best_steps_training_checkpoint(run):
  """Deletes checkpoints/ckpt-N of the best step N, which a damaged best falls back on."""
  for path in run.glob(f"checkpoints/{_best_path(run).name}.*"):
    path.unlink()


def _edit_json(path, change):
  data = json.loads(path.read_text())
  change(data)
  path.write_text(json.dumps(data))


DAMAGE = {  # the best cases: with no training checkpoint of the best's step to fall back on
    "truncated best checkpoint data": (
        lambda run: (_without_the_best_steps_training_checkpoint(run), _truncate(
            next(run.glob("checkpoints/best/ckpt-*.data-*")))), "best", "checkpoints/best/ckpt-"),
    "garbled best checkpoint index": (
        lambda run: (_without_the_best_steps_training_checkpoint(run),
                     _garble(_best_path(run).with_suffix(".index"))), "best",
        "checkpoints/best/ckpt-"),
    "garbled latest checkpoint data": (
        lambda run: _garble(next(run.glob("checkpoints/ckpt-6.data-*"))), "latest",
        "checkpoints/ckpt-6"),
    "truncated config.json": (lambda run: _truncate(run / "config.json"), "best", "config.json"),
    "config.json not an object": (
        lambda run: (run / "config.json").write_text("[1, 2]"), "best", "config.json"),
    "config.json with a value of another type": (  # ended in keras-hub's TypeError
        lambda run: _edit_json(run / "config.json", lambda c: c["model"].update(
            num_layers=[1, 2])), "best", "config.json: model.num_layers=[1, 2]: not of the key's "
        "type (int); the file is damaged"),
    "config.json with a value out of range": (  # ended in Keras's ValueError
        lambda run: _edit_json(run / "config.json", lambda c: c["model"].update(dropout=-1.0)),
        "best", "config.json: config.model.dropout=-1.0: must be in [0, 1); the file is damaged"),
    "garbled labels.json": (
        lambda run: (run / "labels.json").write_bytes(b"\xff\xfe[\"0\""), "best", "labels.json"),
    "labels.json with another number of labels": (
        lambda run: (run / "labels.json").write_text('["0", "1", "2"]'), "best", "labels.json"),
    "truncated best.json": (
        lambda run: _truncate(run / "checkpoints" / "best.json"), "best", "best.json"),
    "best.json naming a deleted checkpoint": (
        lambda run: (_without_the_best_steps_training_checkpoint(run),
                     [p.unlink() for p in run.glob("checkpoints/best/ckpt-*")]), "best",
        "best.json"),
    "--checkpoint=foo": (lambda run: None, "foo", "--checkpoint=foo"),
    "--checkpoint=/nope/ckpt-7": (lambda run: None, "/nope/ckpt-7", "/nope/ckpt-7"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_directory_gives_one_error_naming_the_file(finished_run, tmp_path, case):
  damage, checkpoint, named = DAMAGE[case]
  run = tmp_path / "run"
  shutil.copytree(finished_run, run)
  damage(run)
  with pytest.raises(UserError) as e:
    evaluator.evaluate_workdir(run, checkpoint)
  message = str(e.value)
  assert named in message, message
  assert "\n" not in message
  if checkpoint == "best" and "checkpoint" in named:
    assert "--checkpoint=latest" in message
    assert message.endswith(f"(the training checkpoint of the same step, "
                            f"{run / 'checkpoints' / _best_path(run).name}, is not kept)")
  if checkpoint == "latest":
    assert message.endswith(f"use --checkpoint=best or the checkpoint before it, "
                            f"--checkpoint={run / 'checkpoints' / 'ckpt-3'}"), message


@pytest.mark.parametrize("section", ["task", "data"])
def test_a_config_json_section_that_is_not_an_object_stops_the_resume_in_one_line(
    finished_run, tmp_path, section):
  """Found by tools/fuzz_files.py: a section of config.json replaced by a number ended the
  training command's resume in a TypeError (the check for keys added since the run)."""
  run = tmp_path / "run"
  shutil.copytree(finished_run, run)
  saved = json.loads((run / "config.json").read_text())
  _edit_json(run / "config.json", lambda c: c.update({section: 1.5}))
  import ml_collections
  with pytest.raises(WorkdirError) as e:
    trainer_lib.Trainer(ml_collections.ConfigDict(saved), run)
  assert str(e.value) == (f"{run / 'config.json'}: {section!r} is not a config section; the "
                          "file is damaged")


BEST_JSON_DAMAGE = {
    "truncated": _truncate,
    "garbled": _garble,
    "not an object": lambda path: path.write_text("[4]"),
    "without its step": lambda path: path.write_text('{"checkpoint": "ckpt-4"}'),
    "deleted": lambda path: path.unlink(),
    # Each read, and evaluate reported the step or the run resumed with the value it held.
    "a step not its checkpoint's": lambda path: _edit_json(path, lambda b: b.update(step=10**12)),
    "a value that is not a number": lambda path: _edit_json(path, lambda b: b.update(value="x")),
    "a metric that is not a name": lambda path: _edit_json(path, lambda b: b.update(metric=[])),
}


@pytest.mark.parametrize("case", list(BEST_JSON_DAMAGE))
def test_a_damaged_best_json_is_written_anew_from_the_checkpoint_by_the_training_command(
    finished_run, tmp_path, case, caplog):
  """best.json writes out what the training checkpoint records of the best: evaluate names
  the damaged file and the two ways on; the training command, run again on the finished
  run, writes it anew (with a warning) as the intact run had it, and the report follows."""
  import logging
  run, intact = tmp_path / "run", tmp_path / "intact"
  shutil.copytree(finished_run, run)
  shutil.copytree(finished_run, intact)
  best_json = run / "checkpoints" / "best.json"
  BEST_JSON_DAMAGE[case](best_json)
  with pytest.raises(UserError) as e:
    evaluator.evaluate_workdir(run, "best")
  assert str(e.value).startswith(f"{run}: no best checkpoint yet" if case == "deleted" else
                                 f"{best_json}: "), str(e.value)
  if case != "deleted":
    assert str(e.value).endswith("or run the training command again, which writes the file "
                                 "anew from the run's newest checkpoint")
  config = tiny_config(finished_run.parent / "data", train__steps=6)
  with caplog.at_level(logging.WARNING, logger="absl"):
    trainer_lib.Trainer(config, run).train()
  assert best_json.read_text() == (intact / "checkpoints" / "best.json").read_text()
  assert "; written anew from the record of the best in " \
      f"{run / 'checkpoints' / 'ckpt-6'} (accuracy " in caplog.text
  assert evaluator.evaluate_workdir(run, "best")["splits"] == \
      evaluator.evaluate_workdir(intact, "best")["splits"]


@pytest.mark.parametrize("damage", ["truncated data", "a bit flipped in the data",
                                    "a bit flipped in the index", "files deleted by hand"])
def test_a_damaged_best_checkpoint_falls_back_on_the_training_checkpoint_of_its_step(
    finished_run, tmp_path, damage, caplog):
  """The loop saves checkpoints/ckpt-N right after step N's evaluation, so it holds the best
  checkpoint's weights: evaluate (and export, predict: the same load_run) use it, with a
  warning, and report what the intact run reports."""
  import logging
  run, intact = tmp_path / "run", tmp_path / "intact"
  shutil.copytree(finished_run, run)
  shutil.copytree(finished_run, intact)
  best = _best_path(run)
  expected = evaluator.evaluate_workdir(intact, "best")
  CHECKPOINT_DAMAGE[damage](best)
  with caplog.at_level(logging.WARNING, logger="absl"):
    loaded = experiment.load_run(run, "best")
    report = evaluator.evaluate_workdir(run, "best")
  training_twin = str(run / "checkpoints" / best.name)
  assert loaded.checkpoint == training_twin and loaded.step == int(best.name.split("-")[1])
  reference = experiment.load_run(intact, "best")
  for a, b in zip(_weights(reference.model), _weights(loaded.model)):
    np.testing.assert_array_equal(a, b)
  assert f"{best}: the best checkpoint (step {loaded.step}) is " in caplog.text
  assert f"restoring {training_twin}, the training checkpoint of the same step" in caplog.text
  assert report["splits"] == expected["splits"] and report["step"] == expected["step"]
  assert report["checkpoint"] == training_twin


def _flip_a_bit(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))


CHECKPOINT_DAMAGE = {
    "truncated data": lambda ckpt: _truncate(next(ckpt.parent.glob(ckpt.name + ".data-*"))),
    "a bit flipped in the data": lambda ckpt: _flip_a_bit(
        next(ckpt.parent.glob(ckpt.name + ".data-*"))),
    "a bit flipped in the index": lambda ckpt: _flip_a_bit(ckpt.with_suffix(".index")),
    "data file missing": lambda ckpt: next(ckpt.parent.glob(ckpt.name + ".data-*")).unlink(),
    "files deleted by hand": lambda ckpt: [p.unlink() for p in ckpt.parent.glob(
        ckpt.name + ".*")],
}


def _checkpoint_names(run):
  state = tf.train.get_checkpoint_state(str(run / "checkpoints"))
  return [os.path.basename(p) for p in state.all_model_checkpoint_paths]


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_ends_as_an_uninterrupted_one(
    sentiment_dir, tmp_path, caplog):
  """The newest checkpoint cut short, garbled, missing a file or deleted: the resume
  restores the one before, sets the damaged files aside, rewrites TensorFlow's state file
  and redoes the steps, ending with the uninterrupted run's weights, best.json and
  TensorBoard scalars (deleting the files by hand had made the run start anew at step 0)."""
  import logging
  config = tiny_config(sentiment_dir, train__steps=12, train__eval_every=4)
  whole = tmp_path / "whole"
  trainer_lib.Trainer(config, whole).train()
  for case, damage in CHECKPOINT_DAMAGE.items():
    run = tmp_path / case.replace(" ", "_")
    trainer_lib.Trainer(config, run).train(until_step=8)
    newest = run / "checkpoints" / "ckpt-8"
    files = {p.name: p.read_bytes() for p in run.glob("checkpoints/ckpt-8.*")}
    damage(newest)
    damaged = {p.name: p.read_bytes() for p in run.glob("checkpoints/ckpt-8.*")}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
      resumed = trainer_lib.Trainer(config, run)
    assert resumed.step == 4, case
    messages = [r.getMessage() for r in caplog.records]
    assert f"Resuming from {run / 'checkpoints' / 'ckpt-4'} at step 4 of 12" in messages, case
    if damaged:
      assert any(m.startswith(f"{newest}: damaged (") for m in messages), (case, messages)
      assert f"{run / 'checkpoints' / 'ckpt-4'}: the newest intact checkpoint, resumed from: " \
          "1 newer one(s) could not be read whole (ckpt-8); the steps after it are done " \
          "again" in messages, case
      assert {p.name: p.read_bytes() for p in run.glob("checkpoints/damaged/*")} == damaged
      assert damaged != files
    assert _checkpoint_names(run) == ["ckpt-4"], case
    resumed.train()
    for a, b in zip(_weights(experiment.load_run(whole, "latest").model),
                    _weights(experiment.load_run(run, "latest").model)):
      np.testing.assert_array_equal(a, b)
    assert json.loads((run / "checkpoints" / "best.json").read_text()) == json.loads(
        (whole / "checkpoints" / "best.json").read_text())
    assert _tensorboard_scalars(run) == _tensorboard_scalars(whole), case
    assert _checkpoint_names(run) == _checkpoint_names(whole) == ["ckpt-8", "ckpt-12"]

  # A finished run whose last checkpoint is damaged: its HParams session had ended and its
  # best_<metric> was written; the redone steps end it once more, so both go at the resume.
  finished = tmp_path / "finished"
  trainer_lib.Trainer(config, finished).train()
  _truncate(next(finished.glob("checkpoints/ckpt-12.data-*")))
  resumed = trainer_lib.Trainer(config, finished)
  assert resumed.step == 8
  resumed.train()
  for a, b in zip(_weights(experiment.load_run(whole, "latest").model),
                  _weights(experiment.load_run(finished, "latest").model)):
    np.testing.assert_array_equal(a, b)
  assert _tensorboard_scalars(finished) == _tensorboard_scalars(whole)


def test_a_worker_that_is_not_the_chief_falls_back_the_same_way_and_moves_nothing(
    sentiment_dir, tmp_path):
  """Every worker resumes from the same checkpoint; only the chief moves files and rewrites
  the state file (the others read the chief's workdir)."""
  from tf_finetune.training import resume
  config = tiny_config(sentiment_dir, train__steps=12, train__eval_every=4)
  run = tmp_path / "run"
  trainer_lib.Trainer(config, run).train(until_step=8)
  _truncate(next(run.glob("checkpoints/ckpt-8.data-*")))
  files = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
  workdir = experiment.Workdir(run)
  model = experiment.load_run(run, "best").model
  restored = resume.restore_newest_intact(
      workdir, lambda path: experiment.restore_checkpoint(
          experiment.new_checkpoint(model), path, workdir), repair=False)
  assert restored == str(run / "checkpoints" / "ckpt-4")
  assert {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()} == files
  for a, b in zip(_weights(model), _weights(experiment.load_run(
      run, str(run / "checkpoints" / "ckpt-4")).model)):
    np.testing.assert_array_equal(a, b)


def test_a_lost_or_garbled_state_file_resumes_from_the_newest_checkpoint_on_disk(
    sentiment_dir, tmp_path):
  """TensorFlow's `checkpoint` file lost (a start anew at step 0 before) or garbled (an
  error before): the checkpoints' own files say which is newest; the file is rewritten."""
  config = tiny_config(sentiment_dir, train__steps=12, train__eval_every=4)
  for state in (None, b"\x00\xffmodel_checkpoint"):
    run = tmp_path / ("lost" if state is None else "garbled")
    trainer_lib.Trainer(config, run).train(until_step=8)
    if state is None:
      (run / "checkpoints" / "checkpoint").unlink()
    else:
      (run / "checkpoints" / "checkpoint").write_bytes(state)
      assert experiment.load_run(run, "latest").step == 8
    resumed = trainer_lib.Trainer(config, run)
    assert resumed.step == 8
    assert _checkpoint_names(run) == ["ckpt-4", "ckpt-8"]
    resumed.train()
    assert _checkpoint_names(run) == ["ckpt-8", "ckpt-12"]


@pytest.mark.parametrize("state", [b'model_checkpoint_path: "ckpt-4"\x85\n',
                                   b'all_model_checkpoint_paths: "ckpt-4"\n', b"\x00\xff"])
def test_a_garbled_state_file_of_the_best_checkpoints_is_rewritten_at_resume(
    sentiment_dir, tmp_path, state):
  """checkpoints/best/checkpoint, the best CheckpointManager's record of which best
  checkpoint to delete next: TensorFlow's reader raised on a byte that is not UTF-8 or on a
  file without model_checkpoint_path (found by fuzzing), a traceback at the resume. It is
  rewritten from the best checkpoints on disk, and the manager goes on deleting old ones."""
  config = tiny_config(sentiment_dir, train__steps=12, train__eval_every=4)
  run = tmp_path / "run"
  trainer_lib.Trainer(config, run).train(until_step=8)
  best = run / "checkpoints" / "best"
  on_disk = sorted((p.name[:-len(".index")] for p in best.glob("ckpt-*.index")),
                   key=lambda name: int(name.split("-")[1]))
  assert on_disk
  (best / "checkpoint").write_bytes(state)
  resumed = trainer_lib.Trainer(config, run)
  assert resumed.step == 8
  rewritten = tf.train.get_checkpoint_state(str(best))
  assert [pathlib.Path(p).name for p in rewritten.all_model_checkpoint_paths] == on_disk
  assert pathlib.Path(rewritten.model_checkpoint_path).name == on_disk[-1]
  resumed.train()
  assert len(list(best.glob("ckpt-*.index"))) <= 2


def test_a_run_whose_checkpoints_are_all_damaged_or_gone_is_refused_not_started_anew(
    sentiment_dir, tmp_path):
  config = tiny_config(sentiment_dir, train__steps=12, train__eval_every=4)
  run = tmp_path / "run"
  trainer_lib.Trainer(config, run).train(until_step=8)
  before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
  for step in (4, 8):
    _truncate(next(run.glob(f"checkpoints/ckpt-{step}.data-*")))
  damaged = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
  with pytest.raises(WorkdirError, match=r"checkpoints: every checkpoint is damaged \(ckpt-8: "
                     r"Read less bytes than requested; ckpt-4: .*\); the run cannot resume"):
    trainer_lib.Trainer(config, run)
  assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} \
      == damaged  # nothing moved, no TensorBoard event removed
  assert set(damaged) == set(before)

  for path in run.glob("checkpoints/ckpt-*"):
    path.unlink()
  with pytest.raises(WorkdirError, match=r"the state file `checkpoint` names ckpt-4, ckpt-8, "
                     r"but no checkpoint's files are here"):
    trainer_lib.Trainer(config, run)


def test_an_intact_checkpoint_of_another_model_stops_a_resume_rather_than_skipped(
    sentiment_dir, tmp_path):
  config = tiny_config(sentiment_dir, train__steps=12, train__eval_every=4)
  run = tmp_path / "run"
  trainer_lib.Trainer(config, run).train(until_step=4)
  other = run / "checkpoints" / "ckpt-10"
  tf.train.Checkpoint(model=tf.train.Checkpoint(v=tf.Variable(1.0))).write(str(other))
  with pytest.raises(WorkdirError, match=r"ckpt-10: cannot be restored .*its files read "
                     r"whole, so it was written for another model"):
    trainer_lib.Trainer(config, run)
  assert other.with_suffix(".index").is_file()


def test_the_entry_point_prints_one_error_line_for_a_damaged_run(finished_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(finished_run, run)
  _truncate(run / "config.json")
  result = subprocess.run([sys.executable, "-m", "tf_finetune.evaluate", f"--workdir={run}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
  assert f"{run / 'config.json'}: cannot be read as JSON" in result.stderr


def _train_command(workdir, *extra):
  return [sys.executable, "-m", "tf_finetune.train", "--config=configs/smoke.py",
          f"--workdir={workdir}", "--config.train.steps=300", "--config.train.eval_every=150",
          "--config.train.checkpoint_every=20", "--config.train.log_every=1", *extra]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
  whole = tmp_path_factory.mktemp("uninterrupted") / "whole"
  done = subprocess.run(_train_command(whole), cwd=REPO, capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return whole


def _start(command):
  return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _wait_for(process, text, timeout=300):
  """Reads the process's output until a line holds `text`; returns what it read."""
  seen, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = process.stdout.readline()
    if not line:
      break
    seen.append(line)
    if text in line:
      return "".join(seen)
  process.kill()
  raise AssertionError(f"never saw {text!r}:\n{''.join(seen)[-3000:]}")


def _assert_same_run(whole, cut):
  for a, b in zip(_weights(experiment.load_run(whole, "latest").model),
                  _weights(experiment.load_run(cut, "latest").model)):
    np.testing.assert_array_equal(a, b)
  for name in ("checkpoints/best.json", "eval/report.json"):
    expected = (whole / name).read_text().replace(str(whole), str(cut))
    assert json.loads((cut / name).read_text()) == json.loads(expected), name
  assert _tensorboard_scalars(cut) == _tensorboard_scalars(whole)


@pytest.mark.slow
def test_sigterm_saves_and_a_rerun_ends_with_the_uninterrupted_weights(uninterrupted_run,
                                                                        tmp_path):
  whole = uninterrupted_run
  cut = tmp_path / "cut"
  first = _start(_train_command(cut))
  _wait_for(first, "step 40/300")
  first.send_signal(signal.SIGTERM)
  rest = first.communicate(timeout=300)[0]
  assert first.returncode == 128 + signal.SIGTERM, rest[-3000:]
  assert "SIGTERM received: saved" in rest and "run the same command to resume" in rest
  assert "Traceback" not in rest
  saved_at = experiment.load_run(cut, "latest").step
  assert 40 <= saved_at < 300

  again = subprocess.run(_train_command(cut), cwd=REPO, capture_output=True, text=True,
                         timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resuming from {cut / 'checkpoints' / f'ckpt-{saved_at}'}" in again.stderr
  _assert_same_run(whole, cut)


@pytest.mark.slow
def test_kill_9_mid_run_and_the_rerun_redoes_the_lost_steps_to_the_same_weights(
    uninterrupted_run, tmp_path):
  """No handler runs on SIGKILL (the OOM killer, a lost VM): the rerun resumes from the last
  complete checkpoint and redoes the steps after it, with the same data and dropout."""
  cut = tmp_path / "cut"
  first = _start(_train_command(cut))
  _wait_for(first, "step 70/300")
  first.kill()
  first.communicate(timeout=60)
  again = subprocess.run(_train_command(cut), cwd=REPO, capture_output=True, text=True,
                         timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  resumed = [line for line in again.stderr.splitlines() if "Resuming from" in line]
  assert resumed and int(resumed[0].rsplit(" of ", 1)[0].rsplit(" ", 1)[1]) >= 60, resumed
  _assert_same_run(uninterrupted_run, cut)


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_killed_trainers_lock_taken_over(tmp_path):
  run = tmp_path / "run"
  endless = _train_command(run, "--config.train.steps=1000000")
  first = _start(endless)
  _wait_for(first, "step 20/1000000")
  second = subprocess.run(endless, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert second.returncode == 1, second.stderr[-3000:]
  assert f"is in use by another tf_finetune trainer (pid {first.pid} on host" in second.stderr
  assert "Traceback" not in second.stderr
  first.kill()  # kill -9: no cleanup at all
  first.wait()
  assert (run / ".lock").is_file()
  again = subprocess.run(_train_command(run, "--config.train.steps=30"), cwd=REPO,
                         capture_output=True, text=True, timeout=600)
  # Another step count: refused as another experiment, after the stale lock was taken over.
  assert "took over a stale lock" in again.stderr, again.stderr[-3000:]
  assert f"pid {first.pid}" in again.stderr
  assert again.returncode == 1 and "holds a run with another config" in again.stderr
  assert not (run / ".lock").exists()


def test_a_workdir_that_cannot_be_a_directory_is_refused_in_one_line(tmp_path):
  """It was a FileExistsError (or FileNotFoundError) traceback."""
  config = tiny_config(write_sentiment_tsv(tmp_path / "data"))
  a_file = tmp_path / "a_file"
  a_file.write_text("precious")
  with pytest.raises(WorkdirError, match=f"^{a_file}: is a file, not a directory; choose "
                                         "another --workdir$"):
    trainer_lib.Trainer(config, a_file)
  with pytest.raises(WorkdirError, match=f"^{a_file}/run: cannot be made a directory \\(Not a "
                                         "directory\\); choose another --workdir$"):
    trainer_lib.Trainer(config, a_file / "run")
  assert a_file.read_text() == "precious"


def _scores_with_a_bad_label(directory, bad_line):
  """Regression data (sentence, score) whose train.tsv line `bad_line` (the header is line
  1) scores 1e30: its squared error is infinite in float32, a divergence the data causes."""
  directory.mkdir(parents=True)
  rng = np.random.default_rng(0)
  words = "good bad fine dull great awful nice poor".split()
  for name, n in (("train.tsv", 48), ("dev.tsv", 8)):
    rows = [(" ".join(rng.choice(words, size=int(rng.integers(1, 12)))),
             f"{rng.uniform(0, 5):.3f}") for _ in range(n)]
    if name == "train.tsv":
      rows[bad_line - 2] = (rows[bad_line - 2][0], "1e30")
    (directory / name).write_text("sentence\tscore\n" + "".join(f"{t}\t{s}\n" for t, s in rows))
  return directory


@pytest.mark.parametrize("overrides", [
    {}, {"data__packing": False, "train__grad_accum_steps": 2},
    {"data__long_text": "windows", "data__max_seq_length": 8},
    {"distribution__strategy": "mirrored", "distribution__num_cpu_devices": 2},
    {"data__augment": "eda", "data__augment_probability": 0.3}])
def test_a_diverged_step_names_the_train_example_whose_loss_is_not_finite(tmp_path, overrides):
  """A real data-caused divergence: the step that reads the bad line stops the run, and the
  message names that line, and only it, by file and line (packed, accumulated, windowed,
  two replicas each reading half of the step's batch, augmented texts)."""
  data = _scores_with_a_bad_label(tmp_path / "data", bad_line=11)
  config = tiny_config(data, task__name="regression", data__label_column="score",
                       train__steps=12, train__eval_every=12, **overrides)
  t = trainer_lib.Trainer(config, tmp_path / "run")
  with pytest.raises(TrainingError) as e:
    t.train()
  message = str(e.value)
  assert re.search(r"training diverged at step [1-6]: loss inf", message), message
  step_examples = 8 if "data__long_text" not in overrides else r"\d+"
  assert re.search(rf"recomputed, the loss is not finite on 1 of the step's {step_examples} "
                   rf"train examples: {re.escape(str(data / 'train.tsv'))}:11 \(loss inf\); "
                   "fix or remove them", message), message


def test_a_step_diverged_by_the_optimization_names_no_example(sentiment_dir, tmp_path):
  """Every example's recomputed loss finite: the message says no one example explains it."""
  t = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=4), tmp_path / "run")
  _poison_step(t, [1])
  with pytest.raises(TrainingError) as e:
    t.train()
  assert re.search(r"training diverged at step 2: loss nan and gradient norm \S+; recomputed "
                   r"without dropout on the weights at hand, each of the step's 8 train "
                   r"examples has a finite loss \(the largest: .*train.tsv:\d+ \(\d.*\): no "
                   "one example's loss explains it", str(e.value)), str(e.value)


@pytest.mark.parametrize("kind", ["setfit", "tagging"])
def test_a_packed_setfit_or_tagging_step_names_its_examples_by_their_own_losses(tmp_path, kind):
  """A step's examples are named by file:line (a setfit pair by its two lines), and the
  losses recomputed on its packed batch are those of the same examples unpacked."""
  from tests import test_tagging
  from tf_finetune.training import nonfinite
  if kind == "setfit":
    config = tiny_config(write_sentiment_tsv(tmp_path / "data"), task__name="setfit",
                         task__pairs_per_example=4, data__examples_per_class=6,
                         train__steps=2, data__bucketing=False)
    origin = r"train.tsv:\d+ with .*train.tsv:\d+"
  else:
    config = test_tagging.ner_config(task__loss_average="token", train__steps=2,
                                     data__bucketing=False)
    origin = r"ner_train.conll:\d+"
  t = trainer_lib.Trainer(config, tmp_path / "run")
  t.train(until_step=1)
  packed = t._batches_of_step(t._input_context, 1)
  assert len(packed) == 1 and "example_ids" in packed[0]
  t.packing = False
  padded = t._batches_of_step(t._input_context, 1)
  np.testing.assert_array_equal(packed[0]["example_index"], padded[0]["example_index"])
  np.testing.assert_allclose(nonfinite.per_example_losses(t.task, t.model, packed[0]),
                             nonfinite.per_example_losses(t.task, t.model, padded[0]),
                             rtol=1e-5)
  t.packing = True
  message = t._examples_of(1)
  assert re.fullmatch(rf"recomputed without dropout on the weights at hand, each of the "
                      rf"step's \d+ train examples has a finite loss \(the largest: .*{origin} "
                      rf"\(\d[^)]*\)\): no one example's loss explains it; .*", message), message


def test_damaged_data_and_checkpoint_files_end_in_one_line_never_a_traceback():
  """tools/fuzz_files.py, on a budget: 3,000 byte-level mutations of data files of every
  source and 600 field-level mutations of the test checkpoints' JSON files each read or
  refused with a UserError (before the fixes it found, tokenizer.json alone gave nine kinds
  of traceback). Its third target, a run's files, takes minutes: run the tool for it."""
  result = subprocess.run(
      [sys.executable, str(REPO / "tools" / "fuzz_files.py"), "--targets=data,checkpoint",
       "--iterations=3000,600", "--seed=7"], capture_output=True, text=True, cwd=REPO,
      timeout=600)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  lines = [line for line in result.stdout.splitlines() if " mutations: " in line]
  assert [line.split(":")[0] for line in lines] == ["data", "checkpoint"]
  for line in lines:
    assert line.endswith(", 0 other exceptions"), line
    assert " 0 read" not in line and " 0 refused" not in line, line  # both outcomes occur
  # Each target's outcomes by damaged file add up to its totals, over every file it damages.
  by_file = [line for line in result.stdout.splitlines() if "by damaged file" in line]
  files = [["conll", "csv", "jsonl", "label_first", "tsv"],
           ["config.json", "tokenizer.json", "tokenizer_config.json"]]
  for total, line, target_files in zip(lines, by_file, files, strict=True):
    counts = dict(re.findall(r"([\w.]+) (\d+/\d+/\d+)", line.split(": ", 1)[1]))
    assert sorted(counts) == target_files, line
    read, refused, other = np.sum([[int(n) for n in c.split("/")] for c in counts.values()], 0)
    assert f": {read + refused + other} mutations: {read} read, {refused} refused" in total, (
        line, total)
