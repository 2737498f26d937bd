"""Regression: how many entity mentions a tweet has (WNUT-17 annotations), all-MiniLM-L6-v2.

  python tools/make_wnut17_derived.py --out_dir=runs/wnut17_derived
  python -m tf_finetune.train --config=configs/wnut17_count.py --workdir=runs/wnut17_count

The label is a count (0 to 7); the head is linear with mean squared error, and the report
gives Pearson and Spearman correlation, MSE and MAE.
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.task.name = "regression"
  c.data.source = "tsv"
  c.data.dir = "runs/wnut17_derived/regression"
  c.data.train_file = "train.tsv"
  c.data.dev_file = "dev.tsv"
  c.data.text_column = "sentence"
  c.data.max_seq_length = 64
  c.train.epochs = 3.0
  c.train.batch_size = 32
  c.train.learning_rate = 1e-4
  c.train.eval_splits = "dev"
  return c
