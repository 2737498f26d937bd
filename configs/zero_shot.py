"""Zero-shot BBC News topics with all-MiniLM-L6-v2: no training, similarity to label texts.

  python -m tf_finetune.train --config=configs/zero_shot.py --workdir=runs/bbc_zero_shot
  python -m tf_finetune.export --workdir=runs/bbc_zero_shot

Each article's embedding (mean pooling, unit length, its first 256 wordpieces, the length
the checkpoint was trained at) is compared with "This text is about {label}." for the five
topics; the nearest wins. The run builds, evaluates dev and test, and exports like any
classification run; the export's `zero_shot` signature takes other label texts per request.
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.task.name = "zero_shot"
  c.task.label_descriptions = "This text is about {label}."
  c.data.max_seq_length = 256
  return c
