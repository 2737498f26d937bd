"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1."""
import json
import os
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
  """Starts both workers, waits for both (bounded), kills whatever is left; returns
  [(returncode, stdout, stderr, weights)] for worker 0 (the chief) and worker 1."""
  out_dir.mkdir(parents=True, exist_ok=True)
  config_path = out_dir / "config.json"
  config_path.write_text(config.to_json())
  processes = []
  try:
    for index, tf_config in enumerate(distribute.local_tf_configs(2)):
      env = dict(os.environ, TF_CONFIG=tf_config)
      command = [sys.executable, str(REPO / "tests" / "run_worker.py"), str(config_path),
                 str(workdir), str(out_dir / f"weights_{index}.npz")]
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
  results = []
  for index, (p, (stdout, stderr)) in enumerate(zip(processes, outputs)):
    assert p.returncode == 0, f"worker {index}:\n{stderr[-4000:]}"
    info = json.loads(stdout.strip().splitlines()[-1])
    with np.load(out_dir / f"weights_{index}.npz") as npz:
      weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    results.append((info, stderr, weights))
  return results


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
  import signal
  config = tiny_config(sentiment_dir, distribution__strategy="multi_worker", train__steps=200,
                       train__eval_every=1000, train__log_every=1)
  (_, _, whole_weights), _ = _run_two_workers(config, tmp_path / "whole", tmp_path / "out_whole")

  workdir, out = tmp_path / "cut", tmp_path / "out_cut"
  out.mkdir()
  config_path = out / "config.json"
  config_path.write_text(config.to_json())
  processes, logs = [], []
  try:
    for index, tf_config in enumerate(distribute.local_tf_configs(2)):
      logs.append(out / f"worker_{index}.log")
      with open(logs[-1], "w") as log:
        processes.append(subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "run_worker.py"), str(config_path),
             str(workdir), str(out / f"weights_{index}.npz")],
            env=dict(os.environ, TF_CONFIG=tf_config), cwd=REPO, stdout=log, stderr=log))
    deadline = time.time() + TIMEOUT_SECONDS
    while "step 30/200" not in logs[0].read_text():
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
  saved = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  assert saved is not None and 30 <= int(saved.rsplit("-", 1)[1]) < 200
  for info, log, weights in _run_two_workers(config, workdir, tmp_path / "out_again"):
    assert f"Resuming from {saved}" in log and info["step"] == 200
    for a, b in zip(whole_weights, weights):
      np.testing.assert_allclose(a, b, atol=1e-5)
