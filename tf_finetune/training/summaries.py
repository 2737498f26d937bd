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
from absl import logging
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow  # TFRecord's checksum
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import summary as hparams_summary

from tf_finetune import atomic
from tf_finetune import config as config_lib

_RECORD_FRAMING = 16  # a TFRecord's length (8 bytes) and two CRC-32C checksums (4 each)


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


def read_scalars(root):
  """{(writer, tag): [(step, value), ...]} of a run's TensorBoard directory (writer: "train",
  "eval" or "" for the root), as TensorBoard's Python loader reads them."""
  from tensorboard.backend.event_processing import event_accumulator
  found = {}
  for writer in ("", "train", "eval"):
    events = event_accumulator.EventAccumulator(str(pathlib.Path(root) / writer),
                                                size_guidance={"tensors": 0})
    events.Reload()
    for tag in events.Tags()["tensors"]:
      values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
      if all(v.ndim == 0 and v.dtype.kind == "f" for _, v in values):
        found[writer, tag] = [(step, float(v)) for step, v in values]
  return found


def _events(path):
  """(record, Event) of an event file, in order; DataLossError at a damaged or cut record.
  Read in batches (a record at a time is many times slower); a batch that holds the bad record
  fails whole, so the records from it on are read again one at a time."""
  done = 0
  try:
    for batch in tf.data.TFRecordDataset(str(path)).batch(4096):
      for record in batch.numpy():
        yield record, event_pb2.Event.FromString(record)
        done += 1
  except tf.errors.DataLossError:
    for record in tf.data.TFRecordDataset(str(path)).skip(done):
      record = record.numpy()
      yield record, event_pb2.Event.FromString(record)


def session_ended(root):
  """Does the run's TensorBoard directory hold the end of its HParams session?"""
  for path in sorted(pathlib.Path(root).glob("events.out.tfevents.*")):
    try:
      if any(value.tag == hparams_metadata.SESSION_END_INFO_TAG
             for _, event in _events(path) for value in event.summary.value):
        return True
    except tf.errors.DataLossError:
      continue
  return False


def _cut_short(path, offset):
  """Is what follows the last whole record (at `offset`) the start of one a kill cut short:
  its length, whose checksum holds, runs past the end of the file?"""
  with path.open("rb") as f:
    f.seek(offset)
    header = f.read(12)
  if len(header) < 12:
    return True
  length = int.from_bytes(header[:8], "little")
  return (int.from_bytes(header[8:], "little") == pywrap_tensorflow.masked_crc32c(header[:8])
          and offset + _RECORD_FRAMING + length > path.stat().st_size)


def drop_events_after(root, step, *, reopen_session=False, why=None):
  """Removes from the event files under `root` the events of steps after `step` (every event
  for step None, when no checkpoint is restored): what a process stopped without a handler
  (kill -9, the OOM killer, a lost VM) wrote after its last checkpoint, for steps the
  resumed run redoes (checkpoints are numbered by their step). Left in place, TensorBoard's
  Python loader (--load_fast=false) and scripts reading the files with its EventAccumulator
  would show both runs at those steps. A record cut short by the kill goes too. With
  `reopen_session` (a run that ended, resumed to train on: from an older checkpoint when
  its last was damaged, or after it diverged), the end of its HParams session and its
  best_<metric> values go too: the resumed run writes them at its own end. Each file
  changed is rewritten whole, then renamed into place. `why` replaces the log's "after ckpt-N,
  the checkpoint this run resumes from".

  Hand-written: TensorBoard purges such events only on a SessionLog.START event, which
  TF2's summary writers do not write (the Rust loader keeps the later value of a step)."""
  root = pathlib.Path(root)
  steps, ends, cut_short, files = [], 0, 0, 0
  for path in sorted(root.rglob("events.out.tfevents.*")) if root.is_dir() else []:
    kept, dropped, offset = [], 0, 0
    try:
      for record, event in _events(path):
        offset += _RECORD_FRAMING + len(record)
        if event.HasField("file_version"):
          kept.append(record)
        elif step is None or event.step > step:
          steps.append(event.step)
          dropped += 1
        elif reopen_session and _ends_session(event, path.parent == root / "eval"):
          ends += 1
          dropped += 1
        else:
          kept.append(record)
    except tf.errors.DataLossError:
      if not _cut_short(path, offset):
        logging.warning("%s: the record at byte %d is damaged, not cut short by a kill; the "
                        "file is left as it is (TensorBoard reads it up to that record)",
                        path, offset)
        continue
      cut_short += 1
    else:
      if not dropped:
        continue
    files += 1
    if step is None:  # only the file_version event is left
      path.unlink()
      continue
    # TensorBoard reads any file with "tfevents" in its name: the copy's name has none.
    with atomic.replacing(path, stem="rewritten-events") as tmp:
      with tf.io.TFRecordWriter(str(tmp)) as writer:
        for record in kept:
          writer.write(record)
  if files:
    what = [f"{len(steps)} TensorBoard events of steps {min(steps)}-{max(steps)}"] \
        if steps else []
    what += [f"{ends} events that ended its HParams session (its end, best_<metric>)"] \
        if ends else []
    what += [f"{cut_short} records cut short"] if cut_short else []
    logging.warning(
        "%s: removed %s from %d event file%s, written %s", root, " and ".join(what), files,
        "s" if files > 1 else "",
        f"{why or f'after ckpt-{step}, the checkpoint this run resumes from'}; this run does "
        "those steps again" if step is not None else
        "by a process that was stopped before it saved a checkpoint; this run starts anew")
  return len(steps) + ends


def _ends_session(event, in_eval):
  """Is the event one that Writers.end_session wrote?"""
  return any(value.tag == hparams_metadata.SESSION_END_INFO_TAG or
             (in_eval and value.tag.startswith("best_")) for value in event.summary.value)
