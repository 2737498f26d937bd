"""Metrics by group for `evaluate --slice_column`: fairlearn's MetricFrame over the same
predictions that eval/predictions.tsv holds, so every figure can be recomputed from that file.

What is measured depends on the task:
  classification  accuracy, macro F1; for the positive label: selection rate, TPR, FPR
  multilabel      micro F1, macro F1, subset accuracy; for a positive label: the same three
  regression      MAE, MSE, mean prediction, mean gold score
  tagging         entity F1, precision, recall (seqeval strict IOB2), word accuracy
Disparities are fairlearn's between-groups difference (largest minus smallest) and ratio
(smallest over largest) of each metric.
"""
import numpy as np
from fairlearn import metrics as fair_metrics
from sklearn import metrics as sk_metrics

from tf_finetune import config as config_lib
from tf_finetune.errors import ConfigError
from tf_finetune.tasks import metrics as task_metrics

EMPTY_GROUP = "(empty)"
SMALL_GROUP = 30  # groups with fewer examples are flagged: their metrics are noisy


def default_positive_label(task_name, labels):
  """The label whose selection rate, TPR and FPR are reported when none is given: the second
  of two labels ("1" of "0"/"1", "positive" of "negative"/"positive"), else none."""
  return labels[1] if task_name in config_lib.SINGLE_LABEL and len(labels) == 2 else ""


def _binary_metrics(gold_positive, predicted_positive):
  """Selection rate, TPR and FPR of the positive label; a rate whose denominator is empty
  in a group (no gold positives for TPR, no gold negatives for FPR) is NaN, not 0."""
  def rate(numerator_of, denominator):
    return lambda i: (float(numerator_of(i)) if denominator[i].any() else float("nan"))
  return {
      "selection_rate": lambda i: fair_metrics.selection_rate(gold_positive[i],
                                                              predicted_positive[i]),
      "true_positive_rate": rate(lambda i: fair_metrics.true_positive_rate(
          gold_positive[i], predicted_positive[i]), gold_positive),
      "false_positive_rate": rate(lambda i: fair_metrics.false_positive_rate(
          gold_positive[i], predicted_positive[i]), ~gold_positive),
  }


def _metric_functions(task_name, fields, labels, positive_label, separator):
  """{name: f(indices) -> float} over the examples' (gold, predicted, score) fields."""
  gold = [f[0] for f in fields]
  predicted = [f[1] for f in fields]
  if task_name in config_lib.SINGLE_LABEL:
    gold, predicted = np.asarray(gold, object), np.asarray(predicted, object)
    functions = {
        "accuracy": lambda i: sk_metrics.accuracy_score(gold[i], predicted[i]),
        "macro_f1": lambda i: sk_metrics.f1_score(gold[i], predicted[i], average="macro",
                                                  zero_division=0)}
    if positive_label:
      functions.update(_binary_metrics(gold == positive_label, predicted == positive_label))
    return functions
  if task_name == "multilabel":
    def matrix(joined):
      rows = [set(s.split(separator)) if s else set() for s in joined]
      return np.array([[name in row for name in labels] for row in rows], bool)
    gold, predicted = matrix(gold), matrix(predicted)
    functions = {
        "micro_f1": lambda i: sk_metrics.f1_score(gold[i], predicted[i], average="micro",
                                                  zero_division=0),
        "macro_f1": lambda i: sk_metrics.f1_score(gold[i], predicted[i], average="macro",
                                                  zero_division=0),
        "subset_accuracy": lambda i: sk_metrics.accuracy_score(gold[i], predicted[i])}
    if positive_label:
      column = labels.index(positive_label)
      functions.update(_binary_metrics(gold[:, column], predicted[:, column]))
    return functions
  if task_name == "regression":
    gold, predicted = np.asarray(gold, float), np.asarray(predicted, float)
    return {"mae": lambda i: sk_metrics.mean_absolute_error(gold[i], predicted[i]),
            "mse": lambda i: sk_metrics.mean_squared_error(gold[i], predicted[i]),
            "mean_prediction": lambda i: float(np.mean(predicted[i])),
            "mean_gold": lambda i: float(np.mean(gold[i]))}
  if task_name == "tagging":
    gold = [g.split(" ") for g in gold]
    predicted = [p.split(" ") for p in predicted]

    def entity(name):
      return lambda i: task_metrics.entity_report([gold[j] for j in i],
                                                  [predicted[j] for j in i])[name]
    return {name: entity(name)
            for name in ("entity_f1", "entity_precision", "entity_recall", "word_accuracy")}
  raise ConfigError(f"--slice_column: no metrics by group for task.name={task_name!r}")


def check_positive_label(task_name, labels, positive_label):
  if not positive_label:
    return
  if task_name not in config_lib.SINGLE_LABEL + ("multilabel",):
    raise ConfigError(f"--positive_label is for classification and multilabel runs; this "
                      f"run's task is {task_name!r}")
  if positive_label not in labels:
    raise ConfigError(f"--positive_label={positive_label!r} is not one of this run's labels "
                      f"({', '.join(labels)})")


def slice_report(task_name, fields, groups, labels, *, positive_label="", separator=","):
  """Metrics per group of one split, overall, and their between-group disparities.

  fields: per example (gold, predicted, score) as the task writes them to predictions.tsv;
  groups: per example the slice column's value ("" becomes "(empty)").
  """
  fields = list(fields)
  groups = np.asarray([g if g else EMPTY_GROUP for g in groups], object)
  if len(groups) != len(fields):
    raise ValueError(f"{len(groups)} group values for {len(fields)} examples")
  functions = _metric_functions(task_name, fields, labels, positive_label, separator)
  # MetricFrame slices y_true/y_pred by group; passing example indices lets each metric
  # read whatever form of the predictions it needs (tag sequences, label sets).
  index = np.arange(len(fields))
  frame = fair_metrics.MetricFrame(
      metrics={name: (lambda f: lambda i, _: f(np.asarray(i)))(f)
               for name, f in functions.items()},
      y_true=index, y_pred=index, sensitive_features=groups)
  by_group = frame.by_group
  counts = {str(g): int((groups == g).sum()) for g in by_group.index}

  def values(series):
    return {name: float(v) for name, v in series.items()}
  return {
      "groups": {str(g): {"count": counts[str(g)], **values(row)}
                 for g, row in by_group.iterrows()},
      "overall": values(frame.overall),
      "difference": values(frame.difference(method="between_groups")),
      "ratio": values(frame.ratio(method="between_groups")),
      "lowest_group": {name: str(g) for name, g in by_group.astype(float).idxmin().items()},
      "highest_group": {name: str(g) for name, g in by_group.astype(float).idxmax().items()},
      "small_groups": sorted(g for g, n in counts.items() if n < SMALL_GROUP),
  }


def text_lines(slices):
  """report.txt's section: a table per split, groups by rows, metrics by columns."""
  lines = [f"== metrics by {slices['column']!r}" +
           (f" (positive label {slices['positive_label']!r})"
            if slices.get("positive_label") else "")]
  for split, table in slices["splits"].items():
    names = list(table["overall"])
    width = max([10] + [len(g) for g in table["groups"]])
    lines.append(f"-- {split}")
    lines.append(f"{'group':>{width}} {'count':>6} " + " ".join(f"{n:>19}" for n in names))
    def row(title, count, values):
      return (f"{title:>{width}} {count:>6} " +
              " ".join(f"{values[n]:19.4f}" if values[n] is not None else f"{'-':>19}"
                       for n in names))
    for group, values in table["groups"].items():
      lines.append(row(group, values["count"], values))
    lines.append(row("overall", sum(v["count"] for v in table["groups"].values()),
                     table["overall"]))
    lines.append(row("difference", "", table["difference"]))
    lines.append(row("ratio", "", table["ratio"]))
    if table["small_groups"]:
      lines.append(f"fewer than {SMALL_GROUP} examples (noisy figures): "
                   f"{', '.join(table['small_groups'])}")
  return lines + [""]
