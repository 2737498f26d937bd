"""Evaluate a run's best (or any) checkpoint and write WORKDIR/eval/.

  python -m tf_finetune.evaluate --workdir=runs/bbc [--checkpoint=best|latest|PATH] \
      [--splits=dev,test] [--slice_column=COLUMN [--positive_label=LABEL]]
  python -m tf_finetune.evaluate --workdir=runs/bbc --file=heldout.tsv [--file_source=tsv] \
      [--file_tag_scheme=iob1] [--output=DIR]
"""
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import cli
from tf_finetune import config as config_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint path.")
_SPLITS = flags.DEFINE_list("splits", [], "Splits to evaluate (default: train.eval_splits).")
_SLICE_COLUMN = flags.DEFINE_string(
    "slice_column", "", "A column of the data files (a CoNLL `# column = value` sentence "
    "comment) whose values group the examples: metrics and disparities by group in "
    "eval/report.json (slices), report.txt and slices_<split>.png. Never fed to the model.")
_FILE = flags.DEFINE_string(
    "file", "", "A labelled file the run did not read (a held-out set): evaluated instead of "
    "the run's splits, read as the run's data files are; the files go to --output.")
_FILE_SOURCE = flags.DEFINE_enum(
    "file_source", "", ["", "tsv", "csv", "jsonl", "label_first", "conll"],
    "With --file: its format (default: the run's data.source; needed for runs on bbc_news or "
    "TFDS). Its columns are the run's (data.text_column, data.label_column, ...).")
_FILE_TAG_SCHEME = flags.DEFINE_enum(
    "file_tag_scheme", "", ["", *config_lib.TAG_SCHEMES],
    "With a CoNLL --file: its tag scheme (default: the run's data.tag_scheme); iob1 and bioes "
    "are converted to IOB2, the run's tags.")
_OUTPUT = flags.DEFINE_string(
    "output", "", "With --file: where report.json, report.txt and predictions.tsv go "
    "(default: WORKDIR/eval/<file name>/).")
_POSITIVE_LABEL = flags.DEFINE_string(
    "positive_label", "", "With --slice_column: the label of selection rate, TPR and FPR "
    "(default: the second of two labels; none for more).")


def main(argv):
  del argv
  cli.import_tensorflow_quietly()
  from tf_finetune.evaluation import evaluator
  if not _FILE.value and (_FILE_SOURCE.value or _FILE_TAG_SCHEME.value or _OUTPUT.value):
    raise SystemExit("error: --file_source, --file_tag_scheme and --output go with --file")
  if _POSITIVE_LABEL.value and not _SLICE_COLUMN.value:
    raise SystemExit("error: --positive_label goes with --slice_column")
  if _FILE.value and _SPLITS.value:
    raise SystemExit("error: --file evaluates that file instead of the run's splits; drop "
                     "--splits")
  if _FILE.value:
    report = evaluator.evaluate_file(_WORKDIR.value, _FILE.value, _CHECKPOINT.value,
                                     source=_FILE_SOURCE.value,
                                     tag_scheme=_FILE_TAG_SCHEME.value, output=_OUTPUT.value,
                                     slice_column=_SLICE_COLUMN.value,
                                     positive_label=_POSITIVE_LABEL.value)
  else:
    report = evaluator.evaluate_workdir(_WORKDIR.value, _CHECKPOINT.value,
                                        _SPLITS.value or None, slice_column=_SLICE_COLUMN.value,
                                        positive_label=_POSITIVE_LABEL.value)
  evaluator.print_summary(report)


if __name__ == "__main__":
  cli.run(main)
