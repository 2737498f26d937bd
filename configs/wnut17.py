"""NER on WNUT-17 (emerging entities in tweets, 6 types) with all-MiniLM-L6-v2.

  python -m tf_finetune.train --config=configs/wnut17.py --workdir=runs/wnut17
  python tools/bench_wnut17.py     # the same run beside HF AutoModelForTokenClassification

Data: ../shared/data/wnut17/{train,dev}.conll (token<TAB>tag, BIO; dev.conll holds a stray
U+FEFF that the reader removes and counts). Tags go on each word's first wordpiece; the
report is entity-level (seqeval, strict IOB2), overall and per type.
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.task.name = "tagging"
  c.data.source = "conll"
  shared = config_lib.shared_data_dir()
  c.data.dir = str(shared / "wnut17") if shared else "../shared/data/wnut17"
  c.data.train_file = "train.conll"
  c.data.dev_file = "dev.conll"
  c.data.max_seq_length = 128
  c.train.epochs = 5.0
  c.train.batch_size = 16
  c.train.learning_rate = 5e-5
  c.train.eval_splits = "dev"
  return c
