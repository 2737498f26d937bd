"""One process of a multi-worker test: trains a config (JSON) as `tf_finetune.train` does,
then saves its trainable weights and prints a JSON line about itself.

  TF_CONFIG='{...}' python -m tests.run_worker CONFIG_JSON WORKDIR WEIGHTS_NPZ [UNTIL_STEP]

Run from the repository's root, so that it trains with the checkout's tf_finetune, as the
tests' `python -m tf_finetune.train` does, not with another installed copy.
"""
import json
import pathlib
import sys

import ml_collections
import numpy as np
from absl import logging

from tf_finetune import train
from tf_finetune.errors import Interrupted


def main(config_path, workdir, weights_path, until_step=None):
  logging.set_verbosity(logging.INFO)  # as under absl.app, which this script does not use
  config = ml_collections.ConfigDict(json.loads(pathlib.Path(config_path).read_text()))
  try:
    trainer = train.train_and_evaluate(config, workdir, int(until_step) if until_step else None)
  except Interrupted as e:  # as the entry point does (cli.guard)
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
  np.savez(weights_path, *[v.numpy() for v in trainer.model.trainable_variables])
  print(json.dumps({"is_chief": trainer.is_chief, "scratch": trainer._scratch,
                    "step": trainer.step,
                    "replicas": trainer.strategy.num_replicas_in_sync}))


if __name__ == "__main__":
  main(*sys.argv[1:])
