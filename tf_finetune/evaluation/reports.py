"""The files of WORKDIR/eval/: report.json, report.txt, predictions.tsv, confusion matrix PNGs,
metrics-by-group PNGs.

The metrics in them come from the tasks (tasks/metrics.py)."""
import json
import math

from tf_finetune import atomic
from tf_finetune import plots
from tf_finetune import privacy
from tf_finetune.data import sources
from tf_finetune.tasks.metrics import metrics_line


def write_text_report(path, report):
  """eval/report.txt: per split, the metrics and sklearn's familiar per-label table."""
  lines = [f"{report['task']}: checkpoint step {report['step']} (best by dev "
           f"{report['best_metric']})", ""]
  if report.get("calibration"):
    lines += [f"calibrated on dev: {json.dumps(report['calibration'])}", ""]
  if report.get("privacy"):
    p = report["privacy"]
    lines += [f"differential privacy: epsilon {p['epsilon']:.3f} at delta {p['delta']:.3g} "
              f"after {p['steps']} steps of DP-SGD (noise multiplier "
              f"{p['noise_multiplier']:.4f}, {privacy.clip_text(p)})", ""]
  for split, r in report["splits"].items():
    lines.append(f"== {split}: {r['num_examples']} examples, {metrics_line(r)}")
    if "per_class" in r:
      lines.append(f"{'label':>24} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
      for name, c in r["per_class"].items():
        lines.append(f"{name:>24} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1']:9.4f} "
                     f"{c['support']:8d}")
    lines.append("")
  if report.get("slices"):
    from tf_finetune.evaluation import fairness
    lines += fairness.text_lines(report["slices"])
  atomic.write_text(path, "\n".join(lines))


def plot_confusion_matrix(path, matrix, label_names, title):
  atomic.write_bytes(path, plots.confusion_matrix_png(matrix, label_names, title))


def plot_metrics_by_group(path, groups, title):
  atomic.write_bytes(path, plots.metrics_by_group_png(groups, title))


def write_predictions(path, rows):
  """eval/predictions.tsv: split, origin (file:line), gold, predicted, probability, text."""
  header = ["split", "origin", "label", "predicted", "probability", "text"]
  sources.write_tsv(path, header, rows)


def write_json(path, data):
  """Strict JSON: a metric that is NaN or infinite (a diverged model) is written as null."""
  atomic.write_text(path, json.dumps(_finite(data), indent=1, ensure_ascii=False,
                                     allow_nan=False) + "\n")


def _finite(value):
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value
