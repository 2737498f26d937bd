"""Fine-tune a checkpoint.

  python -m tf_finetune.train --config=configs/default.py --workdir=runs/bbc \
      [--config.train.steps=100 ...]

Running the same command again on the same workdir resumes. When training is done, the
best checkpoint (by train.best_metric on dev) is evaluated into WORKDIR/eval/. Under
distribution.strategy=multi_worker every worker runs this same command with its own
TF_CONFIG; only the chief writes the run directory and the report.
"""
from absl import flags
from absl import logging
from ml_collections import config_flags

import tf_finetune  # noqa: F401  (sets the Keras backend before keras is imported)
from tf_finetune import cli
from tf_finetune import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(config_lib.REPO_DIR / "configs" / "default.py"), "Config file.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Run directory (resumed if it exists).")


def train_and_evaluate(config, workdir, until_step=None):
  """Trains; then the chief evaluates the best checkpoint and prints the summary."""
  from tf_finetune.evaluation import evaluator
  from tf_finetune.training import trainer as trainer_lib
  trainer = trainer_lib.Trainer(config, workdir)
  trainer.train(until_step)
  if not trainer.is_chief:
    logging.info("Training done on this worker; the chief evaluates and writes %s/eval", workdir)
  elif until_step is None or trainer.step >= trainer.total_steps:
    run, known_outputs = trainer.best_run()
    evaluator.print_summary(evaluator.evaluate_workdir(
        workdir, run=run, known_outputs=known_outputs, data=trainer.splits))
  return trainer


def main(argv):
  del argv
  config = config_lib.validate(_CONFIG.value)  # before TensorFlow is even imported
  cli.import_tensorflow_quietly()
  train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
