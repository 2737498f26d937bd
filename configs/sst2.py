"""GLUE SST-2 sentiment with all-MiniLM-L6-v2, from ../shared/data/sst2 (67,349 train, 872 dev).

  python -m tf_finetune.train --config=configs/sst2.py --workdir=runs/sst2

Point data.dir elsewhere for your own copy (--config.data.dir=/path/to/SST-2).
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  shared = config_lib.shared_data_dir()
  c.data.source = "tsv"
  c.data.dir = str(shared / "sst2") if shared else ""
  c.data.train_file = "train.tsv"
  c.data.dev_file = "dev.tsv"
  c.data.text_column = "sentence"
  c.data.max_seq_length = 64
  c.train.epochs = 1.0
  c.train.batch_size = 32
  c.train.learning_rate = 5e-5
  c.train.eval_every = 500
  c.train.eval_splits = "dev"
  return c
