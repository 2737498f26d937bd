"""Smoke run: a tiny random-weight BERT (2 layers, hidden 32) on a few dozen examples.

  python -m tf_finetune.train --config=configs/smoke.py --workdir=/tmp/smoke

Data: ../shared/data/tiny/sst2_{train,dev}.tsv where that folder exists (CI, development
machines); elsewhere the first 64 training articles of the BBC News split, so the command
works on any machine. The vocabulary is all-MiniLM-L6-v2's (it matches both data sets).
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  config_lib.common().tiny_model(c)
  shared = config_lib.shared_data_dir()
  if shared is not None and (shared / "tiny" / "sst2_train.tsv").is_file():
    c.data.source = "tsv"
    c.data.dir = str(shared / "tiny")
    c.data.train_file = "sst2_train.tsv"
    c.data.dev_file = "sst2_dev.tsv"
    c.data.text_column = "sentence"
  else:
    c.data.max_train_examples = 64
  c.data.max_seq_length = 64
  c.train.steps = 12
  c.train.batch_size = 8
  c.train.learning_rate = 1e-3
  c.train.eval_every = 6
  c.train.log_every = 2
  return c
