"""TensorBoard summaries: tensorboard/train and tensorboard/eval, plus hparams."""
import json
import pathlib

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from tf_finetune import config as config_lib


class Writers:

  def __init__(self, root):
    root = pathlib.Path(root)
    self.train = tf.summary.create_file_writer(str(root / "train"))
    self.eval = tf.summary.create_file_writer(str(root / "eval"))

  def _scalars(self, writer, step, values):
    with writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)

  def train_scalars(self, step, values):
    self._scalars(self.train, step, values)

  def eval_scalars(self, step, values):
    self._scalars(self.eval, step, values)
    self.eval.flush()

  def hparams(self, config):
    flat = config_lib.flatten(json.loads(config.to_json()))
    with self.train.as_default():
      hparams_api.hparams({k: v for k, v in flat.items()
                           if isinstance(v, (bool, int, float, str))})

  def flush(self):
    self.train.flush()
    self.eval.flush()

  def close(self):
    self.train.close()
    self.eval.close()
