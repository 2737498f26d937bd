"""What train, evaluate and export share: data, label vocabulary, encoder, task and model
for a config, and the run directory's files."""
import json
import pathlib
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from tf_finetune import checkpoints
from tf_finetune import text_encoder
from tf_finetune import tasks
from tf_finetune.data import labels as labels_lib
from tf_finetune.data import pipeline
from tf_finetune.data import sources
from tf_finetune.errors import WorkdirError
from tf_finetune.training import peft

CONFIG_FILE = "config.json"
LABELS_FILE = "labels.json"


class Workdir:
  """Paths of the run-directory contract (README.md, "The run directory")."""

  def __init__(self, root):
    self.root = pathlib.Path(root).expanduser()
    self.config = self.root / CONFIG_FILE
    self.labels = self.root / LABELS_FILE
    self.checkpoints = self.root / "checkpoints"
    self.best = self.checkpoints / "best"
    self.best_json = self.checkpoints / "best.json"
    self.tensorboard = self.root / "tensorboard"
    self.eval = self.root / "eval"
    self.export = self.root / "export"

  def load_config(self):
    import ml_collections
    if not self.config.is_file():
      raise WorkdirError(f"{self.root}: no {CONFIG_FILE}; is this a tf_finetune run directory?")
    from tf_finetune import config as config_lib
    saved = json.loads(self.config.read_text())
    # Keys added to tf_finetune after this run was made take their defaults.
    config = config_lib.base_config().to_dict()
    for section, values in saved.items():
      config.setdefault(section, {}).update(values)
    return ml_collections.ConfigDict(config)

  def load_labels(self):
    if not self.labels.is_file():
      raise WorkdirError(f"{self.root}: no {LABELS_FILE}")
    return labels_lib.LabelVocabulary.load(self.labels)


def load_data(config, label_vocabulary=None):
  """Reads the splits; infers the label vocabulary from train unless one is given."""
  stratify = config.task.name == "classification"  # scores and label sets cannot be
  splits = sources.load_splits(config.data, stratify=stratify,
                               allow_empty_label=config.task.name == "multilabel")
  limit = config.data.max_train_examples
  if limit and limit < len(splits["train"]):
    logging.warning("data.max_train_examples=%d: training on a %ssample of %d of %d train "
                    "examples (data.split_seed=%d)", limit, "label-stratified " if stratify else "",
                    limit, len(splits["train"]), config.data.split_seed)
    rest, _ = sources.stratified_split(
        splits["train"], [1 - limit / len(splits["train"])], config.data.split_seed, stratify)
    splits["train"] = splits["train"].subset(rest)
  if label_vocabulary is None:
    label_vocabulary = tasks.build_vocabulary(config, splits["train"])
  return splits, label_vocabulary


def build_encoder(config):
  checkpoint_dir = checkpoints.resolve_checkpoint_dir(config.model.checkpoint)
  spec = checkpoints.read_tokenizer_spec(checkpoint_dir)
  return text_encoder.TextEncoder(spec, config.data.max_seq_length)


def build_model(config, label_vocabulary, *, pretrained=True):
  """Task and model. pretrained=False builds the architecture only (a checkpoint of ours
  is restored into it next), which skips reading the safetensors."""
  checkpoint_dir = checkpoints.resolve_checkpoint_dir(config.model.checkpoint)
  m = config.model
  overrides = {k: m[k] for k in ("num_layers", "hidden_dim", "num_heads", "intermediate_dim")
               if m[k]}
  student_layers = [x for x in config.distill.student_layers.split(",") if x.strip()]
  if student_layers:  # a distillation student: its weights come from the teacher's layers
    overrides["num_layers"] = len(student_layers)
  backbone = checkpoints.load_backbone(
      checkpoint_dir, random_init=m.random_init or not pretrained or bool(student_layers),
      dropout=m.dropout, overrides=overrides)
  task = tasks.get_task(config, label_vocabulary)
  return task, peft.apply(config, task.build_model(backbone))


def report_truncation(splits, encoder):
  """Logs how many examples exceed max_seq_length and lose their tail (never silent); for
  tagging, how many words that costs their prediction (they count as predicted O)."""
  for name, split in splits.items():
    piece_counts = None
    if hasattr(split, "tokens"):
      piece_counts = pipeline.word_piece_counts(split, encoder)
      lost = pipeline.words_without_piece(piece_counts, encoder.max_seq_length)
      if lost:
        logging.warning("%s: %d of %d words get no prediction (cut by data.max_seq_length=%d, "
                        "or no wordpiece left after cleaning) and count as predicted O", name,
                        lost, sum(len(t) for t in split.tokens), encoder.max_seq_length)
    lengths = pipeline.token_lengths(split, encoder, piece_counts)
    over = int((lengths > encoder.max_seq_length).sum())
    logging.info("%s: %d examples, wordpieces per example: median %d, 95th pct %d, max %d",
                 name, len(split), np.median(lengths), np.percentile(lengths, 95), lengths.max())
    if over:
      logging.warning("%s: %d of %d examples (%.1f%%) are longer than data.max_seq_length=%d "
                      "and are truncated to it", name, over, len(split), 100 * over / len(split),
                      encoder.max_seq_length)


MODEL_INPUTS = ("token_ids", "segment_ids", "padding_mask")
_FORWARD = weakref.WeakKeyDictionary()  # model -> its traced inference function


def predict_logits(model, dataset, strategy=None):
  """Logits for every example of an eval dataset, in order.

  With a single-client strategy, the forward pass runs on its replicas (the dataset must
  have static shapes and an example_mask, as pipeline.eval_dataset(static_shapes=True)
  makes): this is how evaluation runs on a TPU.
  """
  if strategy is not None:
    return _predict_logits_distributed(model, dataset, strategy)
  if model not in _FORWARD:
    _FORWARD[model] = tf.function(
        lambda features: model(features, training=False),
        input_signature=[{k: tf.TensorSpec([None, None], tf.int32) for k in MODEL_INPUTS}])
  forward = _FORWARD[model]
  return _concatenate([forward({k: b[k] for k in MODEL_INPUTS}).numpy() for b in dataset])


def _concatenate(batches):
  """Joins batches of logits; per-wordpiece logits [batch, length, tags] are padded (with
  zeros) to the longest batch's length first."""
  if batches and batches[0].ndim == 3:
    width = max(b.shape[1] for b in batches)
    batches = [np.pad(b, [(0, 0), (0, width - b.shape[1]), (0, 0)]) for b in batches]
  return np.concatenate(batches, axis=0)


_DISTRIBUTED_FORWARD = weakref.WeakKeyDictionary()  # model -> (strategy, traced function)


def _predict_logits_distributed(model, dataset, strategy):
  """For single-client strategies (TPUStrategy, MirroredStrategy): each global batch is
  split over the replicas in order, and the local results hold every replica's rows.
  The traced function is kept per model: each new one would retrace (on TPU, recompile)."""
  cached = _DISTRIBUTED_FORWARD.get(model)
  if cached is None or cached[0] is not strategy:
    def replica_fn(features):
      return model({k: features[k] for k in MODEL_INPUTS}, training=False), features[
          "example_mask"]
    cached = (strategy, tf.function(lambda batch: strategy.run(replica_fn, args=(batch,))))
    _DISTRIBUTED_FORWARD[model] = cached
  forward = cached[1]
  logits, mask = [], []
  for batch in strategy.experimental_distribute_dataset(dataset):
    replica_logits, replica_mask = forward(batch)
    logits += [v.numpy() for v in strategy.experimental_local_results(replica_logits)]
    mask += [v.numpy() for v in strategy.experimental_local_results(replica_mask)]
  return _concatenate(logits)[np.concatenate(mask, axis=0) > 0]


def new_checkpoint(model, optimizer=None):
  """Model weights; with an optimizer, also its state and the dropout RNG states.

  Keras 3 does not put its SeedGenerator states in the tf.train.Checkpoint object graph,
  so without listing them a resumed run would draw other dropout masks.
  """
  if optimizer is None:
    return tf.train.Checkpoint(model=model)
  rng_states = [v.value for v in model.variables if v.path.endswith("seed_generator_state")]
  return tf.train.Checkpoint(model=model, optimizer=optimizer, rng_states=rng_states)


def restore_model(workdir, model, which="best"):
  """Restores model weights from `best`, `latest` or a checkpoint path; returns its step."""
  if which == "best":
    if not workdir.best_json.is_file():
      raise WorkdirError(f"{workdir.root}: no best checkpoint yet (checkpoints/best.json)")
    best = json.loads(workdir.best_json.read_text())
    path, step = str(workdir.best / best["checkpoint"]), best["step"]
  elif which == "latest":
    path = tf.train.latest_checkpoint(workdir.checkpoints)
    if path is None:
      raise WorkdirError(f"{workdir.root}: no checkpoint in {workdir.checkpoints}")
    step = int(path.rsplit("-", 1)[1])
  else:
    path, step = which, int(which.rsplit("-", 1)[1])
  new_checkpoint(model).restore(path).expect_partial()
  return path, step
