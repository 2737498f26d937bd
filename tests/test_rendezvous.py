"""Workers of a multi_worker cluster meet before TensorFlow's strategy starts (rendezvous.py)."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO
from tf_finetune import distribute
from tf_finetune import rendezvous
from tf_finetune.errors import ConfigError


def _meet(tf_configs, wait_seconds):
  """wait_for_workers of each TF_CONFIG in its own thread; what each returned or raised."""
  outcomes = [None] * len(tf_configs)

  def worker(i):
    try:
      rendezvous.wait_for_workers(json.loads(tf_configs[i]), wait_seconds)
      outcomes[i] = "met"
    except ConfigError as e:
      outcomes[i] = e
  threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(tf_configs))]
  for t in threads:
    t.start()
    time.sleep(0.3)  # not all at once, as machines start
  for t in threads:
    t.join(wait_seconds + 30)
  assert not any(t.is_alive() for t in threads)
  return outcomes


def test_three_workers_meet_and_free_their_ports():
  tf_configs = distribute.local_tf_configs(3)
  assert _meet(tf_configs, 60) == ["met"] * 3
  for address in json.loads(tf_configs[0])["cluster"]["worker"]:  # TensorFlow takes them next
    with socket.create_server(("", int(address.rpartition(":")[2]))):
      pass


def test_a_worker_that_never_starts_is_named_after_the_wait():
  tf_config = distribute.local_tf_configs(2)[0]
  missing = json.loads(tf_config)["cluster"]["worker"][1]
  start = time.monotonic()
  [error] = _meet([tf_config], 2)
  assert 2 <= time.monotonic() - start < 20
  assert isinstance(error, ConfigError), error
  message = str(error)
  assert "\n" not in message
  assert "did not form within distribution.cluster_wait_seconds=2" in message, message
  assert f"worker 1 at {missing}: nothing listens there yet (connection refused)" in message


def test_workers_given_different_clusters_are_told_apart():
  two = distribute.local_tf_configs(2)
  three = json.loads(two[1])
  three["cluster"]["worker"].append("127.0.0.1:9")
  outcomes = _meet([two[0], json.dumps(three)], 20)
  for outcome in outcomes:
    assert isinstance(outcome, ConfigError), outcomes
    assert "was started with another TF_CONFIG cluster" in str(outcome), outcome
    assert "give every worker the same cluster" in str(outcome)


def test_two_workers_with_the_same_task_are_refused():
  tf_configs = distribute.local_tf_configs(2)
  port = int(json.loads(tf_configs[0])["cluster"]["worker"][0].rpartition(":")[2])
  with socket.create_server(("", port)):  # the first worker 0 already listens there
    with pytest.raises(ConfigError, match=f"cannot listen on port {port}"):
      rendezvous.wait_for_workers(json.loads(tf_configs[0]), 5)


def test_another_program_on_a_workers_port_is_not_taken_for_it():
  tf_configs = distribute.local_tf_configs(2)
  port = int(json.loads(tf_configs[1])["cluster"]["worker"][1].rpartition(":")[2])
  with socket.create_server(("", port)) as other:
    def answer_nonsense():
      while True:
        try:
          connection, _ = other.accept()
        except OSError:
          return
        with connection:
          connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    threading.Thread(target=answer_nonsense, daemon=True).start()
    [error] = _meet([tf_configs[0]], 2)
  assert "it answers, but not as a tf_finetune worker" in str(error), error


@pytest.mark.slow
def test_the_training_command_stops_in_one_line_when_a_worker_is_missing(tmp_path):
  """MultiWorkerMirroredStrategy alone waited an hour, silent and deaf to Ctrl-C and
  SIGTERM; the run directory is not created."""
  tf_config = distribute.local_tf_configs(2)[0]
  env = dict(os.environ, TF_CONFIG=tf_config)
  result = subprocess.run(
      [sys.executable, "-m", "tf_finetune.train", "--config=configs/smoke.py",
       f"--workdir={tmp_path / 'run'}", "--config.distribution.strategy=multi_worker",
       "--config.distribution.cluster_wait_seconds=3"],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "did not form within" in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ctrl_c_stops_a_worker_waiting_for_its_cluster(tmp_path):
  """With no limit on the wait, Ctrl-C still ends it (`interrupted`, status 130)."""
  tf_config = distribute.local_tf_configs(2)[0]
  process = subprocess.Popen(
      [sys.executable, "-m", "tf_finetune.train", "--config=configs/smoke.py",
       f"--workdir={tmp_path / 'run'}", "--config.distribution.strategy=multi_worker",
       "--config.distribution.cluster_wait_seconds=0"],
      env=dict(os.environ, TF_CONFIG=tf_config), cwd=REPO, stderr=subprocess.PIPE, text=True,
      # As started from a terminal: a test run started in the background (`nohup ... &`)
      # ignores SIGINT, and its children would inherit that and never see the Ctrl-C.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    seen = []
    for line in process.stderr:  # until the worker says whom it waits for
      seen.append(line)
      if "waiting for worker 1 at" in line:
        break
    else:
      pytest.fail("".join(seen)[-3000:])
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=60)[1]
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  assert process.returncode == 130, "".join(seen)[-2000:] + rest[-2000:]
  assert rest.strip().splitlines()[-1] == "interrupted", rest[-2000:]
  assert not (tmp_path / "run").exists()
