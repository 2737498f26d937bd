"""Multi-label: which entity types a tweet mentions (WNUT-17 annotations), all-MiniLM-L6-v2.

  python tools/make_wnut17_derived.py --out_dir=runs/wnut17_derived
  python -m tf_finetune.train --config=configs/wnut17_types.py --workdir=runs/wnut17_types

Labels: person, location, corporation, product, creative-work, group, any subset (64% of
train tweets have none). Per-label thresholds are tuned on dev after training and baked
into the export; the report gives micro and macro F1 (and both at 0.5).
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.task.name = "multilabel"
  c.data.source = "tsv"
  c.data.dir = "runs/wnut17_derived/multilabel"
  c.data.train_file = "train.tsv"
  c.data.dev_file = "dev.tsv"
  c.data.text_column = "sentence"
  c.data.max_seq_length = 64
  c.train.epochs = 3.0
  c.train.batch_size = 32
  c.train.learning_rate = 1e-4
  c.train.eval_splits = "dev"
  return c
