"""data.examples_per_class: the few-shot sample, drawn per label with data.split_seed and
written to the run directory."""
import collections

import pytest

from tests.conftest import tiny_config, write_sentiment_tsv
from tf_finetune import experiment
from tf_finetune.data import sources
from tf_finetune.errors import ConfigError, DataError
from tf_finetune.training import trainer as trainer_lib


def test_the_sample_has_k_of_each_label_and_follows_the_seed(sentiment_dir):
  split = experiment.load_data(tiny_config(sentiment_dir))[0]["train"]
  first = sources.per_class_sample(split, 5, seed=0)
  assert collections.Counter(split.labels[i] for i in first) == {"0": 5, "1": 5}
  assert first == sorted(first) and len(set(first)) == 10
  assert sources.per_class_sample(split, 5, seed=0) == first
  assert sources.per_class_sample(split, 5, seed=1) != first
  with pytest.raises(DataError, match=r"train\.tsv: label '0' has 24 train example\(s\), "
                                      r"fewer than data\.examples_per_class=25"):
    sources.per_class_sample(split, 25, seed=0)


def test_a_few_shot_run_trains_on_the_sample_it_writes(tmp_path):
  data = write_sentiment_tsv(tmp_path / "data")
  config = tiny_config(data, data__examples_per_class=4, train__steps=2)
  splits, _ = experiment.load_data(config)
  assert len(splits["train"]) == 8 and len(splits["dev"]) == 16
  trainer_lib.Trainer(config, tmp_path / "run").train()
  rows = (tmp_path / "run" / "train_sample.tsv").read_text().splitlines()
  assert rows[0] == "origin\tlabel\ttext" and len(rows) == 9
  assert [r.split("\t")[0] for r in rows[1:]] == splits["train"].origins
  assert collections.Counter(r.split("\t")[1] for r in rows[1:]) == {"0": 4, "1": 4}


def test_only_single_label_tasks_take_a_per_class_sample(sentiment_dir):
  with pytest.raises(ConfigError, match="data.examples_per_class=4: applies to one label per "
                                        "example"):
    tiny_config(sentiment_dir, task__name="regression", data__examples_per_class=4)
