"""Metrics reports (scikit-learn) and the files of WORKDIR/eval/."""
import json
import pathlib

import numpy as np
from sklearn import metrics as sk_metrics

from tf_finetune import atomic


def classification_report(label_ids, predicted_ids, label_names, loss=None):
  """accuracy, macro F1 and per-class precision / recall / F1 / support."""
  label_range = list(range(len(label_names)))
  precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
      label_ids, predicted_ids, labels=label_range, zero_division=0)
  report = {
      "num_examples": int(len(label_ids)),
      "accuracy": float(sk_metrics.accuracy_score(label_ids, predicted_ids)),
      "macro_f1": float(sk_metrics.f1_score(label_ids, predicted_ids, labels=label_range,
                                            average="macro", zero_division=0)),
      "per_class": {
          name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
          for name, p, r, f, s in zip(label_names, precision, recall, f1, support)},
      "confusion_matrix": sk_metrics.confusion_matrix(
          label_ids, predicted_ids, labels=label_range).tolist(),
  }
  if loss is not None:
    report["loss"] = loss
  return report


def write_text_report(path, report):
  """eval/report.txt: per split, sklearn's familiar table."""
  lines = [f"checkpoint step {report['step']} (best by dev {report['best_metric']})", ""]
  for split, r in report["splits"].items():
    lines.append(f"== {split}: {r['num_examples']} examples, accuracy {r['accuracy']:.4f}, "
                 f"macro F1 {r['macro_f1']:.4f}, loss {r.get('loss', float('nan')):.4f}")
    lines.append(f"{'label':>24} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for name, c in r["per_class"].items():
      lines.append(f"{name:>24} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1']:9.4f} "
                   f"{c['support']:8d}")
    lines.append("")
  pathlib.Path(path).write_text("\n".join(lines))


def plot_confusion_matrix(path, matrix, label_names, title):
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  matrix = np.asarray(matrix)
  size = max(4.0, 0.6 * len(label_names) + 2)
  figure, axes = plt.subplots(figsize=(size, size))
  sk_metrics.ConfusionMatrixDisplay(matrix, display_labels=label_names).plot(
      ax=axes, colorbar=False, xticks_rotation=45)
  axes.set_title(title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def _tsv_field(value):
  r"""One line per example: backslash, tab and line breaks are written as \\, \t, \n, \r."""
  return (str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
          .replace("\r", "\\r"))


def write_predictions(path, rows):
  """eval/predictions.tsv: split, origin (file:line), gold, predicted, probability, text."""
  header = ["split", "origin", "label", "predicted", "probability", "text"]
  with open(path, "w", encoding="utf-8") as f:
    for row in [header] + list(rows):
      f.write("\t".join(_tsv_field(v) for v in row) + "\n")


def write_json(path, data):
  atomic.write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
