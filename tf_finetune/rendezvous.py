"""Every worker of TF_CONFIG's cluster answering, before MultiWorkerMirroredStrategy starts.

TensorFlow's MultiWorkerMirroredStrategy() waits for the other workers inside one C++ call
that holds the GIL: up to an hour (its coordination service's device propagation timeout),
without a line of output, deaf to Ctrl-C, and with SIGTERM taken by its own handler. A
worker that never starts (a typo in TF_CONFIG, a machine that is down) hangs every other.
So each worker first meets the others here, in Python: it listens on its own TF_CONFIG
port, and says hello to every other worker's port until each has answered and each has
said hello to it, logging who is missing; after distribution.cluster_wait_seconds it stops
with one line naming them. The hello carries the cluster as this worker read it, so workers
started with different clusters are told apart here too. Then it closes its port, which
TensorFlow's server takes next. Hand-written: no library on this stack does this wait.
"""
import json
import select
import socket
import threading
import time

from absl import logging

from tf_finetune.errors import ConfigError

COORDINATED_JOBS = ("chief", "worker")  # the jobs MultiWorkerMirroredStrategy coordinates
PROGRESS_SECONDS = (10, 30)  # the first "waiting" line after 10 s, then every 30 s
RETRY_SECONDS = 0.5
IO_TIMEOUT_SECONDS = 5.0


def tasks(cluster):
  """{"job:index": "host:port"} of the coordinated tasks of a TF_CONFIG cluster (lists or
  {index: address} maps, as TensorFlow reads them)."""
  found = {}
  for job in COORDINATED_JOBS:
    addresses = cluster.get(job, [])
    pairs = addresses.items() if isinstance(addresses, dict) else enumerate(addresses)
    for index, address in pairs:
      found[f"{job}:{int(index)}"] = address
  return found


def wait_for_workers(tf_config, wait_seconds):
  """Returns once every other coordinated task of `tf_config` (a parsed TF_CONFIG, already
  checked) has answered this one's hello and said its own; raises ConfigError after
  `wait_seconds` (0: no limit) naming the tasks still missing and why."""
  everyone = tasks(tf_config["cluster"])
  me = f"{tf_config['task']['type']}:{int(tf_config['task']['index'])}"
  if me not in everyone or len(everyone) == 1:
    return
  others = {name: address for name, address in everyone.items() if name != me}
  expected = set(others)
  hello = (json.dumps({"tf_finetune_worker": me, "cluster": everyone},
                      sort_keys=True) + "\n").encode()
  answering = _Answering(_listen(me, everyone[me]), hello, everyone)
  answered_by, problems = set(), {name: "no answer yet" for name in others}
  next_report = PROGRESS_SECONDS[0]
  logging.info("multi_worker: %s of %d (TF_CONFIG) at %s; waiting for %s", _name(me),
               len(everyone), everyone[me], _list(others))
  start = time.monotonic()
  try:
    while True:
      for name in sorted(expected - answered_by):
        problem = _say_hello(others[name], name, hello, everyone)
        if problem is None:
          answered_by.add(name)
        else:
          problems[name] = problem
      answering.raise_error()
      missing = sorted(expected - (answered_by & answering.heard_from))
      if not missing:
        break
      waited = time.monotonic() - start
      if wait_seconds and waited >= wait_seconds:
        raise ConfigError(
            "config.distribution.strategy='multi_worker': the cluster did not form within "
            f"distribution.cluster_wait_seconds={wait_seconds:g}: "
            f"{_missing(missing, others, problems, answered_by)}. Start every worker of "
            "TF_CONFIG's cluster (the same command, each with its own task), or raise "
            "distribution.cluster_wait_seconds (0: no limit)")
      if waited >= next_report:
        next_report += PROGRESS_SECONDS[1]
        logging.warning("multi_worker: %.0f s waiting for the cluster: %s",
                        waited, _missing(missing, others, problems, answered_by))
      time.sleep(RETRY_SECONDS if expected - answered_by else 0.1)
  finally:
    answering.stop()
  logging.info("multi_worker: every one of the %d tasks answered in %.1f s", len(everyone),
               time.monotonic() - start)


class _Answering:
  """Answers the other workers' hellos on this worker's port, in a thread of its own, so
  that two workers saying hello to each other at once do not wait on each other."""

  def __init__(self, listener, hello, everyone):
    self.heard_from = set()
    self._error = None
    self._listener, self._hello, self._everyone = listener, hello, everyone
    self._stopping = threading.Event()
    self._thread = threading.Thread(target=self._serve, daemon=True,
                                    name="tf_finetune-rendezvous")
    self._thread.start()

  def _serve(self):
    while not self._stopping.is_set():
      readable, _, _ = select.select([self._listener], [], [], 0.1)
      if not readable:
        continue
      try:
        name = _answer_hello(self._listener, self._hello, self._everyone)
      except ConfigError as e:
        self._error = e
        return
      if name is not None:
        self.heard_from = self.heard_from | {name}

  def raise_error(self):
    if self._error is not None:
      raise self._error

  def stop(self):
    self._stopping.set()
    self._thread.join()
    self._listener.close()


def _listen(me, address):
  port = int(address.rpartition(":")[2])
  try:
    if socket.has_dualstack_ipv6():  # TF_CONFIG may name IPv4 or IPv6 addresses
      return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True,
                                  backlog=64)
    return socket.create_server(("", port), backlog=64)
  except OSError as e:
    raise ConfigError(f"config.distribution.strategy='multi_worker': this process is "
                      f"{_name(me)} of TF_CONFIG, at {address}, but cannot listen on port "
                      f"{port} ({e.strerror or e}); is another process (another worker "
                      "with the same task) using it?") from None


def _say_hello(address, name, hello, everyone):
  """None once `name` at `address` answered as itself with the same cluster; else what
  went wrong (a ConfigError for a worker that disagrees)."""
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)),
                                  timeout=IO_TIMEOUT_SECONDS) as connection:
      connection.sendall(hello)
      reply = _read_line(connection)
  except socket.gaierror as e:
    return f"its host {host!r} does not resolve ({e.strerror})"
  except ConnectionRefusedError:
    return "nothing listens there yet (connection refused)"
  except socket.timeout:
    return "no answer (timed out)"
  except OSError as e:
    return f"{e.strerror or e}"
  return _check_peer(reply, name, address, everyone)


def _answer_hello(listener, hello, everyone):
  """Reads one hello on `listener`, answers it; the task that said it, or None for a
  connection that was no tf_finetune worker's (a port scanner, a health check)."""
  try:
    connection, _ = listener.accept()
  except OSError:
    return None
  with connection:
    connection.settimeout(IO_TIMEOUT_SECONDS)
    try:
      said = json.loads(_read_line(connection))
    except (OSError, ValueError):
      return None
    if not _is_hello(said):
      return None
    try:
      connection.sendall(hello)
    except OSError:
      return None  # not answered: it says its hello again
    try:  # the other side closes first, so no TIME_WAIT holds the port TensorFlow takes next
      while connection.recv(4096):
        pass
    except OSError:
      pass
    name = said["tf_finetune_worker"]
    _check_cluster(said.get("cluster"), name, everyone.get(name, "?"), everyone)
    return name


def _read_line(connection, limit=1 << 20):
  data = b""
  while not data.endswith(b"\n") and len(data) < limit:
    chunk = connection.recv(65536)
    if not chunk:
      break
    data += chunk
  return data.decode("utf-8", "replace")


def _check_peer(reply, name, address, everyone):
  """None for the answer of `name` itself with the same cluster; a problem to retry on for
  an answer that is no tf_finetune worker's (another program's port, or a worker already
  past this wait, whose TensorFlow server took it); raises for a worker that disagrees."""
  try:
    said = json.loads(reply)
  except ValueError:
    said = None
  if not _is_hello(said):
    return "it answers, but not as a tf_finetune worker waiting for its cluster"
  if said["tf_finetune_worker"] != name:
    raise ConfigError(f"config.distribution.strategy='multi_worker': {address} answers as "
                      f"{_name(said['tf_finetune_worker'])} where this TF_CONFIG lists "
                      f"{_name(name)}; two workers were given the same task, or other "
                      "addresses")
  _check_cluster(said.get("cluster"), name, address, everyone)
  return None


def _is_hello(said):
  return isinstance(said, dict) and isinstance(said.get("tf_finetune_worker"), str)


def _check_cluster(theirs, name, address, everyone):
  if theirs != everyone:
    raise ConfigError(f"config.distribution.strategy='multi_worker': {_name(name)} at "
                      f"{address} was started with another TF_CONFIG cluster "
                      f"({json.dumps(theirs, sort_keys=True)}) than this one "
                      f"({json.dumps(everyone, sort_keys=True)}); give every worker the "
                      "same cluster")


def _name(task):
  job, _, index = task.partition(":")
  return f"{job} {index}"


def _list(others):
  return ", ".join(f"{_name(name)} at {address}" for name, address in sorted(others.items()))


def _missing(missing, others, problems, answered_by):
  parts = []
  for name in missing:
    if name in answered_by:
      why = ("it answers, but its own hello has not reached this worker (can it reach "
             "this worker's address?)")
    else:
      why = problems[name]
    parts.append(f"{_name(name)} at {others[name]}: {why}")
  return "; ".join(parts)
