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
