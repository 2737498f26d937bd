"""Multi-label and regression tasks, class weights: units, and train -> evaluate -> export."""
import json
import pathlib
import random

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (NEGATIVE, POSITIVE, assert_no_texts_give_no_rows, dev_logits,
                            tiny_config)
from tf_finetune import train
from tf_finetune.data import labels as labels_lib
from tf_finetune.data import sources
from tf_finetune.errors import DataError
from tf_finetune.tasks import metrics
from tf_finetune.export import serving
from tf_finetune.tasks import classification
from tf_finetune.tasks import multilabel
from tf_finetune.tasks import regression


def _write(directory, rows_by_file):
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for name, rows in rows_by_file.items():
    (directory / name).write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
  return directory


def multilabel_rows(n, seed):
  """Sentiment (pos / neg) plus "loud" when the text ends with "!": 0 to 2 labels each."""
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    positive, loud = i % 2 == 0, rng.random() < 0.5
    text = rng.choice(POSITIVE if positive else NEGATIVE) + (" !" if loud else " .")
    rows.append((text, ",".join((["pos"] if positive else ["neg"]) + (["loud"] if loud else []))))
  return rows


def regression_rows(n, seed):
  """Score = +k for a positive phrase said k times, -k for a negative one."""
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    k, sign = rng.randint(1, 3), 1 if i % 2 == 0 else -1
    phrase = rng.choice(POSITIVE if sign > 0 else NEGATIVE)
    rows.append((" and ".join([phrase] * k), f"{sign * k:.1f}"))
  return rows


def test_multilabel_values_and_unseen_label(tmp_path):
  config = tiny_config(_write(tmp_path / "d", {"train.tsv": multilabel_rows(8, 0),
                                               "dev.tsv": [("x", "pos,loud"), ("y", "neg,rare")]}),
                       task__name="multilabel")
  splits = sources.load_splits(config.data, stratify=False)
  vocabulary = multilabel.MultiLabelTask.build_vocabulary(config, splits["train"])
  assert vocabulary.labels == ["loud", "neg", "pos"]
  task = multilabel.MultiLabelTask(config, vocabulary)
  values = task.label_values(splits["train"])
  assert values.shape == (8, 3) and set(values.sum(1)) <= {1.0, 2.0}
  with pytest.raises(DataError, match=r"dev.tsv:3: label 'rare' of the dev split"):
    task.label_values(splits["dev"])
  # One label in two cases would be two labels.
  config = tiny_config(_write(tmp_path / "e", {"train.tsv": multilabel_rows(8, 0) + [
      ("z", "neg,Loud")], "dev.tsv": [("x", "pos")]}), task__name="multilabel")
  splits = sources.load_splits(config.data, stratify=False)
  with pytest.raises(DataError, match=r"train.tsv:10: label 'Loud' is 'loud' of \S+train.tsv:\d+ "
                                      "in another case"):
    multilabel.MultiLabelTask.build_vocabulary(config, splits["train"])


def test_threshold_tuning_picks_the_best_f1_per_label():
  gold = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
  probabilities = np.array([[0.3, 0.9], [0.25, 0.8], [0.1, 0.85], [0.05, 0.2]])
  thresholds = metrics.tune_thresholds(gold, probabilities)
  # Label 0: any threshold in (0.1, 0.25] separates perfectly; of 0.15, 0.2, 0.25 the one
  # nearest 0.5 wins. Label 1: only example 3 is positive (0.85); t = 0.85 keeps one false
  # positive (F1 2/3), any t <= 0.8 keeps two (F1 1/2), any t > 0.85 none right (F1 0).
  assert thresholds[0] == pytest.approx(0.25)
  assert thresholds[1] == pytest.approx(0.85)


def test_regression_labels_must_be_numbers(tmp_path):
  config = tiny_config(_write(tmp_path / "d", {"train.tsv": [("a", "1.5"), ("b", "high")],
                                               "dev.tsv": [("c", "0")]}), task__name="regression",
                       train__best_metric="pearson")
  splits = sources.load_splits(config.data, stratify=False)
  task = regression.RegressionTask(config, regression.RegressionTask.build_vocabulary(
      config, splits["train"]))
  with pytest.raises(DataError, match=r"train.tsv:3: label 'high' is not a number"):
    task.label_values(splits["train"])
  np.testing.assert_allclose(task.label_values(splits["dev"]), [0.0])
  report = metrics.regression_report([1, 2, 3, 4], [1, 2, 4, 3])
  assert report["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 2, 4, 3])[0, 1])
  assert report["spearman"] == pytest.approx(0.8) and report["mse"] == pytest.approx(0.5)


def test_balanced_class_weights_weigh_the_training_loss(sentiment_dir):
  config = tiny_config(sentiment_dir, task__class_weights="balanced")
  task = classification.ClassificationTask(config, labels_lib.LabelVocabulary(["a", "b", "c"]))
  train_labels = np.array([0] * 6 + [1] * 3 + [2])
  task.prepare(train_labels)
  np.testing.assert_allclose(task.class_weights, [10 / 18, 10 / 9, 10 / 3])
  logits = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
  labels = tf.constant([0, 2])
  np.testing.assert_allclose(task.training_losses(labels, logits).numpy(),
                             task.build_losses(labels, logits).numpy() * [10 / 18, 10 / 3],
                             rtol=1e-6)


def _serve(export_dir, texts):
  serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
  assert_no_texts_give_no_rows(serve)
  return serve(text=tf.constant(texts))


def test_multilabel_train_evaluate_export(tmp_path):
  data = _write(tmp_path / "data", {"train.tsv": multilabel_rows(64, 0),
                                    "dev.tsv": multilabel_rows(24, 1)})
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(data, task__name="multilabel", train__steps=100,
                                       train__eval_every=50, train__learning_rate=3e-3,
                                       data__shuffle_buffer=64), workdir)
  report = json.loads((workdir / "eval" / "report.json").read_text())
  assert report["task"] == "multilabel" and report["best_metric"] == "micro_f1"
  dev = report["splits"]["dev"]
  # It learned: sentiment alone, decided by a fixed phrase list, gives half the labels.
  assert dev["per_class"]["pos"]["f1"] > 0.8 and dev["per_class"]["neg"]["f1"] > 0.8, dev
  for key in ("micro_f1", "macro_f1", "exact_match", "micro_f1_at_0.5", "loss"):
    assert 0.0 <= dev[key] <= (1.0 if key != "loss" else 10.0), key
  assert set(dev["per_class"]) == {"loud", "neg", "pos"}
  thresholds = np.array(report["calibration"]["thresholds"])
  assert thresholds.shape == (3,) and ((0 < thresholds) & (thresholds < 1)).all()
  assert "confusion_matrix.png" not in {p.name for p in (workdir / "eval").iterdir()}

  dev_split, _, logits, _ = dev_logits(workdir)
  texts = dev_split.texts
  exported = serving.export_saved_model(workdir)
  outputs = _serve(exported, texts)
  expected = (1 / (1 + np.exp(-logits))) >= thresholds
  np.testing.assert_array_equal(outputs["predicted"].numpy(), expected.astype(np.int32))
  names = np.array(report["labels"])
  assert [x.decode() for x in outputs["labels"].numpy()] == [",".join(names[row]) for row in expected]
  assert "calibrated on dev" in (exported / "README.md").read_text()
  # A held-out file (here dev again, as a file) is scored with the thresholds tuned on dev.
  from tf_finetune.evaluation import evaluator
  held_out = evaluator.evaluate_file(workdir, data / "dev.tsv")
  assert held_out["calibration"] == report["calibration"]
  assert held_out["splits"]["dev.tsv"] == dev


def test_multilabel_export_needs_the_dev_calibration(tmp_path):
  data = _write(tmp_path / "data", {"train.tsv": multilabel_rows(16, 0),
                                    "dev.tsv": multilabel_rows(8, 1)})
  from tf_finetune.training import trainer as trainer_lib
  from tf_finetune.errors import WorkdirError
  trainer_lib.Trainer(tiny_config(data, task__name="multilabel", train__steps=2),
                      tmp_path / "run").train()
  with pytest.raises(WorkdirError, match="run `python -m tf_finetune.evaluate"):
    serving.export_saved_model(tmp_path / "run")


def test_regression_learns_train_evaluate_export(tmp_path):
  data = _write(tmp_path / "data", {"train.tsv": regression_rows(64, 0),
                                    "dev.tsv": regression_rows(24, 1)})
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(data, task__name="regression", train__steps=40,
                                       train__eval_every=20, data__shuffle_buffer=64), workdir)
  report = json.loads((workdir / "eval" / "report.json").read_text())
  assert report["labels"] == ["label"] and report["best_metric"] == "pearson"
  dev = report["splits"]["dev"]
  assert dev["pearson"] > 0.5 and dev["spearman"] > 0.5, dev  # it learned the sign at least
  assert dev["loss"] == dev["mse"]

  dev_split, gold, logits, _ = dev_logits(workdir)
  texts = dev_split.texts
  assert metrics.regression_report(gold, logits[:, 0])["pearson"] == pytest.approx(dev["pearson"])
  outputs = _serve(serving.export_saved_model(workdir), texts)
  np.testing.assert_allclose(outputs["score"].numpy(), logits[:, 0], atol=1e-5)
  lines = (workdir / "eval" / "predictions.tsv").read_text().splitlines()
  assert len(lines) == 1 + len(texts) and lines[1].split("\t")[2] == f"{gold[0]:g}"
