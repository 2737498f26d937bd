"""Metrics by group (`evaluate --slice_column`): the numbers, the readers' kept columns, and a
run whose groups differ by construction."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from tests.conftest import NEGATIVE, POSITIVE, REPO, tiny_config
from tests.test_tagging import NER_DATA, ner_config
from tf_finetune.data import sources
from tf_finetune.errors import ConfigError, DataError
from tf_finetune.evaluation import evaluator
from tf_finetune.evaluation import fairness
from tf_finetune.tasks import metrics as task_metrics
from tf_finetune.training import trainer as trainer_lib


def test_classification_metrics_by_group_equal_sklearn_on_each_group():
  rng = np.random.default_rng(0)
  gold = rng.choice(["neg", "pos"], 300)
  predicted = np.where(rng.random(300) < 0.7, gold, rng.choice(["neg", "pos"], 300))
  groups = rng.choice(["a", "b", "c"], 300)
  table = fairness.slice_report("classification", zip(gold, predicted, [""] * 300), groups,
                                ["neg", "pos"], positive_label="pos")
  for group in ("a", "b", "c"):
    g, p = gold[groups == group], predicted[groups == group]
    row = table["groups"][group]
    assert row["count"] == len(g)
    assert row["accuracy"] == pytest.approx(sk_metrics.accuracy_score(g, p))
    assert row["macro_f1"] == pytest.approx(sk_metrics.f1_score(g, p, average="macro"))
    assert row["selection_rate"] == pytest.approx(np.mean(p == "pos"))
    assert row["true_positive_rate"] == pytest.approx(np.mean(p[g == "pos"] == "pos"))
    assert row["false_positive_rate"] == pytest.approx(np.mean(p[g == "neg"] == "pos"))
  for metric, overall in table["overall"].items():
    values = [table["groups"][group][metric] for group in "abc"]
    assert table["difference"][metric] == pytest.approx(max(values) - min(values))
    assert table["ratio"][metric] == pytest.approx(min(values) / max(values))
    assert table["groups"][table["lowest_group"][metric]][metric] == min(values)
  assert table["overall"]["accuracy"] == pytest.approx(np.mean(gold == predicted))


def test_a_rate_without_a_denominator_is_nan_and_left_out_of_the_disparities():
  fields = [("1", "1", ""), ("0", "1", ""), ("0", "0", ""), ("0", "1", "")]
  table = fairness.slice_report("classification", fields, ["a", "a", "b", "b"], ["0", "1"],
                                positive_label="1")
  assert np.isnan(table["groups"]["b"]["true_positive_rate"])  # b has no gold positive
  assert table["difference"]["true_positive_rate"] == 0.0
  assert table["groups"]["a"]["false_positive_rate"] == 1.0
  assert table["groups"]["b"]["false_positive_rate"] == 0.5


def test_tagging_entity_f1_by_group_equals_seqeval_on_each_group():
  gold = ["B-PER I-PER O", "O B-LOC", "B-ORG O", "B-LOC O"]
  predicted = ["B-PER I-PER O", "O O", "B-ORG O", "B-PER O"]
  groups = ["x", "y", "x", "y"]
  table = fairness.slice_report("tagging", zip(gold, predicted, [""] * 4), groups, [])
  for group in "xy":
    pick = [i for i, g in enumerate(groups) if g == group]
    expected = task_metrics.entity_report([gold[i].split() for i in pick],
                                          [predicted[i].split() for i in pick])
    for metric in ("entity_f1", "entity_precision", "entity_recall", "word_accuracy"):
      assert table["groups"][group][metric] == expected[metric]
  assert table["groups"]["x"]["entity_f1"] == 1.0 and table["groups"]["y"]["entity_f1"] == 0.0


def test_regression_and_multilabel_metrics_by_group():
  table = fairness.slice_report("regression", [("1", "1.5", ""), ("2", "2", ""), ("0", "1", "")],
                                ["a", "a", "b"], [])
  assert table["groups"]["a"]["mae"] == pytest.approx(0.25)
  assert table["groups"]["b"]["mean_prediction"] == 1.0
  table = fairness.slice_report("multilabel", [("x,y", "x", ""), ("", "y", ""), ("y", "y", "")],
                                ["a", "b", "b"], ["x", "y"], positive_label="y")
  assert table["groups"]["b"]["subset_accuracy"] == 0.5
  assert table["groups"]["a"]["true_positive_rate"] == 0.0
  assert table["groups"]["b"]["selection_rate"] == 1.0


def test_readers_keep_the_slice_column_and_name_the_line_of_a_bad_one(tmp_path):
  path = tmp_path / "d.tsv"
  path.write_text("sentence\tlabel\tgroup\nfine\t1\t a \nbad\t0\tb\n")
  split = sources.read_delimited(path, delimiter="\t", text_column="sentence",
                                 label_column="label", keep_columns=("group",))
  assert split.columns == {"group": ["a", "b"]}
  assert split.subset([1]).columns == {"group": ["b"]}
  with pytest.raises(DataError, match=r"d\.tsv:1: no column 'dialect'"):
    sources.read_delimited(path, delimiter="\t", text_column="sentence", label_column="label",
                           keep_columns=("dialect",))
  path = tmp_path / "d.jsonl"
  path.write_text('{"text": "a", "label": "x", "age": 41}\n{"text": "b", "label": "y", '
                  '"age": null}\n{"text": "c", "label": "y"}\n')
  with pytest.raises(DataError, match=r"d\.jsonl:3: missing field 'age'"):
    sources.read_jsonl(path, text_column="text", label_column="label", keep_columns=("age",))
  path.write_text('{"text": "a", "label": "x", "age": 41}\n{"text": "b", "label": "y", '
                  '"age": null}\n{"text": "c", "label": "y", "age": [1]}\n')
  with pytest.raises(DataError, match=r"d\.jsonl:3: field 'age' must be a string"):
    sources.read_jsonl(path, text_column="text", label_column="label", keep_columns=("age",))
  path.write_text('{"text": "a", "label": "x", "age": 41}\n{"text": "b", "label": "y", '
                  '"age": null}\n')
  split = sources.read_jsonl(path, text_column="text", label_column="label",
                             keep_columns=("age",))
  assert split.columns == {"age": ["41", ""]}


def test_conll_sentence_comments_give_the_slice_column(tmp_path):
  path = tmp_path / "d.conll"
  path.write_text("# group = news\nParis\tB-LOC\nsleeps\tO\n\n#\tO\nhi\tO\n\n"
                  "# group = tweets\n# id = 7\nBob\tB-PER\n")
  with pytest.raises(DataError, match=r"d\.conll:5: no `# group = \.\.\.` line"):
    sources.read_conll(path, keep_columns=("group",))
  path.write_text("# group = news\nParis\tB-LOC\nsleeps\tO\n\n# group = tweets\n#\tO\nhi\tO\n\n"
                  "# group = tweets\n# id = 7\nBob\tB-PER\n")
  split = sources.read_conll(path, keep_columns=("group",))  # "#<tab>O" is a word
  assert split.tokens == [["Paris", "sleeps"], ["#", "hi"], ["Bob"]]
  assert split.columns == {"group": ["news", "tweets", "tweets"]}
  assert split.origins[1].endswith(":6")
  with pytest.raises(DataError, match=r"d\.conll:2: no `# id = \.\.\.` line"):
    sources.read_conll(path, keep_columns=("id",))
  assert sources.read_conll(path).tokens == split.tokens  # comments are not words


def _write_group_data(directory):
  """Train on the fixed phrases; dev holds every dev text twice: in group "kept" with its
  label, in group "flipped" with the other label. Predictions are the same for both copies,
  so accuracy(kept) + accuracy(flipped) = 1, TPR(flipped) = FPR(kept) and selection rates are
  equal: groups that differ by construction whatever the model learned."""
  directory.mkdir()
  rng = np.random.default_rng(0)
  with open(directory / "train.tsv", "w", newline="") as f:
    writer = csv.writer(f, delimiter="\t")
    writer.writerow(["sentence", "label", "group"])
    for i in range(48):
      writer.writerow([rng.choice(POSITIVE if i % 2 else NEGATIVE), i % 2, "kept"])
  dev = [(rng.choice(POSITIVE if i % 2 else NEGATIVE) + f" {i}", i % 2) for i in range(12)]
  with open(directory / "dev.tsv", "w", newline="") as f:
    writer = csv.writer(f, delimiter="\t")
    writer.writerow(["sentence", "label", "group"])
    writer.writerows([text, label, "kept"] for text, label in dev)
    writer.writerows([text, 1 - label, "flipped"] for text, label in dev)
  return directory


@pytest.fixture(scope="module")
def group_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("fairness")
  workdir = root / "run"
  trainer_lib.Trainer(tiny_config(_write_group_data(root / "data"), train__steps=80,
                                  train__learning_rate=3e-3, train__eval_every=40,
                                  train__log_every=40), workdir).train()
  return workdir


def test_evaluate_reports_groups_that_differ_by_construction(group_run):
  # Overall dev accuracy is 0.5 at every step by construction, so the best checkpoint is the
  # first; the last one has learned the phrases.
  plain = evaluator.evaluate_workdir(group_run, "latest")
  report = evaluator.evaluate_workdir(group_run, "latest", slice_column="group")
  assert report["splits"] == plain["splits"]  # the column never reaches the model
  slices = report["slices"]
  assert slices["column"] == "group" and slices["positive_label"] == "1"
  table = slices["splits"]["dev"]
  kept, flipped = table["groups"]["kept"], table["groups"]["flipped"]
  assert kept["count"] == flipped["count"] == 12
  assert kept["accuracy"] + flipped["accuracy"] == pytest.approx(1.0)
  assert kept["accuracy"] >= 0.75  # the model learned the phrases: the groups differ
  assert kept["selection_rate"] == flipped["selection_rate"]
  assert flipped["true_positive_rate"] == pytest.approx(kept["false_positive_rate"])
  assert flipped["false_positive_rate"] == pytest.approx(kept["true_positive_rate"])
  assert table["difference"]["accuracy"] == pytest.approx(abs(2 * kept["accuracy"] - 1))
  assert table["overall"]["accuracy"] == pytest.approx(0.5)
  assert table["difference"]["selection_rate"] == 0.0
  on_disk = json.loads((group_run / "eval" / "report.json").read_text())
  assert on_disk["slices"]["splits"]["dev"]["groups"]["kept"]["count"] == 12
  text = (group_run / "eval" / "report.txt").read_text()
  assert "== metrics by 'group' (positive label '1')" in text and "flipped" in text
  assert (group_run / "eval" / "slices_dev.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_refuses_a_column_the_data_does_not_have_and_a_label_it_does_not_know(
    group_run):
  with pytest.raises(DataError, match=r"dev\.tsv:1: no column 'dialect'"):
    evaluator.evaluate_workdir(group_run, slice_column="dialect")
  with pytest.raises(ConfigError, match=r"--positive_label='yes' is not one of this run's "
                                        r"labels \(0, 1\)"):
    evaluator.evaluate_workdir(group_run, slice_column="group", positive_label="yes")


@pytest.mark.slow
def test_evaluate_command_prints_the_groups(group_run):
  result = subprocess.run(
      [sys.executable, "-m", "tf_finetune.evaluate", f"--workdir={group_run}",
       "--slice_column=group"], capture_output=True, text=True, cwd=REPO, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "dev by group: flipped " in result.stdout and ", kept " in result.stdout


def test_ner_entity_f1_by_group_from_sentence_comments(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  (data / "ner_train.conll").write_text((NER_DATA / "ner_train.conll").read_text())
  sentences = [s for s in (NER_DATA / "ner_dev.conll").read_text().strip().split("\n\n")
               if not s.startswith("-DOCSTART-")]
  (data / "ner_dev.conll").write_text("\n\n".join(
      f"# source = {'odd' if i % 2 else 'even'}\n{s}" for i, s in enumerate(sentences)) + "\n")
  workdir = tmp_path / "run"
  trainer_lib.Trainer(ner_config(data, train__steps=6), workdir).train()
  report = evaluator.evaluate_workdir(workdir, slice_column="source")
  table = report["slices"]["splits"]["dev"]
  rows = [line.split("\t") for line in
          (workdir / "eval" / "predictions.tsv").read_text().splitlines()[1:]]
  for parity, group in ((0, "even"), (1, "odd")):
    pick = [r for i, r in enumerate(rows) if i % 2 == parity]
    expected = task_metrics.entity_report([r[2].split(" ") for r in pick],
                                          [r[3].split(" ") for r in pick])
    assert table["groups"][group]["count"] == len(pick)
    assert table["groups"][group]["entity_f1"] == expected["entity_f1"]
    assert table["groups"][group]["word_accuracy"] == expected["word_accuracy"]
  with pytest.raises(ConfigError, match="--positive_label is for classification and "
                                        "multilabel"):
    evaluator.evaluate_workdir(workdir, slice_column="source", positive_label="B-PER")
