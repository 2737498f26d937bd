"""Metrics of the tasks, computed with scikit-learn, scipy and seqeval: each task's report
calls these; evaluation/ only writes them to files."""
import numpy as np
from sklearn import metrics as sk_metrics


def classification_report(label_ids, predicted_ids, label_names, loss=None):
  """accuracy, macro F1 and per-class precision / recall / F1 / support."""
  label_range = list(range(len(label_names)))
  report = {
      "num_examples": int(len(label_ids)),
      "accuracy": float(sk_metrics.accuracy_score(label_ids, predicted_ids)),
      "macro_f1": float(sk_metrics.f1_score(label_ids, predicted_ids, labels=label_range,
                                            average="macro", zero_division=0)),
      "per_class": _per_class(label_ids, predicted_ids, label_names),
      "confusion_matrix": sk_metrics.confusion_matrix(
          label_ids, predicted_ids, labels=label_range).tolist(),
  }
  if loss is not None:
    report["loss"] = loss
  return report


def _per_class(y_true, y_pred, label_names):
  precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
      y_true, y_pred, labels=list(range(len(label_names))), zero_division=0)
  return {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
          for name, p, r, f, s in zip(label_names, precision, recall, f1, support)}


def multilabel_report(label_matrix, predicted_matrix, label_names):
  """micro / macro F1, exact-match accuracy and per-label precision / recall / F1 / support
  for 0/1 matrices [examples, labels]."""
  y_true, y_pred = np.asarray(label_matrix).astype(int), np.asarray(predicted_matrix).astype(int)
  average = lambda how: sk_metrics.precision_recall_fscore_support(
      y_true, y_pred, average=how, zero_division=0)[:3]
  micro_p, micro_r, micro_f1 = average("micro")
  return {
      "num_examples": int(len(y_true)),
      "micro_f1": float(micro_f1), "macro_f1": float(average("macro")[2]),
      "micro_precision": float(micro_p), "micro_recall": float(micro_r),
      "exact_match": float(sk_metrics.accuracy_score(y_true, y_pred)),
      "per_class": _per_class(y_true, y_pred, label_names),
  }


def tune_thresholds(label_matrix, probabilities, candidates=np.linspace(0.05, 0.95, 19)):
  """Per label, the threshold among `candidates` with the best F1 on these examples (ties:
  the one nearest 0.5). Written here: scikit-learn tunes thresholds only around an
  estimator it fits itself (TunedThresholdClassifierCV), not on given probabilities."""
  y_true = np.asarray(label_matrix) > 0
  chosen = []
  for j in range(y_true.shape[1]):
    scores = [sk_metrics.f1_score(y_true[:, j], probabilities[:, j] >= t, zero_division=0)
              for t in candidates]
    best = max(scores)
    chosen.append(min((t for t, f in zip(candidates, scores) if f == best),
                      key=lambda t: abs(t - 0.5)))
  return np.asarray(chosen, np.float32)


def regression_report(gold, predicted):
  """Pearson and Spearman correlation (0 where undefined: constant values), MSE, MAE."""
  from scipy import stats
  gold, predicted = np.asarray(gold, np.float64), np.asarray(predicted, np.float64)
  constant = np.ptp(gold) == 0 or np.ptp(predicted) == 0
  return {
      "num_examples": int(len(gold)),
      "pearson": 0.0 if constant else float(stats.pearsonr(gold, predicted)[0]),
      "spearman": 0.0 if constant else float(stats.spearmanr(gold, predicted)[0]),
      "mse": float(np.mean((gold - predicted) ** 2)),
      "mae": float(np.mean(np.abs(gold - predicted))),
  }


def entity_report(gold_tags, predicted_tags):
  """Entity-level precision / recall / F1, overall (micro) and per type, the seqeval way in
  strict IOB2 mode (an entity counts only if its type and both ends match; an I- tag that
  continues nothing starts no entity), plus conlleval's lenient F1 for comparison with
  published figures, and word accuracy. Tag sequences are lists of lists of strings."""
  from seqeval import metrics as seq_metrics
  from seqeval.scheme import IOB2
  strict = dict(mode="strict", scheme=IOB2, zero_division=0)
  table = seq_metrics.classification_report(gold_tags, predicted_tags, output_dict=True, **strict)
  words = sum(len(t) for t in gold_tags)
  return {
      "num_examples": int(len(gold_tags)),
      "entity_f1": float(seq_metrics.f1_score(gold_tags, predicted_tags, **strict)),
      "entity_precision": float(seq_metrics.precision_score(gold_tags, predicted_tags, **strict)),
      "entity_recall": float(seq_metrics.recall_score(gold_tags, predicted_tags, **strict)),
      "entity_f1_conlleval": float(seq_metrics.f1_score(gold_tags, predicted_tags)),
      "word_accuracy": float(sum(g == p for gs, ps in zip(gold_tags, predicted_tags)
                                 for g, p in zip(gs, ps)) / max(words, 1)),
      "num_words": int(words),
      "num_entities": int(sum(table[t]["support"] for t in table if not t.endswith(" avg"))),
      "per_class": {name: {"precision": float(c["precision"]), "recall": float(c["recall"]),
                           "f1": float(c["f1-score"]), "support": int(c["support"])}
                    for name, c in sorted(table.items()) if not name.endswith(" avg")},
  }


def metrics_line(split_report):
  """'accuracy 0.9865, macro_f1 0.9861, loss 0.0712': every scalar metric of a split."""
  return ", ".join(f"{k} {v:.4f}" for k, v in split_report.items()
                   if isinstance(v, float))
