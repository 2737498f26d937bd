"""Smoke run for NER (task.name=tagging): a tiny random-weight BERT on a few CoNLL sentences.

  python -m tf_finetune.train --config=configs/smoke_ner.py --workdir=/tmp/smoke_ner

Data: ../shared/data/tiny/wnut17_{train,dev}.conll (120 + 60 tweets) where that folder
exists (CI, development machines); elsewhere the package's own examples,
tf_finetune/data/examples/ner_{train,dev}.conll (a few sentences written for this project,
installed with it), so the command works on any machine.
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.task.name = "tagging"
  config_lib.common().tiny_model(c)
  c.data.source = "conll"
  shared = config_lib.shared_data_dir()
  if shared is not None and (shared / "tiny" / "wnut17_train.conll").is_file():
    c.data.dir = str(shared / "tiny")
    c.data.train_file = "wnut17_train.conll"
    c.data.dev_file = "wnut17_dev.conll"
  else:
    c.data.dir = str(config_lib.EXAMPLES_DIR)
    c.data.train_file = "ner_train.conll"
    c.data.dev_file = "ner_dev.conll"
  c.data.max_seq_length = 64
  c.train.steps = 12
  c.train.batch_size = 8
  c.train.learning_rate = 1e-3
  c.train.eval_every = 6
  c.train.log_every = 2
  c.train.eval_splits = "dev"
  return c
