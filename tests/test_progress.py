"""Progress lines of evaluations and predictions (tf_finetune/progress.py)."""
import logging

import pytest

from tests.conftest import tiny_config
from tf_finetune import experiment
from tf_finetune import progress
from tf_finetune.training import trainer as trainer_lib


class FakeClock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def _lines(caplog, what):
  return [r.getMessage() for r in caplog.records if r.getMessage().startswith(what + ":")]


def test_a_line_every_interval_with_the_rate_and_the_time_left(caplog):
  assert progress.EVERY_SECONDS == 30
  clock, totals = FakeClock(), []
  log = progress.ProgressLog("dev forward pass", lambda: totals.append(1) or 400, clock=clock)
  with caplog.at_level(logging.INFO, logger="absl"):
    for seconds, count in ((10, 40), (29, 40), (40, 120), (50, 40), (71, 40), (80, 40)):
      clock.now = 100.0 + seconds
      log.add(count)
  assert _lines(caplog, "dev forward pass") == [
      "dev forward pass: 200 of 400 examples (50%) | 5.0 examples/s | ETA 0m40s",
      "dev forward pass: 280 of 400 examples (70%) | 3.9 examples/s | ETA 0m30s"]
  assert totals == [1]  # the count is made once, when the first line is due


def test_work_shorter_than_the_interval_logs_nothing(caplog):
  clock = FakeClock()
  log = progress.ProgressLog("predict", 10, unit="texts", clock=clock)
  with caplog.at_level(logging.INFO, logger="absl"):
    for _ in range(10):
      clock.now += 2.9
      log.add(1)
  assert not _lines(caplog, "predict")


@pytest.mark.parametrize("long_text, unit", [("truncate", "examples"), ("windows", "windows")])
def test_a_long_evaluation_logs_its_forward_pass(sentiment_dir, tmp_path, monkeypatch, caplog,
                                                 long_text, unit):
  """Each batch of the dev forward pass counted (every line due, with EVERY_SECONDS 0), in
  examples, or in windows when a text is read in several."""
  monkeypatch.setattr(progress, "EVERY_SECONDS", 0.0)
  config = tiny_config(sentiment_dir, data__long_text=long_text, data__max_seq_length=8,
                       train__eval_batch_size=10)
  trainer = trainer_lib.Trainer(config, tmp_path / "run")
  dev = trainer.splits["dev"]
  rows = int(trainer.task.window_counts(dev).sum())
  assert (rows > len(dev)) == (long_text == "windows")
  with caplog.at_level(logging.INFO, logger="absl"):
    experiment.evaluate_split(trainer.task, trainer.model, dev, batch_size=10)
  lines = _lines(caplog, "dev forward pass")
  assert len(lines) >= 2
  assert lines[-1].startswith(f"dev forward pass: {rows} of {rows} {unit} (100%) | ")
  assert lines[-1].endswith("ETA 0m00s")
  trainer.close()
