"""Export a run's checkpoint for serving.

  python -m tf_finetune.export --workdir=runs/bbc [--checkpoint=best|latest|PATH] \
      [--model_name=NAME]

Writes WORKDIR/export/<model_name>/<version>/, a SavedModel that TF Serving loads as it
is (version = previous + 1; nothing is overwritten). With --format=hf, writes
WORKDIR/export/<model_name>_hf/<version>/ for transformers (PyTorch). Prints the directory.
"""
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint path.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "Model name (default: the workdir's name).")
_FORMAT = flags.DEFINE_enum("format", "saved_model", ["saved_model", "hf"],
                            "saved_model (TF Serving) or hf (transformers, PyTorch).")


def main(argv):
  del argv
  from tf_finetune.export import serving
  export = serving.export_hf if _FORMAT.value == "hf" else serving.export_saved_model
  print(export(_WORKDIR.value, _CHECKPOINT.value, _MODEL_NAME.value))


if __name__ == "__main__":
  cli.run(main)
