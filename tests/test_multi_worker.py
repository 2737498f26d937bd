"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, check_run_directory, tiny_config
from tf_finetune import distribute

TIMEOUT_SECONDS = 300


def _run_two_workers(config, workdir, out_dir, until_step=None):
  """Runs both workers to their end; returns [(info, stderr, weights)] for worker 0 (the
  chief) and worker 1."""
  results = []
  for index, (returncode, stdout, stderr) in enumerate(
      _two_workers(config, workdir, out_dir, until_step)):
    assert returncode == 0, f"worker {index}:\n{stderr[-4000:]}"
    info = json.loads(stdout.strip().splitlines()[-1])
    with np.load(out_dir / f"weights_{index}.npz") as npz:
      weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    results.append((info, stderr, weights))
  return results


def _two_workers(config, workdir, out_dir, until_step=None):
  """Starts both workers, waits for both (bounded), kills whatever is left; returns
  [(returncode, stdout, stderr)] for worker 0 (the chief) and worker 1."""
  out_dir.mkdir(parents=True, exist_ok=True)
  config_path = out_dir / "config.json"
  config_path.write_text(config.to_json())
  processes = []
  try:
    for index, tf_config in enumerate(distribute.local_tf_configs(2)):
      env = dict(os.environ, TF_CONFIG=tf_config)
      command = [sys.executable, "-m", "tests.run_worker", str(config_path), str(workdir),
                 str(out_dir / f"weights_{index}.npz")]
      if until_step:
        command.append(str(until_step))
      processes.append(subprocess.Popen(command, env=env, cwd=REPO, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline = time.time() + TIMEOUT_SECONDS
    outputs = [p.communicate(timeout=max(1, deadline - time.time())) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [(p.returncode, stdout, stderr) for p, (stdout, stderr) in zip(processes, outputs)]


@pytest.mark.slow
def test_two_workers_train_in_step_only_the_chief_writes_and_a_restart_resumes(
    sentiment_dir, tmp_path):
  config = tiny_config(sentiment_dir, distribution__strategy="multi_worker", train__steps=6,
                       train__eval_every=3, model__dropout=0.1)

  straight = tmp_path / "straight"
  (chief, chief_log, chief_weights), (worker, worker_log, worker_weights) = _run_two_workers(
      config, straight, tmp_path / "out_straight")
  assert chief["is_chief"] and not worker["is_chief"]
  assert chief["replicas"] == worker["replicas"] == 2 and chief["step"] == worker["step"] == 6
  for a, b in zip(chief_weights, worker_weights):
    np.testing.assert_array_equal(a, b)
  # The chief wrote the run directory; the worker's scratch directory is gone and it wrote
  # no summaries, checkpoints or report of its own into the workdir.
  assert not os.path.exists(worker["scratch"])
  check_run_directory(straight, last_step=6)
  assert "the chief evaluates" in worker_log and "is not the chief" in worker_log
  report = json.loads((straight / "eval" / "report.json").read_text())
  assert report["step"] in (3, 6)

  # Interrupt both at step 3, restart both: each resumes from the chief's checkpoint and
  # the run ends where the uninterrupted one did.
  restarted = tmp_path / "restarted"
  _run_two_workers(config, restarted, tmp_path / "out_first", until_step=3)
  assert not (restarted / "eval").exists()
  results = _run_two_workers(config, restarted, tmp_path / "out_second")
  for info, log, weights in results:
    assert f"Resuming from {restarted / 'checkpoints' / 'ckpt-3'} at step 3" in log
    assert info["step"] == 6
    for a, b in zip(chief_weights, weights):
      np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_accumulated_micro_batches_under_two_workers_give_the_big_batch_update(
    sentiment_dir, tmp_path):
  common = dict(distribution__strategy="multi_worker", train__steps=3, train__batch_size=8,
                train__eval_every=100, data__bucketing=False, data__shuffle_buffer=0)
  big = _run_two_workers(tiny_config(sentiment_dir, **common), tmp_path / "big",
                         tmp_path / "out_big")
  accumulated = _run_two_workers(tiny_config(sentiment_dir, train__grad_accum_steps=2, **common),
                                 tmp_path / "accumulated", tmp_path / "out_accumulated")
  assert "2 accumulated micro-batches of 4" in accumulated[0][1]
  for (_, _, big_weights), (_, _, weights) in zip(big, accumulated):
    for a, b in zip(big_weights, weights):
      np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_sigterm_to_one_worker_saves_on_both_and_a_restart_ends_with_the_same_weights(
    sentiment_dir, tmp_path):
  """TensorFlow's PreemptionCheckpointHandler: the signal reaches worker 1 only; both
  workers save at the same step (a collective save), stop with the one-line message, and
  restarted they end where an uninterrupted run does."""
  config = tiny_config(sentiment_dir, distribution__strategy="multi_worker", train__steps=200,
                       train__eval_every=1000, train__log_every=1)
  (_, _, whole_weights), _ = _run_two_workers(config, tmp_path / "whole", tmp_path / "out_whole")

  workdir = tmp_path / "cut"
  _sigterm_to_worker_1_at(config, workdir, tmp_path / "out_cut", "step 30/200")
  saved = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  assert saved is not None and 30 <= int(saved.rsplit("-", 1)[1]) < 200
  for info, log, weights in _run_two_workers(config, workdir, tmp_path / "out_again"):
    assert f"Resuming from {saved}" in log and info["step"] == 200
    for a, b in zip(whole_weights, weights):
      np.testing.assert_allclose(a, b, atol=1e-5)


def _sigterm_to_worker_1_at(config, workdir, out, log_text):
  """Starts both workers, sends SIGTERM to worker 1 once worker 0 has logged `log_text`, and
  checks that both saved and stopped with the one-line message."""
  import signal
  out.mkdir()
  config_path = out / "config.json"
  config_path.write_text(config.to_json())
  processes, logs = [], []
  try:
    for index, tf_config in enumerate(distribute.local_tf_configs(2)):
      logs.append(out / f"worker_{index}.log")
      with open(logs[-1], "w") as log:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "tests.run_worker", str(config_path), str(workdir),
             str(out / f"weights_{index}.npz")],
            env=dict(os.environ, TF_CONFIG=tf_config), cwd=REPO, stdout=log, stderr=log))
    deadline = time.time() + TIMEOUT_SECONDS
    while log_text not in logs[0].read_text():
      assert time.time() < deadline and processes[0].poll() is None, logs[0].read_text()[-3000:]
      time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)
    for p in processes:
      p.wait(timeout=max(1, deadline - time.time()))
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  texts = [log.read_text() for log in logs]
  for p, text in zip(processes, texts):
    assert p.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "SIGTERM received: saved" in text and "Traceback" not in text


@pytest.mark.slow
def test_a_setfit_preemption_save_holds_the_head_of_its_own_encoder(tmp_path):
  """The collective save of TensorFlow's handler comes at any step; the head in it is
  refitted on the encoder saved, as at every other save (here before the first evaluation,
  when the head of the last evaluation would be the untrained one)."""
  from tests.conftest import write_sentiment_tsv
  from tests.test_setfit import _head_and_logistic_regressions, _setfit_config
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=24)
  config = _setfit_config(data, distribution__strategy="multi_worker", task__head_c=1.0,
                          train__steps=400, train__eval_every=400, train__log_every=1)
  workdir = tmp_path / "run"
  _sigterm_to_worker_1_at(config, workdir, tmp_path / "out", "step 20/400")
  saved = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  assert saved is not None and 20 <= int(saved.rsplit("-", 1)[1]) < 400
  probabilities, with_c_1 = _head_and_logistic_regressions(workdir, saved, 1.0)
  np.testing.assert_allclose(probabilities, with_c_1, atol=1e-4)


@pytest.mark.slow
def test_a_step_diverged_by_one_example_is_named_by_the_worker_that_read_it(tmp_path):
  """Each worker names the examples of its own share of the diverged step: the one whose
  shard holds the bad line names it; the other says its share is finite, and points to
  the other workers' logs rather than concluding that no example caused it."""
  from tests.test_failure_modes import _scores_with_a_bad_label
  data = _scores_with_a_bad_label(tmp_path / "data", bad_line=11)
  config = tiny_config(data, task__name="regression", data__label_column="score",
                       distribution__strategy="multi_worker", train__steps=12,
                       train__eval_every=12)
  results = _two_workers(config, tmp_path / "run", tmp_path / "out")
  steps = set()
  named = []
  for index, (returncode, _, stderr) in enumerate(results):
    assert returncode != 0, f"worker {index} did not stop"
    match = re.search(r"training diverged at step (\d+): loss inf and gradient norm inf; "
                      r"recomputed(.*)\. The step was not applied", stderr)
    assert match, f"worker {index}:\n{stderr[-4000:]}"
    steps.add(match[1])
    share = f"worker {index}'s \\(input pipeline {index + 1} of 2\\) share of the step's 4"
    if re.search(rf", the loss is not finite on 1 of {share} train examples: "
                 rf"{re.escape(str(data / 'train.tsv'))}:11 \(loss inf\); fix or remove them",
                 match[2]):
      named.append(index)
    else:
      assert re.fullmatch(rf" without dropout on the weights at hand, each of {share} train "
                          r"examples has a finite loss \(the largest: .*\); the other "
                          r"workers' logs say the same of their shares", match[2]), match[2]
  assert len(steps) == 1 and len(named) == 1, (steps, named)


@pytest.mark.slow
def test_two_workers_go_back_to_a_checkpoint_together_when_a_step_diverges(tmp_path):
  """train.divergence_rollbacks under multi_worker, ckpt-0 included (saved before the
  preemption handler adds its variable to the checkpoint): both workers go back to the same
  checkpoints, leave out the same steps, and end at train.steps with the same weights."""
  from tests.test_failure_modes import _scores_with_a_bad_label
  data = _scores_with_a_bad_label(tmp_path / "data", bad_line=11)
  config = tiny_config(data, task__name="regression", data__label_column="score",
                       distribution__strategy="multi_worker", train__steps=24,
                       train__eval_every=12, train__checkpoint_every=4,
                       train__divergence_rollbacks=10)
  (chief, chief_log, chief_weights), (worker, worker_log, worker_weights) = _run_two_workers(
      config, tmp_path / "run", tmp_path / "out")
  went_back = [re.findall(r"Went back to \S+/(ckpt-\d+) \(step \d+\) and left out the data of "
                          r"steps? [\d-]+", log) for log in (chief_log, worker_log)]
  assert went_back[0] == went_back[1] and "ckpt-0" in went_back[0][0], went_back
  assert chief["step"] == worker["step"] == 24
  for a, b in zip(chief_weights, worker_weights):
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()


@pytest.mark.parametrize("tf_config,words", [
    ("{bad json", "TF_CONFIG is not JSON (Expecting property name enclosed in double quotes: "
     "line 1 column 2)"),
    ('["worker"]', "TF_CONFIG is not a JSON object with cluster and task"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG has no cluster"),
    ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG's cluster.worker is not a list of host:port addresses"),
    ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG's cluster.worker[0] = '127.0.0.1' is not host:port"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "TF_CONFIG has no task"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}',
     "TF_CONFIG's task.type = 'ps' is not a job of its cluster (worker)"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 5}}',
     "TF_CONFIG's task.index = 5 is not among cluster.worker's 1 (0 to 0)"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": "first"}}',
     "TF_CONFIG's task.index = 'first' is not a whole number"),
])
def test_a_malformed_tf_config_is_one_line_naming_the_field(monkeypatch, tf_config, words):
  """A TF_CONFIG that is not JSON, or names no task or one out of its cluster, ended in a
  traceback from json or TensorFlow's MultiWorkerMirroredStrategy."""
  from tf_finetune import config as config_lib
  from tf_finetune.errors import ConfigError
  monkeypatch.setenv("TF_CONFIG", tf_config)
  config = config_lib.base_config().distribution
  config.strategy = "multi_worker"
  with pytest.raises(ConfigError) as e:
    distribute.get_strategy(config)
  assert str(e.value).startswith("config.distribution.strategy='multi_worker': "), e.value
  assert words in str(e.value) and "\n" not in str(e.value), e.value


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_worker_killed_mid_training_stops_the_other_in_one_line_and_both_resume(
    tmp_path, victim):
  """SIGKILL to one worker (its machine gone) ended the other in TensorFlow's
  UnavailableError traceback (and, when the chief was the one killed, a traceback of
  TensorFlow's preemption watcher thread too); now one line names the lost worker and the
  checkpoint a restart resumes from, and it does."""
  survivor = 1 - victim
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "tf_finetune.train", "--config=configs/smoke.py",
             f"--workdir={workdir}", "--config.distribution.strategy=multi_worker",
             "--config.train.steps=300", "--config.train.eval_every=300",
             "--config.train.log_every=10", "--config.train.checkpoint_every=10"]
  tf_configs = distribute.local_tf_configs(2)

  def start(round_name):
    logs = [tmp_path / f"{round_name}_{i}.log" for i in range(2)]
    processes = [subprocess.Popen(command, env=dict(os.environ, TF_CONFIG=tf_config), cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=log.open("w"))
                 for tf_config, log in zip(tf_configs, logs)]
    return processes, logs

  processes, logs = start("killed")
  try:
    deadline = time.time() + TIMEOUT_SECONDS
    while "step 20/300" not in logs[victim].read_text():
      assert time.time() < deadline and processes[victim].poll() is None, \
          logs[victim].read_text()[-3000:]
      time.sleep(0.2)
    processes[victim].kill()
    processes[survivor].wait(timeout=120)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  stderr = logs[survivor].read_text()
  assert processes[survivor].returncode == 1, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  [error] = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert error.startswith(f"error: worker {survivor} lost worker {victim} of the cluster "
                          "after step "), error
  named = re.search(r"checkpoint (?:is|saved together is) (\S*ckpt-(\d+))[;:]", error)
  assert named, error

  processes, logs = start("restarted")
  try:
    for p in processes:
      p.wait(timeout=TIMEOUT_SECONDS)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log.read_text()[-3000:]
  resumed = re.search(r"Resuming from (\S+/ckpt-(\d+)) at step", logs[0].read_text())
  assert resumed, logs[0].read_text()[-3000:]
  if victim == 1:  # the chief's own checkpoint: the one named
    assert resumed.group(1) == named.group(1), (resumed.group(1), error)
  else:  # the newest intact one, at most the one saved together
    assert 10 <= int(resumed.group(2)) <= int(named.group(2)), (resumed.group(1), error)


@pytest.mark.slow
def test_sigterm_between_the_strategy_and_training_ends_the_process():
  """MultiWorkerMirroredStrategy() installs a C++ SIGTERM handler that only records the
  signal, so until training started (model loading, data reading) SIGTERM was lost."""
  script = ("import signal, sys, time\n"
            "from tf_finetune import config, distribute\n"
            "c = config.base_config().distribution\n"
            "c.strategy = 'multi_worker'\n"
            "distribute.get_strategy(c)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
  process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, text=True,
                             env=dict(os.environ, TF_CONFIG=distribute.local_tf_configs(1)[0]),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  try:
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == -signal.SIGTERM
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
