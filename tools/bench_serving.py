"""Serving latency and throughput: raw-text vs token-id signatures, and the PyTorch pipeline.

  python -m tf_finetune.export --workdir=runs/bbc                 # SavedModel
  python -m tf_finetune.export --workdir=runs/bbc --format=hf     # for the PyTorch side
  python tools/bench_serving.py --workdir=runs/bbc [--requests=200] [--no_torch]

Texts: the run's dev split. Batch 1: p50 and p95 latency over --requests calls, one text per
call. Batch 32: examples/s over the dev set. The token-id side is timed on ids prepared
beforehand (what a client that tokenizes itself sends); the raw-text side includes
tokenization in the graph. PyTorch: transformers' text-classification pipeline on the HF
export of the same checkpoint (tokenization included), torch.no_grad, CPU.
"""
import time

import numpy as np
from absl import app
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import experiment

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with exports.", required=True)
_REQUESTS = flags.DEFINE_integer("requests", 200, "Batch-1 calls per side.")
_NO_TORCH = flags.DEFINE_bool("no_torch", False, "Skip the PyTorch pipeline.")


def _latest(directory):
  versions = [p for p in directory.glob("*") if p.name.isdigit()]
  if not versions:
    raise SystemExit(f"no export in {directory}; run python -m tf_finetune.export first")
  return max(versions, key=lambda p: int(p.name))


def _latency(call, inputs):
  call(inputs[0])
  times = []
  for x in inputs:
    start = time.perf_counter()
    call(x)
    times.append(time.perf_counter() - start)
  return np.percentile(times, 50) * 1000, np.percentile(times, 95) * 1000


def _throughput(call, batches, n):
  call(batches[0])
  start = time.perf_counter()
  for b in batches:
    call(b)
  return n / (time.perf_counter() - start)


def main(argv):
  del argv
  import tensorflow as tf
  wd = experiment.Workdir(_WORKDIR.value)
  config, labels = wd.load_config(), wd.load_labels()
  splits, _ = experiment.load_data(config, labels)
  texts = splits["dev"].texts
  model_name = wd.root.name
  saved = tf.saved_model.load(str(_latest(wd.export / model_name)))
  by_text, by_ids = saved.signatures["serving_default"], saved.signatures["token_ids"]
  encoder = experiment.build_encoder(config)
  ones = [texts[i % len(texts)] for i in range(_REQUESTS.value)]
  batches = [texts[i:i + 32] for i in range(0, len(texts), 32)]
  ids_one = [encoder.pad(encoder(tf.constant([t]))) for t in ones]
  ids_batches = [encoder.pad(encoder(tf.constant(b))) for b in batches]
  rows = []
  p50, p95 = _latency(lambda t: by_text(text=tf.constant([t]))["label"].numpy(), ones)
  tput = _throughput(lambda b: by_text(text=tf.constant(b))["label"].numpy(), batches, len(texts))
  rows.append(("SavedModel raw text", p50, p95, tput))
  p50i, p95i = _latency(lambda f: by_ids(**f)["label"].numpy(), ids_one)
  tputi = _throughput(lambda f: by_ids(**f)["label"].numpy(), ids_batches, len(texts))
  rows.append(("SavedModel token ids", p50i, p95i, tputi))
  if not _NO_TORCH.value:
    import torch
    import transformers
    hf_dir = str(_latest(wd.export / f"{model_name}_hf"))
    torch.set_grad_enabled(False)
    pipe = transformers.pipeline("text-classification", model=hf_dir, tokenizer=hf_dir,
                                 device="cpu", truncation=True,
                                 max_length=config.data.max_seq_length)
    p50t, p95t = _latency(lambda t: pipe([t]), ones)
    tputt = _throughput(lambda b: pipe(b, batch_size=32), batches, len(texts))
    rows.append(("PyTorch pipeline (HF export)", p50t, p95t, tputt))
  print(f"{len(texts)} dev texts of {wd.root}; batch 1: {_REQUESTS.value} calls")
  print(f"{'side':<30}{'p50 ms':>9}{'p95 ms':>9}{'batch-32 ex/s':>15}")
  for name, a, b, c in rows:
    print(f"{name:<30}{a:>9.1f}{b:>9.1f}{c:>15.1f}")
  print(f"raw text / token ids at batch 1 (p50): {p50 / p50i:.2f}x")


if __name__ == "__main__":
  app.run(main)
