"""TFLite export: size and dev accuracy beside the SavedModel of the same checkpoint.

  python tools/bench_tflite.py --workdir=runs/bbc [--checkpoint=best]

Exports --format=tflite (dynamic-range int8) and a float32 TFLite model, runs the TFLite
interpreter on every dev example (one at a time) and the SavedModel's token-id signature on
the same ids, and prints sizes, dev accuracies, argmax agreement and the largest logit gap.
"""
import pathlib
import time

import numpy as np
from absl import app
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import experiment
from tf_finetune.export import serving

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a path.")


def _size_mb(path):
  path = pathlib.Path(path)
  files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
  return sum(p.stat().st_size for p in files) / 1e6


def main(argv):
  del argv
  import tensorflow as tf
  saved_dir = serving.export_saved_model(_WORKDIR.value, _CHECKPOINT.value)
  int8_dir = serving.export_tflite(_WORKDIR.value, _CHECKPOINT.value)
  float_dir = serving.export_tflite(_WORKDIR.value, _CHECKPOINT.value, quantize=False)
  wd = experiment.Workdir(_WORKDIR.value)
  config, labels = wd.load_config(), wd.load_labels()
  splits, _ = experiment.load_data(config, labels)
  dev = splits["dev"]
  gold = np.array(labels.encode(dev))
  encoder = experiment.build_encoder(config)
  saved = tf.saved_model.load(str(saved_dir)).signatures["token_ids"]
  features = [encoder.pad(encoder(tf.constant([t]), None if dev.text_pairs is None
                                  else tf.constant([dev.text_pairs[i]])))
              for i, t in enumerate(dev.texts)]
  reference = np.concatenate([saved(**f)["logits"].numpy() for f in features])
  print(f"{len(dev)} dev examples of {wd.root}")
  print(f"{'model':<28}{'size MB':>9}{'dev acc':>9}{'agree':>8}{'max |dlogit|':>14}{'ms/ex':>8}")
  print(f"{'SavedModel (token ids)':<28}{_size_mb(saved_dir / 'variables'):>9.1f}"
        f"{(reference.argmax(1) == gold).mean():>9.4f}{'':>8}{'':>14}{'':>8}")
  for name, directory in (("TFLite float32", float_dir), ("TFLite dynamic-range int8", int8_dir)):
    runner = tf.lite.Interpreter(model_path=str(directory / "model.tflite")).get_signature_runner(
        "serving_default")
    start = time.perf_counter()
    logits = np.concatenate([runner(**{k: v.numpy() for k, v in f.items()})["output_0"]
                             for f in features])
    ms = (time.perf_counter() - start) / len(dev) * 1000
    print(f"{name:<28}{_size_mb(directory / 'model.tflite'):>9.1f}"
          f"{(logits.argmax(1) == gold).mean():>9.4f}"
          f"{(logits.argmax(1) == reference.argmax(1)).mean():>8.3f}"
          f"{np.abs(logits - reference).max():>14.2e}{ms:>8.1f}")


if __name__ == "__main__":
  app.run(main)
