"""Serving latency and throughput: raw-text vs token-id signatures, packed and not, and the
PyTorch pipeline.

  python -m tf_finetune.export --workdir=runs/bbc                 # SavedModel
  python -m tf_finetune.export --workdir=runs/bbc --format=hf     # for the PyTorch side
  python tools/bench_serving.py --workdir=runs/bbc [--requests=200] [--no_torch]

Texts: the run's dev split. Batch 1: p50 and p95 latency over --requests calls, one text per
call. Batch 32: examples/s over the dev set. TensorFlow and PyTorch run in separate
processes, taking turns for --rounds rounds (PyTorch's OpenMP threads spin after each call
and slow whatever runs next in the same process: about 15 ms a call here); within the
TensorFlow process its sides take turns call by call and batch by batch. The token-id side
is timed on ids prepared beforehand (what a client that tokenizes itself sends); the
raw-text sides include tokenization in the graph. "data.packing=False" is the same
checkpoint saved (into a temporary directory) with the run's config but packing off: what
the export's in-graph packing gains or costs. PyTorch: transformers' text-classification
pipeline on the HF export of the same checkpoint (tokenization included), torch.no_grad.
oneDNN: the TensorFlow process runs TensorFlow's oneDNN kernels as TensorFlow alone decides on
this CPU (--onednn=tensorflow: what TF Serving, or any process that does not import
tf_finetune, gets), or --onednn=on / off.
"""
import os
import tempfile
import time

import benchlib
import numpy as np
from absl import app
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import distribute
from tf_finetune import experiment
from tf_finetune import tasks
from tf_finetune.export import serving

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with exports.", required=True)
_REQUESTS = flags.DEFINE_integer("requests", 200, "Batch-1 calls per side.")
_NO_TORCH = flags.DEFINE_bool("no_torch", False, "Skip the PyTorch pipeline.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Turns of each process (TensorFlow, PyTorch).")
_ONEDNN = flags.DEFINE_enum(
    "onednn", "tensorflow", ["tensorflow", "on", "off"], "TensorFlow's oneDNN kernels in the "
    "TensorFlow process: as TensorFlow alone decides on this CPU (TF Serving's case), or on/off.")
_RUN = flags.DEFINE_enum("run", None, ["tf", "torch"], "Internal: one process's sides.")
_TORCH_SIDE = "PyTorch pipeline (HF export)"
_UNPACKED_SIDE = "SavedModel raw text, data.packing=False"
_IDS_SIDE = "SavedModel token ids (unpacked)"


def _latest(directory):
  versions = [p for p in directory.glob("*") if p.name.isdigit()]
  if not versions:
    raise SystemExit(f"no export in {directory}; run python -m tf_finetune.export first")
  return max(versions, key=lambda p: int(p.name))


def _interleaved_seconds(calls, inputs):
  """calls: {side: (call, its inputs list)}; each side's seconds per input, sides taking
  turns input by input (one untimed warm-up call each first)."""
  for call, side_inputs in calls.values():
    call(side_inputs[0])
  times = {side: [] for side in calls}
  for i in range(inputs):
    for side, (call, side_inputs) in calls.items():
      start = time.perf_counter()
      call(side_inputs[i])
      times[side].append(time.perf_counter() - start)
  return times


def _unpacked_saved_model(run, directory):
  """The run's checkpoint as serving_default with data.packing=False, saved and loaded."""
  config = run.config.copy_and_resolve_references()
  config.data.packing = False
  task = tasks.get_task(config, run.labels, run.encoder)
  report = serving.load_report(run.workdir, run.step)
  module = serving.ServingModule(run.model, task, report.get("calibration") if report else None,
                                 bool(config.data.text_pair_column))
  import tensorflow as tf
  tf.saved_model.save(module, directory, signatures=module.signatures())
  return tf.saved_model.load(directory).signatures["serving_default"]


def _texts(wd):
  config, labels = wd.load_config(), wd.load_labels()
  texts = experiment.load_data(config, labels)[0]["dev"].texts
  ones = [texts[i % len(texts)] for i in range(_REQUESTS.value)]
  return config, texts, ones, [texts[i:i + 32] for i in range(0, len(texts), 32)]


def _summary(single, batched, num_texts):
  return {side: {"p50_ms": np.percentile(single[side], 50) * 1000,
                 "p95_ms": np.percentile(single[side], 95) * 1000,
                 "examples_per_s": num_texts / sum(batched[side])} for side in single}


def run_tf(wd):
  import tensorflow as tf
  config, texts, ones, batches = _texts(wd)
  export = _latest(wd.export / wd.root.name)
  saved = tf.saved_model.load(str(export))
  by_text, by_ids = saved.signatures["serving_default"], saved.signatures["token_ids"]
  encoder = experiment.build_encoder(config)
  ids_one = [encoder.pad(encoder(tf.constant([t]))) for t in ones]
  ids_batches = [encoder.pad(encoder(tf.constant(b))) for b in batches]
  scratch = tempfile.TemporaryDirectory()
  unpacked = _unpacked_saved_model(experiment.load_run(wd.root, "best", merge_lora=True),
                                   scratch.name)
  text_call = lambda signature: lambda b: signature(text=tf.constant(b))["label"].numpy()
  ids_call = lambda f: by_ids(**f)["label"].numpy()
  sides = {
      f"SavedModel raw text (data.packing={config.data.packing})":
          (text_call(by_text), [[t] for t in ones], batches),
      _UNPACKED_SIDE: (text_call(unpacked), [[t] for t in ones], batches),
      _IDS_SIDE: (ids_call, ids_one, ids_batches)}
  single = _interleaved_seconds({k: (c, one) for k, (c, one, _) in sides.items()}, len(ones))
  batched = _interleaved_seconds({k: (c, many) for k, (c, _, many) in sides.items()},
                                 len(batches))
  return {"export": str(export), "sides": _summary(single, batched, len(texts)),
          "peak_rss_mb": benchlib.peak_rss_mb(), "onednn": distribute.onednn_kernels()[0]}


def run_torch(wd):
  import torch
  import transformers
  config, texts, ones, batches = _texts(wd)
  hf_dir = str(_latest(wd.export / f"{wd.root.name}_hf"))
  torch.set_grad_enabled(False)
  pipe = transformers.pipeline("text-classification", model=hf_dir, tokenizer=hf_dir,
                               device="cpu", truncation=True,
                               max_length=config.data.max_seq_length)
  call = lambda b: pipe(b, batch_size=32)
  single = _interleaved_seconds({_TORCH_SIDE: (call, [[t] for t in ones])}, len(ones))
  batched = _interleaved_seconds({_TORCH_SIDE: (call, batches)}, len(batches))
  return {"export": hf_dir, "sides": _summary(single, batched, len(texts)),
          "peak_rss_mb": benchlib.peak_rss_mb()}


def main(argv):
  wd = experiment.Workdir(_WORKDIR.value)
  if _RUN.value:
    benchlib.emit((run_tf if _RUN.value == "tf" else run_torch)(wd))
    return
  processes = ["tf"] + ([] if _NO_TORCH.value else ["torch"])
  args = [f"--workdir={_WORKDIR.value}", f"--requests={_REQUESTS.value}"]
  onednn = (distribute.tensorflow_onednn_default() if _ONEDNN.value == "tensorflow"
            else _ONEDNN.value == "on")
  env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0"}
  print(f"{wd.root}: dev texts, batch 1: {_REQUESTS.value} calls per side; {_ROUNDS.value} "
        f"rounds of {', '.join(processes)}, each in its own process; TensorFlow's oneDNN "
        f"kernels {'on' if onednn else 'off'} (--onednn={_ONEDNN.value})", flush=True)
  print(f"{'round':<6}{'side':<44}{'p50 ms':>9}{'p95 ms':>9}{'batch-32 ex/s':>15}"
        f"{'peak RSS MB':>13}", flush=True)
  rounds = []
  for round_number in range(1, _ROUNDS.value + 1):
    sides = {}
    for process in processes:
      result = benchlib.run_side(__file__, [f"--run={process}", *args], env=env)
      if result.get("onednn", onednn) != onednn:
        raise SystemExit(f"the TensorFlow process ran oneDNN {result['onednn']}, not {onednn}")
      for side, r in result["sides"].items():
        print(f"{round_number:<6}{side:<44}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}"
              f"{r['examples_per_s']:>15.1f}{result['peak_rss_mb']:>13.0f}", flush=True)
      sides.update(result["sides"])
    rounds.append(sides)
  for round_number, sides in enumerate(rounds, 1):
    served, ids, unpacked = next(iter(sides.values())), sides[_IDS_SIDE], sides[_UNPACKED_SIDE]
    line = (f"round {round_number}: raw text / token ids at batch 1 (p50) "
            f"{served['p50_ms'] / ids['p50_ms']:.2f}x; packing on / off: batch 1 (p50) "
            f"{served['p50_ms'] / unpacked['p50_ms']:.2f}x the latency, batch 32 "
            f"{served['examples_per_s'] / unpacked['examples_per_s']:.2f}x the examples/s")
    if _TORCH_SIDE in sides:
      torch_side = sides[_TORCH_SIDE]
      line += (f"; vs PyTorch: batch 1 (p50) {served['p50_ms'] / torch_side['p50_ms']:.2f}x "
               f"the latency, batch 32 "
               f"{served['examples_per_s'] / torch_side['examples_per_s']:.2f}x the examples/s")
    print(line)


if __name__ == "__main__":
  app.run(main)
