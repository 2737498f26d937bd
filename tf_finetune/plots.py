"""Plots as PNG bytes: the confusion matrix that eval/ writes to a file and training writes to
TensorBoard at each evaluation."""
import io

import numpy as np


def confusion_matrix_png(matrix, label_names, title):
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  from sklearn import metrics as sk_metrics
  matrix = np.asarray(matrix)
  size = max(4.0, 0.6 * len(label_names) + 2)
  figure, axes = plt.subplots(figsize=(size, size))
  sk_metrics.ConfusionMatrixDisplay(matrix, display_labels=label_names).plot(
      ax=axes, colorbar=False, xticks_rotation=45)
  axes.set_title(title)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  plt.close(figure)
  return buffer.getvalue()


def metrics_by_group_png(groups, title):
  """Grouped bars: one group of bars per metric, one bar per group (count in the legend).
  groups: {group: {"count": n, metric: value}}; NaN values are left out."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  names = [n for n in next(iter(groups.values())) if n != "count"]
  figure, axes = plt.subplots(figsize=(max(6.0, 1.0 + len(names) * (0.6 + 0.3 * len(groups))), 4))
  width = 0.8 / len(groups)
  for k, (group, values) in enumerate(groups.items()):
    heights = [values[n] if values[n] is not None else np.nan for n in names]
    axes.bar(np.arange(len(names)) + k * width - 0.4 + width / 2, heights, width,
             label=f"{group} (n={values['count']})")
  axes.set_xticks(np.arange(len(names)), names, rotation=20)
  axes.set_title(title)
  axes.legend(fontsize="small")
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  plt.close(figure)
  return buffer.getvalue()
