"""Export a run's checkpoint for serving.

  python -m tf_finetune.export --workdir=runs/bbc [--checkpoint=best|latest|PATH] \
      [--model_name=NAME]

Writes WORKDIR/export/<model_name>/<version>/, a SavedModel that TF Serving loads as it
is (version = previous + 1; nothing is overwritten). With --format=hf, writes
WORKDIR/export/<model_name>_hf/<version>/ for transformers (PyTorch); with --format=tflite,
WORKDIR/export/<model_name>_tflite/<version>/model.tflite; with --format=peft (a run with
peft.method other than none), only the weights that trained. A LoRA run exports merged:
no LoRA variables, the products added into the kernels. Prints the directory.
"""
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint path.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "Model name (default: the workdir's name).")
_FORMAT = flags.DEFINE_enum("format", "saved_model", ["saved_model", "hf", "tflite", "peft"],
                            "saved_model (TF Serving), hf (transformers, PyTorch), tflite "
                            "(dynamic-range int8, token-id inputs) or peft (trained weights "
                            "only).")


def main(argv):
  del argv
  cli.import_tensorflow_quietly()
  from tf_finetune.export import serving
  export = {"saved_model": serving.export_saved_model, "hf": serving.export_hf,
            "tflite": serving.export_tflite, "peft": serving.export_peft}[_FORMAT.value]
  print(export(_WORKDIR.value, _CHECKPOINT.value, _MODEL_NAME.value))


if __name__ == "__main__":
  cli.run(main)
