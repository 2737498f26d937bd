"""Evaluate a run's best (or any) checkpoint and write WORKDIR/eval/.

  python -m tf_finetune.evaluate --workdir=runs/bbc [--checkpoint=best|latest|PATH] \
      [--splits=dev,test] [--slice_column=COLUMN [--positive_label=LABEL]]
"""
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint path.")
_SPLITS = flags.DEFINE_list("splits", [], "Splits to evaluate (default: train.eval_splits).")
_SLICE_COLUMN = flags.DEFINE_string(
    "slice_column", "", "A column of the data files (a CoNLL `# column = value` sentence "
    "comment) whose values group the examples: metrics and disparities by group in "
    "eval/report.json (slices), report.txt and slices_<split>.png. Never fed to the model.")
_POSITIVE_LABEL = flags.DEFINE_string(
    "positive_label", "", "With --slice_column: the label of selection rate, TPR and FPR "
    "(default: the second of two labels; none for more).")


def main(argv):
  del argv
  cli.import_tensorflow_quietly()
  from tf_finetune.evaluation import evaluator
  report = evaluator.evaluate_workdir(_WORKDIR.value, _CHECKPOINT.value, _SPLITS.value or None,
                                      slice_column=_SLICE_COLUMN.value,
                                      positive_label=_POSITIVE_LABEL.value)
  evaluator.print_summary(report)


if __name__ == "__main__":
  cli.run(main)
