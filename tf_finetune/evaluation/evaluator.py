"""Evaluate a run's checkpoint on its splits and write WORKDIR/eval/, or on another
labelled file and write WORKDIR/eval/<file name>/."""
import copy
import pathlib

from absl import logging

from tf_finetune import atomic
from tf_finetune import config as config_lib
from tf_finetune import experiment
from tf_finetune import peft
from tf_finetune import privacy
from tf_finetune.data import sources
from tf_finetune.errors import ConfigError, DataError, WorkdirError
from tf_finetune.evaluation import reports


FILE_SOURCES = ("tsv", "csv", "jsonl", "label_first", "conll")


def evaluate_file(workdir, file, checkpoint="best", *, source="", tag_scheme="", output="",
                  slice_column="", positive_label=""):
  """Evaluates the checkpoint on one labelled file the run did not read (a held-out set),
  read as the run's data files are: its data.source, columns, delimiter, encoding, screening
  and PII masking (`source` names the format for runs that read bbc_news or TFDS). Writes
  report.json (naming the file), report.txt, predictions.tsv and the plots to `output`
  (default WORKDIR/eval/<file name>/), never over the run's own eval/ files, nor over the
  report of another file. The split is named by the file's name. tag_scheme: a CoNLL file's
  (default: the run's data.tag_scheme). The privacy a DP-SGD run spent is in its own
  eval/report.json."""
  run = experiment.load_run(workdir, checkpoint)
  config, wd = run.config, run.workdir
  data_config = copy.deepcopy(config.data)
  if (source or data_config.source) not in FILE_SOURCES:
    raise ConfigError(
        f"--file_source: {wd.root} read data.source={data_config.source!r}, so say how "
        f"{file} is written: one of {', '.join(FILE_SOURCES)} (read with the run's columns: "
        f"data.text_column={data_config.text_column!r}, "
        f"data.label_column={data_config.label_column!r})")
  if source and source != data_config.source:
    data_config.delimiter = ""  # the format's own (tab, comma), not the run's
  data_config.source = source or data_config.source
  if tag_scheme and data_config.source != "conll":
    raise ConfigError(f"--file_tag_scheme: {file} is read as data.source="
                      f"{data_config.source!r}, which has no tags (it goes with conll)")
  data_config.tag_scheme = tag_scheme or data_config.tag_scheme
  data_config.dir = ""
  path = pathlib.Path(file).expanduser().absolute()
  out = pathlib.Path(output).expanduser() if output else wd.eval / path.name
  earlier = out / "report.json"
  if earlier.is_file():
    made_for = atomic.read_json(earlier, dict, "an evaluation report").get("file")
    if made_for != str(path):
      made_for = made_for or "the run's own splits"
      raise WorkdirError(f"{earlier}: holds the report of {made_for}, not of {path}; choose "
                         "another --output")
  name = path.name
  try:
    data = {name: experiment.load_labelled_file(
        config, data_config, str(path), name, keep_columns=(slice_column,) if slice_column else ())}
  except sources.HeaderDelimiterError as e:  # its hint names data.delimiter, not a flag here
    source = {d: s for s, d in sources.DELIMITERS.items()}.get(e.delimiter)
    raise DataError(e.with_way_out(
        f"give --file_source={source}" if source else
        "write it with tabs (--file_source=tsv) or commas (--file_source=csv), the "
        "delimiters evaluate --file reads besides the run's own")) from None
  except sources.TagSchemeError as e:  # likewise data.tag_scheme
    raise DataError(e.with_way_out(f"Give --file_tag_scheme={e.scheme}")) from None
  if run.task.needs_calibration:  # multi-label thresholds are tuned on the run's dev
    data["dev"] = experiment.load_data(config, run.labels, keep_in={"dev"})[0]["dev"]
  return evaluate_workdir(wd.root, checkpoint, [name], slice_column=slice_column,
                          positive_label=positive_label, run=run, data=data, eval_dir=out,
                          about={"file": str(path), "data_source": data_config.source})


def evaluate_workdir(workdir, checkpoint="best", splits=None, *, slice_column="",
                     positive_label="", run=None, known_outputs=None, data=None,
                     eval_dir=None, about=None):
  """Writes report.json, report.txt, predictions.tsv (and confusion_matrix*.png for
  classification); returns the report.

  What a task calibrates after training (multi-label thresholds) is fitted on dev and
  applied to every split; report.json keeps it under "calibration", and export bakes it in.

  slice_column: a column of the data files (never a model input) whose values split each
  evaluated split into groups; report.json gets "slices" (fairness.slice_report per split),
  report.txt a table, and eval/slices_<split>.png a bar chart. positive_label: the label of
  selection rate / TPR / FPR (default: the second of two labels).
  run: the run's model already at `checkpoint` (Trainer.best_run), not built again;
  known_outputs: {split: (label values, logits)} that model has already computed.
  data: the run's splits as experiment.load_data gave them to the trainer, not read again
  (ignored with slice_column when the splits to report do not hold that column).
  eval_dir: where the files go (default WORKDIR/eval); about: fields added to report.json.
  """
  run = run or experiment.load_run(workdir, checkpoint)
  wd, config, labels, task, model = run.workdir, run.config, run.labels, run.task, run.model
  path, step = run.checkpoint, run.step
  if slice_column:
    from tf_finetune.evaluation import fairness
    fairness.check_positive_label(config.task.name, labels.labels, positive_label)
    positive_label = positive_label or fairness.default_positive_label(config.task.name,
                                                                       labels.labels)
  if data is None or (slice_column and not all(
      slice_column in data[name].columns for name in (splits or data) if name in data)):
    data, _ = experiment.load_data(
        config, labels, keep_columns=(slice_column,) if slice_column else (),
        keep_in=set(splits or config.train.eval_splits.split(",")))
  wanted = splits or [s for s in config.train.eval_splits.split(",") if s in data]
  missing = [s for s in wanted if s not in data]
  if missing:
    raise DataError(f"{wd.root}: no split {', '.join(missing)} in this run's data "
                    f"(it has {', '.join(data)})")

  def logits_of(name):
    return experiment.evaluate_split(task, model, data[name],
                                     batch_size=config.train.eval_batch_size)

  eval_dir = atomic.writable_directory(eval_dir or wd.eval)
  known_outputs = known_outputs or {}
  outputs = {name: known_outputs[name] if name in known_outputs else logits_of(name)
             for name in wanted}
  calibration = None
  if task.needs_calibration:  # fitted on dev even when dev is not among the splits reported
    calibration = task.calibrate(*(outputs["dev"] if "dev" in outputs else logits_of("dev")))

  trainable, total = peft.parameter_counts(model)
  report = {**(about or {}), "task": config.task.name, "checkpoint": path, "step": step,
            "best_metric": task.best_metric, "labels": labels.labels,
            "parameters": {"peft": config.peft.method, "trainable": trainable, "total": total},
            "splits": {}}
  if calibration is not None:
    report["calibration"] = calibration
  if config.privacy.method == "dp_sgd" and "train" in data:  # what this checkpoint's steps spent
    report["privacy"] = privacy.plan(config, len(data["train"])).report(step)
  rows = []
  if slice_column:
    report["slices"] = {"column": slice_column, "positive_label": positive_label, "splits": {}}
  for name in wanted:
    split = data[name]
    label_values, logits = outputs[name]
    report["splits"][name] = task.report(label_values, logits, calibration)
    fields = list(task.prediction_fields(label_values, logits, calibration))
    for i, (gold, predicted, score) in enumerate(fields):
      rows.append([name, split.origins[i], gold, predicted, score, split.texts[i]])
    if slice_column:
      table = fairness.slice_report(config.task.name, fields, split.columns[slice_column],
                                    labels.labels, positive_label=positive_label,
                                    separator=config.data.multilabel_separator)
      report["slices"]["splits"][name] = table
      reports.plot_metrics_by_group(eval_dir / f"slices_{name}.png", table["groups"],
                                    f"{name} by {slice_column} (step {step})")
    if "confusion_matrix" in report["splits"][name]:
      reports.plot_confusion_matrix(
          eval_dir / f"confusion_matrix_{name}.png", report["splits"][name]["confusion_matrix"],
          labels.labels, f"{name} (step {step})")
    logging.info("%s: %s on %d examples", name, reports.metrics_line(report["splits"][name]),
                 len(split))
  # confusion_matrix.png is the held-out split's: test when there is one, else dev.
  main_split = "test" if "test" in report["splits"] else wanted[0]
  if "confusion_matrix" in report["splits"][main_split]:
    reports.plot_confusion_matrix(eval_dir / "confusion_matrix.png",
                                  report["splits"][main_split]["confusion_matrix"],
                                  labels.labels, f"{main_split} (step {step})")
  reports.write_predictions(eval_dir / "predictions.tsv", rows)
  reports.write_json(eval_dir / "report.json", report)
  reports.write_text_report(eval_dir / "report.txt", report)
  return report


def print_summary(report):
  metrics = [m for m in config_lib.TASK_METRICS[report["task"]] if m != "loss"]
  for name, r in report["splits"].items():
    print(f"{name} " + "  ".join(f"{m}: {r[m]:.4f}" for m in metrics) +
          f"  ({r['num_examples']} examples, checkpoint step {report['step']})")
  slices = report.get("slices")
  for name, table in (slices["splits"].items() if slices else ()):
    metric = next(iter(table["overall"]))
    print(f"{name} by {slices['column']}: " + ", ".join(
        f"{group} {values[metric]:.4f} (n={values['count']})"
        for group, values in table["groups"].items()) +
        f"; {metric} difference {table['difference'][metric]:.4f} (eval/report.txt has all)")
