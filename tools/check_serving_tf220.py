"""Loads an export in a separate environment with tensorflow 2.20 and tensorflow-text 2.20
(the op set the newest readable TF Serving source pins) and checks it serves the same
predictions as this environment.

  python tools/check_serving_tf220.py --model=runs/bbc/export/bbc/1 [--venv=/tmp/tf220]

Creates the virtual environment on first use (pip install tensorflow==2.20.0
tensorflow-text==2.20.0, about 700 MB), then, in it, loads the SavedModel importing only
tensorflow and tensorflow_text, replays the warmup requests, classifies --texts and prints
the labels and probabilities beside this environment's. Exits 1 on any difference above 1e-5.
"""
import json
import pathlib
import subprocess
import sys
import venv

from absl import app
from absl import flags

_MODEL = flags.DEFINE_string("model", None, "Exported SavedModel version directory.", required=True)
_VENV = flags.DEFINE_string("venv", "/tmp/tf_finetune_tf220", "Virtual environment to (re)use.")
_TEXTS = flags.DEFINE_list("texts", [
    "The government announced new taxes on fuel today.",
    "The striker scored twice in the second half.",
    "A new smartphone with a foldable screen goes on sale.",
    "Café owners in Zürich say naïve tourists pay £15.8m a year 😀"], "Texts to classify.")

CHILD = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
from tensorflow.core.protobuf import config_pb2  # noqa: F401
path, texts = sys.argv[1], json.loads(sys.argv[2])
model = tf.saved_model.load(path)
serve = model.signatures["serving_default"]
warmup = 0
for record in tf.data.TFRecordDataset(path + "/assets.extra/tf_serving_warmup_requests"):
  warmup += 1  # the records are PredictionLog protos; TF Serving replays them at load
out = serve(text=tf.constant(texts))
print(json.dumps({"tensorflow": tf.__version__, "tensorflow_text": tensorflow_text.__version__,
                  "signatures": sorted(model.signatures), "warmup_records": warmup,
                  "label": [x.decode() for x in out["label"].numpy()],
                  "probabilities": out["probabilities"].numpy().tolist()}))
"""


def ensure_venv(path):
  python = pathlib.Path(path) / "bin" / "python"
  if not python.exists():
    print(f"creating {path} with tensorflow 2.20 and tensorflow-text 2.20 ...", flush=True)
    venv.create(path, with_pip=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "tensorflow==2.20.0",
                    "tensorflow-text==2.20.0"], check=True)
  return python


def serve_with(python, model, texts):
  result = subprocess.run([str(python), "-c", CHILD, model, json.dumps(texts)],
                          capture_output=True, text=True, cwd="/")
  if result.returncode:
    print(result.stderr[-3000:], file=sys.stderr)
    raise SystemExit(f"{python}: loading or serving failed")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  model = str(pathlib.Path(_MODEL.value).resolve())
  here = serve_with(sys.executable, model, _TEXTS.value)
  there = serve_with(ensure_venv(_VENV.value), model, _TEXTS.value)
  worst = 0.0
  for side in (here, there):
    print(f"tensorflow {side['tensorflow']}, tensorflow-text {side['tensorflow_text']}: "
          f"signatures {side['signatures']}, {side['warmup_records']} warmup records")
  for i, text in enumerate(_TEXTS.value):
    diff = max(abs(a - b) for a, b in zip(here["probabilities"][i], there["probabilities"][i]))
    worst = max(worst, diff)
    print(f"{text[:50]:<52} {here['label'][i]:>14} {max(here['probabilities'][i]):.6f} | "
          f"{there['label'][i]:>14} {max(there['probabilities'][i]):.6f} | max diff {diff:.2e}")
  same = here["label"] == there["label"] and worst <= 1e-5
  print("same predictions under both versions" if same else "PREDICTIONS DIFFER")
  raise SystemExit(0 if same else 1)


if __name__ == "__main__":
  app.run(main)
