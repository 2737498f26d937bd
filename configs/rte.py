"""GLUE RTE entailment (sentence pairs) with all-MiniLM-L6-v2, from ../shared/data/rte
(2,490 train, 277 dev; labels 0 entailment, 1 not entailment).

  python -m tf_finetune.train --config=configs/rte.py --workdir=runs/rte

The two sentences are packed as [CLS] s1 [SEP] s2 [SEP] with segment ids 0 and 1; the
export takes `text` and `text_pair`. Point data.dir elsewhere for your own copy.

One train row (train.tsv:289) and one dev row (dev.tsv:240) hold mojibake: a curly
apostrophe's UTF-8 bytes read as Latin-1, U+00E2 U+0080 U+0099, two of them control
characters, which data.bad_text=error (the default) stops at. This config skips such rows,
and the log says so ("left out 1 of 2490 examples (data.bad_text=skip): 1 holds a control
character; first at .../train.tsv:289"); dev accuracy is over the other 276.
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  shared = config_lib.shared_data_dir()
  c.data.source = "tsv"
  c.data.dir = str(shared / "rte") if shared else ""
  c.data.train_file = "train.tsv"
  c.data.dev_file = "dev.tsv"
  c.data.text_column = "sentence1"
  c.data.text_pair_column = "sentence2"
  c.data.bad_text = "skip"
  c.data.max_seq_length = 128
  c.train.epochs = 3.0
  c.train.batch_size = 16
  c.train.learning_rate = 5e-5
  c.train.eval_splits = "dev"
  return c
