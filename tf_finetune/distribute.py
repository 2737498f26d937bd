"""A tf.distribute strategy from its config name."""
import json
import os
import signal
import threading

import tensorflow as tf

from tf_finetune import rendezvous
from tf_finetune.errors import ConfigError


def split_cpu(num_devices):
  """Splits the host CPU into logical devices (for mirrored runs without accelerators).
  Must run before TensorFlow initializes its devices."""
  if num_devices <= 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  wanted = [tf.config.LogicalDeviceConfiguration()] * num_devices
  current = tf.config.get_logical_device_configuration(cpu)
  if current is None or len(current) != num_devices:
    try:
      tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError as e:
      raise ConfigError(f"config.distribution.num_cpu_devices={num_devices}: TensorFlow's devices "
                        f"are already initialized in this process ({e})") from None


def get_strategy(distribution_config):
  name = distribution_config.strategy
  split_cpu(distribution_config.num_cpu_devices)
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if gpus:
      return tf.distribute.MirroredStrategy(gpus)
    # On CPU devices MirroredStrategy would pick collective ops, whose instance keys are
    # process-global: a second strategy in the same process (a notebook training another
    # model) fails with "Shape mismatch in the collective instance". Summing on one device
    # keeps no such state and scales the same here (tools/bench_scaling.py).
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")],
        cross_device_ops=tf.distribute.ReductionToOneDevice())
  if name == "multi_worker":
    problem = _tf_config_problem(os.environ.get("TF_CONFIG"))
    if problem:
      raise ConfigError(f"config.distribution.strategy='multi_worker': {problem}")
    rendezvous.wait_for_workers(json.loads(os.environ["TF_CONFIG"]),
                                distribution_config.cluster_wait_seconds)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
      strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, TypeError, KeyError) as e:
      raise ConfigError(f"config.distribution.strategy='multi_worker': TensorFlow refuses "
                        f"TF_CONFIG ({type(e).__name__}: {str(e).strip()[:300]})") from None
    # Its coordination service installs a C++ SIGTERM handler that only records the signal:
    # until training starts (where PreemptionCheckpointHandler installs its own), a SIGTERM
    # would be lost. The signal gets back what it had, as under every other strategy.
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, signal.SIG_DFL if sigterm is None else sigterm)
    return strategy
  if name == "tpu":
    return _tpu_strategy(distribution_config.tpu)
  raise ConfigError(f"config.distribution.strategy={name!r} is unknown")


def _tf_config_problem(text):
  """What in TF_CONFIG (the JSON that TensorFlow's TFConfigClusterResolver reads) would stop
  MultiWorkerMirroredStrategy with a traceback, or None. The checks are the resolver's own
  reading of it: a cluster of job names to lists (or {index: address} maps) of host:port
  addresses, and a task whose type is one of those jobs and whose index, read by int(), is
  one of that job's."""
  if text is None:
    return "needs TF_CONFIG in the environment (each worker's cluster and task)"
  try:
    tf_config = json.loads(text)
  except json.JSONDecodeError as e:
    return f"TF_CONFIG is not JSON ({e.msg}: line {e.lineno} column {e.colno})"
  if not isinstance(tf_config, dict):
    return "TF_CONFIG is not a JSON object with cluster and task"
  cluster, task = tf_config.get("cluster"), tf_config.get("task")
  if not isinstance(cluster, dict) or not cluster:
    return "TF_CONFIG has no cluster (an object of job names to lists of host:port addresses)"
  for job, addresses in cluster.items():
    if isinstance(addresses, dict):
      if not all(str(i).isdigit() for i in addresses):
        return f"TF_CONFIG's cluster.{job} maps keys other than task indices to addresses"
      addresses = list(addresses.values())
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
      return f"TF_CONFIG's cluster.{job} is not a list of host:port addresses"
    if not addresses:
      return f"TF_CONFIG's cluster.{job} lists no address"
    for i, address in enumerate(addresses):
      host, _, port = address.rpartition(":")
      if not host or not port.isdigit():
        return f"TF_CONFIG's cluster.{job}[{i}] = {address!r} is not host:port"
  if not isinstance(task, dict):
    return "TF_CONFIG has no task (this process's type and index in the cluster)"
  if task.get("type") not in cluster:
    return (f"TF_CONFIG's task.type = {task.get('type')!r} is not a job of its cluster "
            f"({', '.join(cluster)})")
  try:
    index = int(task.get("index"))
  except (TypeError, ValueError):
    return f"TF_CONFIG's task.index = {task.get('index')!r} is not a whole number"
  job = task["type"]
  if isinstance(cluster[job], dict):
    indices = sorted(int(i) for i in cluster[job])
    listed = ", ".join(map(str, indices))
  else:
    indices = range(len(cluster[job]))
    listed = f"0 to {len(indices) - 1}"
  if index not in indices:
    return (f"TF_CONFIG's task.index = {task.get('index')!r} is not among cluster.{job}'s "
            f"{len(indices)} ({listed})")
  return None


def _tpu_strategy(tpu):
  """TPUStrategy for `local` (a TPU VM, as Colab's TPU runtimes are now), a TPU name or a
  grpc:// address."""
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    reason = str(e).strip().splitlines()[0][:300]
    raise ConfigError(f"config.distribution.tpu={tpu!r}: no TPU could be initialized ({reason}). "
                      "On a TPU VM install tensorflow-tpu matching tensorflow "
                      "(notebooks/colab_tpu.ipynb shows how)") from None
  return tf.distribute.TPUStrategy(resolver)


_CPU_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo: bfloat16 matmul units
# /proc/cpuinfo flags on which TensorFlow turns its oneDNN kernels on by itself on Linux
# (tensorflow/core/util/port.cc, DefaultOneDnnPolicy).
_TENSORFLOW_ONEDNN_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                            "amx_bf16")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
  """The CPU's feature flags as /proc/cpuinfo lists them (none where it cannot be read)."""
  try:
    with open(cpuinfo) as f:
      return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
  except OSError:
    return []


def tensorflow_onednn_default(cpuinfo="/proc/cpuinfo"):
  """Whether TensorFlow alone (a process that does not import tf_finetune, such as TF
  Serving's) runs oneDNN kernels on this x86-64 Linux CPU."""
  return any(flag in cpu_flags(cpuinfo) for flag in _TENSORFLOW_ONEDNN_FLAGS)


def onednn_kernels():
  """Whether TensorFlow runs its oneDNN kernels in this process, and what decided it."""
  from tensorflow.python.util import _pywrap_util_port  # no public API tells it
  import tf_finetune
  on = bool(_pywrap_util_port.IsMklEnabled())
  if tf_finetune.USER_ONEDNN is not None:
    why = f"TF_ENABLE_ONEDNN_OPTS={tf_finetune.USER_ONEDNN} set before the start"
  elif os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1":
    why = ("tf_finetune's default on x86-64 Linux; TF_ENABLE_ONEDNN_OPTS=0 set before the "
           "start turns them off")
  else:
    why = "TensorFlow's default on this platform"
  return on, why


def native_bfloat16(strategy_name, cpuinfo="/proc/cpuinfo"):
  """Whether this machine computes bfloat16 natively, and what says so: a TPU, a GPU of
  compute capability 8.0 or more (Ampere on), or a CPU with AMX or AVX512_BF16 (where
  oneDNN runs bfloat16 matmuls at up to twice float32's rate)."""
  if strategy_name == "tpu":
    return True, "a TPU"
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    return bool(capability and capability >= (8, 0)), f"GPU compute capability {capability}"
  flags = cpu_flags(cpuinfo)
  found = [flag for flag in _CPU_BFLOAT16_FLAGS if flag in flags]
  return bool(found), f"CPU flags {', '.join(found)}" if found else "a CPU without AMX or AVX512_BF16"


def resolved_precision(config):
  """train.precision, with `auto` resolved for this machine: (policy name, why)."""
  asked = config.train.precision
  if asked != "auto":
    return asked, f"train.precision={asked}"
  if config.task.name == "zero_shot":  # nothing trains: the head is built as evaluation reads it
    return "float32", "train.precision=auto: task.name=zero_shot trains nothing"
  native, what = native_bfloat16(config.distribution.strategy)
  return ("mixed_bfloat16" if native else "float32"), f"train.precision=auto: {what}"


def is_chief(strategy):
  """True where side effects (checkpoints, summaries, reports) belong."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type in (None, "chief"):
    return True
  cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
  return task_type == "worker" and task_id == 0 and "chief" not in cluster


def local_tf_configs(num_workers):
  """TF_CONFIG values for `num_workers` worker processes on 127.0.0.1 (free ports picked
  now): for trying multi_worker on one machine, tests and tools/bench_scaling.py."""
  import socket
  sockets = [socket.socket() for _ in range(num_workers)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
  finally:
    for s in sockets:
      s.close()
  return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
          for i in range(num_workers)]
