import subprocess
import sys

import pytest

from tf_finetune import config as config_lib
from tf_finetune.errors import ConfigError


def test_base_config_is_valid_and_has_public_keys():
  c = config_lib.validate(config_lib.base_config())
  for key in ("model.checkpoint", "data.dir", "train.steps", "train.batch_size",
              "distribution.strategy"):
    section, name = key.split(".")
    assert name in c[section]


@pytest.mark.parametrize("key,value,words", [
    ("train.batch_size", 0, "config.train.batch_size=0: must be > 0"),
    ("distribution.strategy", "gpu", "must be one of default, one_device"),
    ("data.source", "xml", "must be one of bbc_news"),
    ("data.max_seq_length", 1024, "must be in [8, 512]"),
    ("data.max_seq_length", 1, "config.data.max_seq_length=1: must be in [8, 512]"),
    ("model.num_layers", 2, "only applies with model.random_init=True"),
    ("train.best_metric", "pearson",
     "must be auto or one of accuracy, macro_f1, loss for task.name='classification'"),
    ("task.class_weights", "inverse", "must be one of none, balanced"),
    ("data.max_train_examples", -1, "config.data.max_train_examples=-1: must be >= 0"),
    ("data.shuffle_buffer", -1, "config.data.shuffle_buffer=-1: must be >= 0"),
    ("train.seed", -1, "config.train.seed=-1: must be in [0, 2**32 - 1]"),
    ("data.split_seed", 2**32, "config.data.split_seed=4294967296: must be in [0, 2**32 - 1]"),
    ("train.adam_epsilon", -1e-8, "config.train.adam_epsilon=-1e-08: must be > 0"),
    ("train.eval_every", -1, "config.train.eval_every=-1: must be >= 0"),
    ("train.checkpoint_every", -1, "config.train.checkpoint_every=-1: must be >= 0"),
    ("distribution.num_cpu_devices", -2, "config.distribution.num_cpu_devices=-2: must be >= 0"),
    ("data.delimiter", "||", "config.data.delimiter='||': must be one character"),
    ("data.delimiter", '"', "config.data.delimiter='\"': must be one character"),
    ("data.delimiter", "\n", "config.data.delimiter='\\n': must be one character"),
])
def test_bad_values_raise_one_line_naming_the_key(key, value, words):
  c = config_lib.base_config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert words in str(e.value)
  assert "\n" not in str(e.value)


def test_one_column_read_as_two_fields_is_refused(tmp_path):
  """The label column given as the text column was read as both: the model learnt the label
  from the text, and dev accuracy said 1.0."""
  c = config_lib.base_config()
  c.data.source, c.data.dir, c.data.train_file = "tsv", str(tmp_path), "train.tsv"
  c.data.text_column = c.data.label_column = "label"
  with pytest.raises(ConfigError, match=r"^config.data.label_column='label': is also "
                                        r"data.text_column: one column would be read as both"):
    config_lib.validate(c)
  c.data.text_column, c.data.text_pair_column = "premise", "premise"
  with pytest.raises(ConfigError, match=r"^config.data.text_pair_column='premise': is also "
                                        r"data.text_column"):
    config_lib.validate(c)
  c.data.text_pair_column = ""
  config_lib.validate(c)
  c.data.source, c.data.text_column = "bbc_news", "label"  # reads no named columns
  config_lib.validate(c)


def test_file_source_needs_an_existing_dir(tmp_path):
  c = config_lib.base_config()
  c.data.source, c.data.dir, c.data.train_file = "tsv", str(tmp_path / "missing"), "train.tsv"
  with pytest.raises(ConfigError, match="data.dir=.*is not a directory"):
    config_lib.validate(c)


def test_load_applies_overrides_and_reports_bad_ones():
  from tests.conftest import REPO
  c = config_lib.load(REPO / "configs" / "smoke.py", {"train.steps": 3, "train.learning_rate": 1})
  assert c.train.steps == 3 and c.train.learning_rate == 1.0 and c.model.num_layers == 2
  with pytest.raises(ConfigError, match=r"config.train.stepz: unknown config key"):
    config_lib.load(REPO / "configs" / "smoke.py", {"train.stepz": 3})
  with pytest.raises(ConfigError, match=r"config.train.steps='many'"):
    config_lib.load(REPO / "configs" / "smoke.py", {"train.steps": "many"})
  with pytest.raises(ConfigError, match=r"config.train.batch_size=0: must be > 0"):
    config_lib.load(REPO / "configs" / "smoke.py", {"train.batch_size": 0})
  with pytest.raises(ConfigError, match="config file not found"):
    config_lib.load(REPO / "configs" / "nope.py")


def test_task_specific_keys():
  c = config_lib.base_config()
  c.task.name, c.train.best_metric = "regression", "spearman"
  assert config_lib.resolved_best_metric(config_lib.validate(c)) == "spearman"
  c.task.class_weights = "balanced"
  with pytest.raises(ConfigError, match="task.class_weights='balanced': applies to task.name='classification'"):
    config_lib.validate(c)
  c = config_lib.base_config()
  c.task.name = "multilabel"
  assert config_lib.resolved_best_metric(config_lib.validate(c)) == "micro_f1"


SHIPPED_CONFIGS = sorted(p for p in (config_lib.REPO_DIR / "configs").glob("*.py")
                         if p.name != "common.py")


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_reads_its_data(path, tmp_path):
  """configs/rte.py stopped before its first step at GLUE RTE's train.tsv:289, whose text
  holds mojibake (U+0080 U+0099, the bytes of a curly apostrophe read as Latin-1)."""
  from tf_finetune import experiment
  config = config_lib.load_module(path).get_config()
  derived = "runs/wnut17_derived"  # the output of the command the config's docstring gives
  if config.data.dir.startswith(derived):
    if not config_lib.shared_data_dir():
      pytest.skip(f"{path.name} reads data derived from ../shared/data, absent here")
    out = tmp_path / "derived"
    subprocess.run([sys.executable, "tools/make_wnut17_derived.py", f"--out_dir={out}"],
                   cwd=config_lib.REPO_DIR, check=True, capture_output=True)
    config.data.dir = str(out) + config.data.dir[len(derived):]
  elif config.data.source != "bbc_news" and not (
      config.data.dir and (config_lib.REPO_DIR / config.data.dir).is_dir()):
    pytest.skip(f"{path.name} reads ../shared/data, absent on this machine")
  splits, labels = experiment.load_data(config_lib.validate(config))
  assert len(splits["train"]) and labels.labels, path
