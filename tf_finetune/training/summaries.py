"""TensorBoard summaries.

tensorboard/train: loss, learning rate, gradient norm, speed. tensorboard/eval: the task's
dev metrics and (classification) the confusion matrix image at each evaluation, and the
best checkpoint's dev metrics (best_<metric>) at the end. tensorboard/ itself holds the
run's HParams session (its config's values, the metrics above, and its end status) and
the resolved config as text, so TensorBoard's HParams and Text tabs show the run.
"""
import json
import pathlib

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hparams_summary

from tf_finetune import config as config_lib


class Writers:

  def __init__(self, root):
    root = pathlib.Path(root)
    self.session = tf.summary.create_file_writer(str(root))
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

  def eval_image(self, step, name, png):
    with self.eval.as_default(step=step):
      tf.summary.image(name, tf.io.decode_png(png, channels=3)[None])
    self.eval.flush()

  def start_session(self, config, metric_names, best_metric):
    """The HParams session (the config's scalar values; the task's dev metrics at the last
    evaluation and best_<best_metric>) and the resolved config as text."""
    flat = {k: v for k, v in config_lib.flatten(json.loads(config.to_json())).items()
            if isinstance(v, (bool, int, float, str))}
    metrics = [hparams_api.Metric(name, group="eval", display_name=f"dev {name}")
               for name in list(metric_names) + [f"best_{best_metric}"]]
    with self.session.as_default():
      hparams_api.hparams_config(hparams=[hparams_api.HParam(k) for k in flat], metrics=metrics)
      hparams_api.hparams(flat)
      tf.summary.text("config", "```\n" + config.to_json(indent=1) + "\n```", step=0)
    self.session.flush()

  def end_session(self, best_metrics, status="success"):
    """Writes the best checkpoint's dev metrics and closes the HParams session."""
    self._scalars(self.eval, best_metrics.pop("step", 0),
                  {f"best_{k}": v for k, v in best_metrics.items()})
    status_value = {"success": api_pb2.STATUS_SUCCESS,
                    "failure": api_pb2.STATUS_FAILURE}[status]
    with self.session.as_default():
      tf.summary.experimental.write_raw_pb(
          hparams_summary.session_end_pb(status_value).SerializeToString(), step=0)
    self.flush()

  def flush(self):
    for writer in (self.session, self.train, self.eval):
      writer.flush()

  def close(self):
    for writer in (self.session, self.train, self.eval):
      writer.close()
