"""TREC question type, 6 coarse classes, with all-MiniLM-L6-v2, from ../shared/data/trec
(5,452 questions; dev is 10% of them, label-stratified with data.split_seed=0).

  python -m tf_finetune.train --config=configs/trec.py --workdir=runs/trec

Lines are `COARSE:fine question words ...`; data.coarse_label_separator=":" keeps the coarse
label (ABBR, DESC, ENTY, HUM, LOC, NUM). Set it to "" for the 50 fine labels. The file is
Latin-1, not UTF-8 (one byte on line 66), hence data.encoding.
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  shared = config_lib.shared_data_dir()
  c.data.source = "label_first"
  c.data.dir = str(shared / "trec") if shared else ""
  c.data.train_file = "train.txt"
  c.data.coarse_label_separator = ":"
  c.data.encoding = "latin-1"  # TREC's files are ISO-8859-1 (line 66: "sister\xf0city")
  c.data.max_seq_length = 64
  c.train.epochs = 3.0
  c.train.batch_size = 32
  c.train.learning_rate = 1e-4
  c.train.eval_splits = "dev"
  return c
