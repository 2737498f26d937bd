"""Evaluate a run's checkpoint on its splits and write WORKDIR/eval/."""
from absl import logging

from tf_finetune import experiment
from tf_finetune.data import pipeline
from tf_finetune.errors import DataError
from tf_finetune.evaluation import reports


def evaluate_workdir(workdir, checkpoint="best", splits=None):
  """Writes report.json, report.txt, confusion_matrix*.png, predictions.tsv; returns the report."""
  wd = experiment.Workdir(workdir)
  config = wd.load_config()
  labels = wd.load_labels()
  data, _ = experiment.load_data(config, labels)
  encoder = experiment.build_encoder(config)
  task, model = experiment.build_model(config, labels, pretrained=False)
  path, step = experiment.restore_model(wd, model, checkpoint)
  wanted = splits or [s for s in config.train.eval_splits.split(",") if s in data]
  missing = [s for s in wanted if s not in data]
  if missing:
    raise DataError(f"{wd.root}: no split {', '.join(missing)} in this run's data "
                    f"(it has {', '.join(data)})")
  wd.eval.mkdir(parents=True, exist_ok=True)
  report = {"task": config.task.name, "checkpoint": path, "step": step,
            "best_metric": config.train.best_metric, "labels": labels.labels, "splits": {}}
  rows = []
  for name in wanted:
    split = data[name]
    label_values = task.label_values(split)
    dataset = pipeline.eval_dataset(split, label_values, encoder,
                                    batch_size=config.train.eval_batch_size)
    logits = experiment.predict_logits(model, dataset)
    report["splits"][name] = task.report(split, label_values, logits)
    outputs = task.validation_step_outputs(logits)
    for i in range(len(split)):
      predicted = int(outputs["label_id"][i])
      rows.append([name, split.origins[i], split.labels[i], labels.labels[predicted],
                   f"{outputs['probabilities'][i, predicted]:.6f}", split.texts[i]])
    reports.plot_confusion_matrix(
        wd.eval / f"confusion_matrix_{name}.png", report["splits"][name]["confusion_matrix"],
        labels.labels, f"{name} (step {step})")
    logging.info("%s: accuracy %.4f, macro F1 %.4f on %d examples", name,
                 report["splits"][name]["accuracy"], report["splits"][name]["macro_f1"], len(split))
  # confusion_matrix.png is the held-out split's: test when there is one, else dev.
  main_split = "test" if "test" in report["splits"] else wanted[0]
  reports.plot_confusion_matrix(wd.eval / "confusion_matrix.png",
                                report["splits"][main_split]["confusion_matrix"], labels.labels,
                                f"{main_split} (step {step})")
  reports.write_predictions(wd.eval / "predictions.tsv", rows)
  reports.write_json(wd.eval / "report.json", report)
  reports.write_text_report(wd.eval / "report.txt", report)
  return report


def print_summary(report):
  for name, r in report["splits"].items():
    print(f"{name} accuracy: {r['accuracy']:.4f}  macro F1: {r['macro_f1']:.4f}  "
          f"({r['num_examples']} examples, checkpoint step {report['step']})")
