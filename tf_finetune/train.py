"""Fine-tune a checkpoint.

  python -m tf_finetune.train --config=configs/default.py --workdir=runs/bbc \
      [--config.train.steps=100 ...]

Running the same command again on the same workdir resumes. When training is done, the
best checkpoint (by train.best_metric on dev) is evaluated into WORKDIR/eval/.
"""
from absl import flags
from ml_collections import config_flags

import tf_finetune  # noqa: F401  (sets the Keras backend before keras is imported)
from tf_finetune import cli
from tf_finetune import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(config_lib.REPO_DIR / "configs" / "default.py"), "Config file.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Run directory (resumed if it exists).")


def main(argv):
  del argv
  config = config_lib.validate(_CONFIG.value)  # before TensorFlow is even imported
  from tf_finetune.evaluation import evaluator
  from tf_finetune.training import trainer
  trainer.Trainer(config, _WORKDIR.value).train()
  evaluator.print_summary(evaluator.evaluate_workdir(_WORKDIR.value))


if __name__ == "__main__":
  cli.run(main)
