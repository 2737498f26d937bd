"""Evaluate a run's best (or any) checkpoint and write WORKDIR/eval/.

  python -m tf_finetune.evaluate --workdir=runs/bbc [--checkpoint=best|latest|PATH] \
      [--splits=dev,test]
"""
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint path.")
_SPLITS = flags.DEFINE_list("splits", [], "Splits to evaluate (default: train.eval_splits).")


def main(argv):
  del argv
  cli.import_tensorflow_quietly()
  from tf_finetune.evaluation import evaluator
  report = evaluator.evaluate_workdir(_WORKDIR.value, _CHECKPOINT.value, _SPLITS.value or None)
  evaluator.print_summary(report)


if __name__ == "__main__":
  cli.run(main)
