"""The run and model assembly that train, evaluate and export share: data, label vocabulary,
encoder, task and model for a config; the run directory's files; one way to load a run's
model at a checkpoint (load_run) and one way to evaluate a split (evaluate_split).

Imports only the layers below it (config, checkpoints, text_encoder, peft, data, tasks).
"""
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import weakref

import numpy as np
import tensorflow as tf
from absl import logging

from tf_finetune import atomic
from tf_finetune import checkpoints
from tf_finetune import families
from tf_finetune import config as config_lib
from tf_finetune import text_encoder
from tf_finetune import tasks
from tf_finetune.data import labels as labels_lib
from tf_finetune.data import pii
from tf_finetune.data import pipeline
from tf_finetune.data import sources
from tf_finetune.errors import ConfigError, WorkdirError
from tf_finetune import peft
from tf_finetune import progress
from tf_finetune.tasks import base as tasks_base

CONFIG_FILE = "config.json"
LABELS_FILE = "labels.json"
DATA_DIGEST_FILE = "data_digest.json"
MODEL_DIGEST_FILE = "model_digest.json"


class Workdir:
  """Paths of the run-directory contract (README.md, "The run directory")."""

  def __init__(self, root):
    self.root = pathlib.Path(root).expanduser()
    self.config = self.root / CONFIG_FILE
    self.labels = self.root / LABELS_FILE
    self.data_digest = self.root / DATA_DIGEST_FILE
    self.model_digest = self.root / MODEL_DIGEST_FILE
    self.checkpoints = self.root / "checkpoints"
    self.best = self.checkpoints / "best"
    self.best_json = self.checkpoints / "best.json"
    self.tensorboard = self.root / "tensorboard"
    self.eval = self.root / "eval"
    self.export = self.root / "export"
    self.train_sample = self.root / "train_sample.tsv"  # with data.examples_per_class

  def load_config(self):
    if not self.config.is_file():
      raise WorkdirError(f"{self.root}: no {CONFIG_FILE}; is this a tf_finetune run directory?")
    # Keys added to tf_finetune after this run was made take their defaults, or the value
    # the run was made with where the key's default is not what the code did before it.
    config = config_lib.base_config()
    saved = self._read_sections(config)
    for section, values in saved.items():
      for name, value in values.items():
        self._set_saved_value(config, section, name, value)
    for key, value in self.values_before_keys(saved).items():
      self._set_saved_value(config, *key.split(".", 1), value)
    try:
      config_lib.validate(config, files=False)
    except ConfigError as e:
      raise WorkdirError(f"{self.config}: {e}; the file is damaged, or the run was made by a "
                         "tf_finetune that took that value") from None
    return config

  def _read_sections(self, sections):
    """config.json as {section: {key: value}}; each section one of `sections` (a
    base_config())."""
    saved = atomic.read_json(self.config, dict, "the run's resolved config")
    for section, values in saved.items():
      if not isinstance(values, dict) or section not in sections:
        raise WorkdirError(f"{self.config}: {section!r} is not a config section; the file is "
                           "damaged")
    return saved

  def _set_saved_value(self, config, section, name, value):
    """config[section][name] = value, which must have the type of the key's default (the
    ConfigDict refuses another, except None, or a bool for an int: refused here)."""
    default = config[section].get(name)
    try:
      if default is not None and (value is None or
                                  isinstance(value, bool) != isinstance(default, bool)):
        raise TypeError
      config[section][name] = value
    except TypeError:
      raise WorkdirError(f"{self.config}: {section}.{name}={value!r}: not of the key's type "
                         f"({type(default).__name__}); the file is damaged") from None

  def values_before_keys(self, saved=None):
    """{"section.key": value} of config.VALUES_BEFORE_THE_KEY whose key this run's
    config.json lacks: the run was made before the key, with that value in force."""
    if saved is None:
      saved = self._read_sections(config_lib.base_config())
    return {f"{section}.{name}": value
            for (section, name), value in config_lib.VALUES_BEFORE_THE_KEY.items()
            if name not in saved.get(section, {})}

  def load_labels(self):
    if not self.labels.is_file():
      raise WorkdirError(f"{self.root}: no {LABELS_FILE}")
    return labels_lib.LabelVocabulary.load(self.labels)


def read_best(workdir):
  """checkpoints/best.json: which checkpoint is the best (ckpt-STEP), at which step, and its
  metric's name and value, as the trainer writes them; WorkdirError if it is damaged."""
  best = atomic.read_json(workdir.best_json, dict, "the best checkpoint's name and step")
  step, name = best.get("step"), best.get("checkpoint")
  if not isinstance(name, str) or type(step) is not int:
    problem = "no checkpoint name and step"
  elif step < 0 or name != f"ckpt-{step}":
    problem = f"its checkpoint {name!r:.40} is not that of its step, {step}"
  elif not isinstance(best.get("metric"), str):
    problem = f"its metric {best.get('metric')!r:.40} is not a name"
  elif type(best.get("value")) not in (int, float) or not math.isfinite(best["value"]):
    problem = f"its value {best.get('value')!r:.40} is not a number"
  else:
    return best
  raise WorkdirError(f"{workdir.best_json}: {problem}; the file is damaged")


def load_data(config, label_vocabulary=None, keep_columns=(), keep_in=None):
  """Reads the splits; infers the label vocabulary from train unless one is given.
  keep_columns: data columns kept beside the examples (`Split.columns`) of the splits named
  in keep_in (default: all); never model inputs."""
  stratify = config.task.name in config_lib.SINGLE_LABEL  # scores and label sets are not
  splits = sources.load_splits(config.data, stratify=stratify,
                               allow_empty_label=config.task.name == "multilabel",
                               keep_columns=keep_columns, keep_in=keep_in)
  splits["train"] = sources.sample_train(splits["train"], config.data, stratify)
  if config.data.mask_pii:
    splits = {name: _mask_pii(split) for name, split in splits.items()}
  sources.warn_of_overlap_with_train(splits)
  if label_vocabulary is None:
    label_vocabulary = tasks.build_vocabulary(config, splits["train"])
  return splits, label_vocabulary


# Examples per digest chunk: a changed data set is located to within this many examples
# (data_digest.json holds 16 hex digits per chunk: about 17 bytes per 1,000 examples).
DIGEST_CHUNK = 1000
DIGESTED_SPLITS = ("train", "dev")  # what a training run's steps and best checkpoint follow


def data_digest(splits):
  """{split: {"source", "examples", "chunks"}} of train and dev as training reads them (after
  sampling, screening and PII masking): a SHA-256 prefix of each run of DIGEST_CHUNK examples'
  text, text pair and label (words and tags), in order. Written by hand: no library
  fingerprints a list of examples."""
  digest = {}
  for name in DIGESTED_SPLITS:
    split = splits.get(name)
    if split is None:
      continue
    chunks = []
    for start in range(0, len(split), DIGEST_CHUNK):
      chunk = hashlib.sha256()
      for i in range(start, min(start + DIGEST_CHUNK, len(split))):
        chunk.update(json.dumps(_digested_fields(split, i), ensure_ascii=False).encode() + b"\n")
      chunks.append(chunk.hexdigest()[:16])
    digest[name] = {"source": split.source, "examples": len(split), "chunks": chunks}
  return digest


def _digested_fields(split, i):
  if isinstance(split, sources.TokenSplit):
    return [split.tokens[i], split.tags[i]]
  pair = split.text_pairs[i] if split.text_pairs is not None else None
  return [split.texts[i], pair, split.labels[i]]


def write_data_digest(workdir, splits):
  atomic.write_text(workdir.data_digest, json.dumps(data_digest(splits), indent=1) + "\n")


def read_data_digest(workdir):
  """data_digest.json as write_data_digest wrote it; WorkdirError if it is damaged, so that a
  damaged file neither checks less than the run's data nor is taken for other data."""
  saved = atomic.read_json(workdir.data_digest, dict, "the digest of the run's train and dev data")
  problem = _data_digest_problem(saved)
  if problem:
    raise WorkdirError(f"{workdir.data_digest}: {problem}; the file is damaged; remove it to "
                       "resume without checking the data, as a run made before it was kept does")
  return saved


def _data_digest_problem(saved):
  """What in a digest write_data_digest could not have written (every training run has a
  train and a dev split), or None."""
  missing = [name for name in DIGESTED_SPLITS if name not in saved]
  if missing:
    return f"{missing[0]!r} is missing"
  if len(saved) != len(DIGESTED_SPLITS):
    return f"it names {sorted(set(saved) - set(DIGESTED_SPLITS))} besides {list(DIGESTED_SPLITS)}"
  for name, then in saved.items():
    examples = then.get("examples") if isinstance(then, dict) else None
    chunks = then.get("chunks") if isinstance(then, dict) else None
    if type(examples) is not int or examples < 0 or not isinstance(chunks, list):
      return f"{name!r} is {then!r:.80}, not an example count and chunk digests"
    expected = len(range(0, examples, DIGEST_CHUNK))  # as data_digest chunks them
    if len(chunks) != expected:
      return f"{name}'s {len(chunks)} chunk digests are not the {expected} of {examples} examples"
    bad = next((i for i, c in enumerate(chunks)
                if not (isinstance(c, str) and re.fullmatch(r"[0-9a-f]{16}", c))), None)
    if bad is not None:
      return f"{name}'s chunk {bad + 1} is {chunks[bad]!r:.40}, not 16 hex digits"
  return None


def check_data_digest(workdir, splits):
  """A resumed run must read the data it started on: its steps index into them (the data
  position is the step) and its schedule counts them. Refuses, naming the split's file and
  the first examples that differ, when they changed."""
  if not workdir.data_digest.is_file():  # runs made before the digest was kept
    logging.warning("%s: no %s (a run from an earlier tf_finetune); resuming without checking "
                    "that the data are those the run started on", workdir.root, DATA_DIGEST_FILE)
    return
  saved = read_data_digest(workdir)
  now = data_digest(splits)
  advice = (f"restore the data {workdir.root} started on, or train on these in a new "
            "--workdir (python -m tf_finetune.evaluate scores a finished run on other data)")
  for name, then in saved.items():
    if name not in now:
      raise WorkdirError(f"the run in {workdir.root} was started with a {name} split of "
                         f"{then['examples']} examples ({then.get('source')}); there is none "
                         f"now: {advice}")
    current = now[name]
    if current["chunks"] == then["chunks"]:
      continue
    first = next((c for c, (a, b) in enumerate(zip(then["chunks"], current["chunks"])) if a != b),
                 min(len(then["chunks"]), len(current["chunks"])))
    start = first * DIGEST_CHUNK
    if start < current["examples"]:
      end = min(start + DIGEST_CHUNK, current["examples"])
      where = (f"the first difference is among examples {start + 1}-{end}, which start at "
               f"{splits[name].origins[start]}")
    else:  # the data were cut short
      where = f"the first {current['examples']} are the same"
    raise WorkdirError(f"{current['source']}: the {name} data differ from those the run in "
                       f"{workdir.root} started on ({then['examples']} examples then, "
                       f"{current['examples']} now; {where}): {advice}")


def model_digest(config, *, weights=True):
  """{"checkpoint": its directory, "files": {name: SHA-256}, "weights": {name: SHA-256}} of
  the files of config.model.checkpoint that build_model reads (checkpoints.files_read and
  weight_files): the weights only with `weights` and when the run reads them
  (reads_pretrained_weights)."""
  directory = checkpoints.resolve_checkpoint_dir(config.model.checkpoint)
  read_weights = weights and reads_pretrained_weights(config)
  return {"checkpoint": str(directory),
          "files": _sha256_by_name(directory, checkpoints.files_read(directory)),
          "weights": _sha256_by_name(directory, checkpoints.weight_files(
              directory, with_index=True) if read_weights else [])}


def _sha256_by_name(directory, paths):
  digests = {}
  for path in paths:
    with open(path, "rb") as f:
      digests[str(path.relative_to(directory))] = hashlib.file_digest(f, "sha256").hexdigest()
  return digests


def write_model_digest(workdir, digest):
  atomic.write_text(workdir.model_digest, json.dumps(digest, indent=1) + "\n")


def check_model_digest(workdir, config, *, weights):
  """The run keeps config.model.checkpoint by name and reads its tokenizer (and, to resume,
  its weights) again: they must be the files it started with, or a resumed run, evaluate and
  the export would tokenize with other ids than the run trained on. Refuses, naming the
  file, when one changed, went or came; `weights`: check the weights too (a resume)."""
  path = workdir.model_digest
  if not path.is_file():  # runs made before the digest was kept
    logging.warning("%s: no %s (a run from an earlier tf_finetune); not checking that %s holds "
                    "the files the run started with", workdir.root, MODEL_DIGEST_FILE,
                    config.model.checkpoint)
    return
  saved = atomic.read_json(path, dict, "the digests of the run's checkpoint files")
  problem = _model_digest_problem(saved)
  if problem:
    raise WorkdirError(f"{path}: {problem}; the file is damaged; remove it to go on without "
                       "checking the checkpoint's files, as a run made before it was kept does")
  now = model_digest(config, weights=weights)
  directory = pathlib.Path(now["checkpoint"])
  moved = ("" if saved["checkpoint"] == now["checkpoint"] else
           f" (config.model.checkpoint={config.model.checkpoint!r} was {saved['checkpoint']} "
           "then)")
  advice = f"restore the files the run started on{moved}, or train with these in a new --workdir"
  for kind in ("files", "weights") if weights else ("files",):
    then, current = saved[kind], now[kind]
    for name in sorted(set(then) | set(current)):
      if then.get(name) == current.get(name):
        continue
      if name not in current:
        what = f"missing; the run in {workdir.root} started with it"
      elif name not in then:
        what = f"not there when the run in {workdir.root} started, and read now"
      else:
        what = (f"changed since the run in {workdir.root} started (SHA-256 {then[name][:16]} "
                f"then, {current[name][:16]} now)")
      raise WorkdirError(f"{directory / name}: {what}: {advice}")


def _model_digest_problem(saved):
  """What in a model digest write_model_digest could not have written, or None."""
  if not isinstance(saved.get("checkpoint"), str):
    return f"'checkpoint' is {saved.get('checkpoint')!r:.80}, not a directory"
  for kind in ("files", "weights"):
    digests = saved.get(kind)
    if not isinstance(digests, dict):
      return f"{kind!r} is {digests!r:.80}, not file names and their SHA-256"
    for name, digest in digests.items():
      if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        return f"{kind!r} gives {name!r} {digest!r:.40}, not 64 hex digits"
  if "config.json" not in saved["files"]:
    return "'files' does not name config.json, which every checkpoint has"
  return None


def load_labelled_file(config, data_config, file_name, split_name, keep_columns=()):
  """One labelled file read as `data_config` says (a held-out set evaluated after training)
  and prepared as load_data prepares the run's splits (data.mask_pii)."""
  split = sources.read_labelled_file(data_config, file_name, split_name,
                                     allow_empty_label=config.task.name == "multilabel",
                                     keep_columns=keep_columns)
  return _mask_pii(split) if config.data.mask_pii else split


def _mask_pii(split):
  """data.mask_pii: the split with its texts (and pairs) masked, and the replacements per
  type in the log. A CoNLL sentence's words that overlap one PII span become one word, its
  placeholder, tagged as the first of them was (pii.merge_words, as serving does it)."""
  if isinstance(split, sources.TokenSplit):
    tokens, tags, counts = pii.mask_sentences(split.tokens, split.tags)
    split = dataclasses.replace(split, tokens=tokens, tags=tags)
  else:
    texts, counts = pii.mask_strings(split.texts)
    pairs = None
    if split.text_pairs is not None:
      pairs, pair_counts = pii.mask_strings(split.text_pairs)
      counts = {name: n + pair_counts[name] for name, n in counts.items()}
    split = dataclasses.replace(split, texts=texts, text_pairs=pairs)
  logging.info("data.mask_pii: %s: replaced %s", split.name, ", ".join(
      f"{n} {name}" for name, n in counts.items() if n) or "nothing")
  return split


def build_encoder(config):
  checkpoint_dir = checkpoints.resolve_checkpoint_dir(config.model.checkpoint)
  spec = checkpoints.read_tokenizer_spec(checkpoint_dir)
  d = config.data
  return text_encoder.TextEncoder(spec, d.max_seq_length, long_text=d.long_text,
                                  window_stride=d.window_stride, max_windows=d.max_windows)


def _student_layers(config):
  return [x for x in config.distill.student_layers.split(",") if x.strip()]


def reads_pretrained_weights(config):
  """Does a training run start from the checkpoint's weights? Not with model.random_init, nor
  a distillation student (its weights come from the teacher's layers)."""
  return not config.model.random_init and not _student_layers(config)


def build_model(config, label_vocabulary, encoder=None, *, pretrained=True):
  """Task and model. pretrained=False builds the architecture only (a checkpoint of ours
  is restored into it next), which skips reading the safetensors. The task gets `encoder`
  (built from the config when not given)."""
  encoder = encoder or build_encoder(config)
  checkpoint_dir = checkpoints.resolve_checkpoint_dir(config.model.checkpoint)
  limit = checkpoints.max_tokens(checkpoint_dir)
  if config.data.max_seq_length > limit:
    raise ConfigError(
        f"config.data.max_seq_length={config.data.max_seq_length}: {checkpoint_dir} has "
        f"position embeddings for {limit} tokens; for longer texts use data.long_text="
        "windows or head_tail (see README, Long texts)")
  m = config.model
  overrides = {k: m[k] for k in ("num_layers", "hidden_dim", "num_heads", "intermediate_dim")
               if m[k]}
  student_layers = _student_layers(config)
  if student_layers:  # a distillation student: its weights come from the teacher's layers
    overrides["num_layers"] = len(student_layers)
  backbone_is_random = not pretrained or not reads_pretrained_weights(config)
  backbone = checkpoints.load_backbone(checkpoint_dir, random_init=backbone_is_random,
                                       dropout=m.dropout, overrides=overrides)
  checkpoints.check_vocabulary_fits(encoder.spec, backbone, checkpoint_dir)
  logging.info("Encoder: %s: model_type=%s (keras-hub %s%s); tokenizer: %s",
               checkpoint_dir, families.family_of(backbone).model_type,
               type(backbone).__name__, ", random weights" if m.random_init else "",
               encoder.spec.describe())
  task = tasks.get_task(config, label_vocabulary, encoder)
  task.sentence_pooling = checkpoints.sentence_pooling(checkpoint_dir)
  return task, peft.apply(config, task.build_model(backbone))


MODEL_INPUTS = tasks_base.MODEL_INPUTS
_ROWS, _EXAMPLES = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)
PACKED_INPUTS = {**{k: _ROWS for k in MODEL_INPUTS + ("position_ids", "example_ids")},
                 "example_rows": _EXAMPLES, "example_starts": _EXAMPLES}
_FORWARD = weakref.WeakKeyDictionary()  # model -> its traced inference function
_PACKED_FORWARD = weakref.WeakKeyDictionary()  # model -> (task, its traced packed forward)


def predict_logits(model, dataset, strategy=None, task=None, progress_log=None):
  """Logits for every example of an eval dataset, in order; each batch's rows are added to
  `progress_log` (a progress.ProgressLog).

  With a single-client strategy, the forward pass runs on its replicas (the dataset must
  have static shapes and an example_mask, as pipeline.eval_dataset(static_shapes=True)
  makes): this is how evaluation runs on a TPU. With `task`, the batches are packed
  (pipeline.eval_dataset(packing=True)) and go through task.inference_logits of the model
  task.traced_inference names, then through the layer it names, if any.
  """
  if strategy is not None:
    return _predict_logits_distributed(model, dataset, strategy, progress_log)
  head = None
  if task is not None:
    model, head = task.traced_inference(model)
    if _PACKED_FORWARD.get(model, (None,))[0] is not task:
      _PACKED_FORWARD[model] = (task, tf.function(
          lambda batch: task.inference_logits(model, batch),
          input_signature=[PACKED_INPUTS], autograph=False))
    forward, inputs = _PACKED_FORWARD[model][1], PACKED_INPUTS
  else:
    if model not in _FORWARD:
      _FORWARD[model] = tf.function(
          lambda features: model(features, training=False), autograph=False,
          input_signature=[{k: tf.TensorSpec([None, None], tf.int32) for k in MODEL_INPUTS}])
    forward, inputs = _FORWARD[model], MODEL_INPUTS
  outputs = []
  for batch in dataset:
    outputs.append(forward({k: batch[k] for k in inputs}).numpy())
    if progress_log is not None:
      progress_log.add(len(outputs[-1]))
  outputs = _concatenate(outputs)
  return outputs if head is None else head(outputs).numpy()


def _concatenate(batches):
  """Joins batches of logits; per-wordpiece logits [batch, length, tags] are padded (with
  zeros) to the longest batch's length first."""
  if batches and batches[0].ndim == 3:
    width = max(b.shape[1] for b in batches)
    batches = [np.pad(b, [(0, 0), (0, width - b.shape[1]), (0, 0)]) for b in batches]
  return np.concatenate(batches, axis=0)


_DISTRIBUTED_FORWARD = weakref.WeakKeyDictionary()  # model -> (strategy, traced function)


def _predict_logits_distributed(model, dataset, strategy, progress_log=None):
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
    batch_mask = [v.numpy() for v in strategy.experimental_local_results(replica_mask)]
    mask += batch_mask
    if progress_log is not None:
      progress_log.add(sum(int(m.sum()) for m in batch_mask))
  return _concatenate(logits)[np.concatenate(mask, axis=0) > 0]


def new_checkpoint(model, optimizer=None, **more):
  """Model weights; with an optimizer, also its state and the dropout RNG states (and
  `more` trackables, such as the trainer's run state).

  Keras 3 does not put its SeedGenerator states in the tf.train.Checkpoint object graph,
  so without listing them a resumed run would draw other dropout masks.
  """
  if optimizer is None:
    return tf.train.Checkpoint(model=model)
  rng_states = [v.value for v in model.variables if v.path.endswith("seed_generator_state")]
  return tf.train.Checkpoint(model=model, optimizer=optimizer, rng_states=rng_states, **more)


_CHECKPOINT_INDEX = re.compile(r"ckpt-(\d+)\.index")


def training_checkpoints(workdir):
  """The training checkpoints in WORKDIR/checkpoints, newest first: each ckpt-N.index, by N.

  The files are the record, not TensorFlow's `checkpoint` state file: that is written after
  a checkpoint's files (a kill between the two leaves it one save behind), and it can be
  lost or damaged on its own."""
  return checkpoints_in(workdir.checkpoints)


def checkpoints_in(directory):
  """The checkpoints (ckpt-N.index) in `directory`, newest (largest N) first."""
  if not directory.is_dir():
    return []
  found = [int(match.group(1)) for match in map(_CHECKPOINT_INDEX.fullmatch,
                                                 os.listdir(directory)) if match]
  return [str(directory / f"ckpt-{step}") for step in sorted(found, reverse=True)]


def latest_checkpoint(workdir):
  """The newest training checkpoint in WORKDIR/checkpoints, or None."""
  found = training_checkpoints(workdir)
  return found[0] if found else None


def first_line(error):
  """An error's first line, at most 300 characters: for one-line messages."""
  return (getattr(error, "message", None) or str(error)).strip().splitlines()[0][:300]


def restore_checkpoint(checkpoint, path, workdir, resuming=False, choices=None):
  """Restores `path` into `checkpoint`, or one WorkdirError naming the file and what to do
  (`choices`: the other checkpoints to use, as the error names them)."""
  choices = choices or "use --checkpoint=latest, --checkpoint=best, or another checkpoint path"
  if not tf.io.gfile.exists(f"{path}.index"):
    raise WorkdirError(f"{path}: no such checkpoint ({path}.index is missing); {choices}")
  # A resume meets only intact checkpoints here (training/resume.py sets damaged ones aside).
  advice = ("its files read whole, so it was written for another model (another run's "
            "checkpoint, or another tf_finetune version's): move its files (ckpt-N.index, "
            "ckpt-N.data-*) out of the directory to resume from the one before, or train in a "
            "new --workdir" if resuming else "the checkpoint or run directory is damaged; "
            f"{choices}")
  try:
    status = checkpoint.restore(path)
    if resuming:
      status.assert_existing_objects_matched()
    else:
      status.expect_partial()
  except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
    labels = ""
    if "shape" in str(e).lower() and workdir.labels.is_file():
      labels = (f"; {workdir.labels} may not match the checkpoint's head (the weights have "
                "another shape)")
    raise WorkdirError(f"{path}: cannot be restored ({first_line(e)}){labels}; {advice}") \
        from None


@dataclasses.dataclass
class Run:
  """A run's model at one checkpoint, with what it was built from."""
  workdir: Workdir
  config: object
  labels: labels_lib.LabelVocabulary
  encoder: text_encoder.TextEncoder
  task: object
  model: object
  checkpoint: str  # the checkpoint path restored
  step: int


def load_run(workdir, checkpoint="best", *, merge_lora=False):
  """The one way to load a run's model: `checkpoint` is best, latest or a checkpoint path.
  With merge_lora, a LoRA model comes merged (no LoRA variables), as export needs it.
  Build under a strategy's scope to place the model there."""
  wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  config, labels = wd.load_config(), wd.load_labels()
  check_model_digest(wd, config, weights=False)  # the run's own weights are restored below
  encoder = build_encoder(config)
  task, model = build_model(config, labels, encoder, pretrained=False)
  path, step = restore_model(wd, model, checkpoint)
  if merge_lora and config.peft.method == "lora":
    plain_config = config.copy_and_resolve_references()
    plain_config.peft.method = "none"
    model = peft.merged_model(config, model, lambda: build_model(
        plain_config, labels, encoder, pretrained=False)[1])
  return Run(wd, config, labels, encoder, task, model, path, step)


def evaluate_split(task, model, split, *, batch_size, label_values=None, static_shapes=False,
                   strategy=None):
  """The one way to evaluate a split: (label values, logits of every example in file
  order; with data.long_text=windows, its windows' logits pooled). The task's
  report(label_values, logits, calibration) turns them into metrics.
  With a single-client strategy and static shapes, the forward pass runs on its replicas.
  A forward pass longer than progress.EVERY_SECONDS logs its progress."""
  if label_values is None:
    label_values = task.label_values(split)
  if task.windowed:  # counting the windows tokenizes the split: only once a line is due
    progress_log = progress.ProgressLog(f"{split.name} forward pass",
                                        lambda: task.window_counts(split).sum(), "windows")
  else:
    progress_log = progress.ProgressLog(f"{split.name} forward pass", len(split))
  packing = strategy is None and not task.packing_refusal(training=False)
  # Unpacked, each batch is padded to its longest example, so batches of similar lengths
  # pad less. Tagging keeps file order: its label values locate each word in the model's rows.
  order = None if packing or task.token_labels else _shortest_first(split)
  batched_split, batched_values = split, label_values
  if order is not None:
    batched_split, batched_values = split.subset(order), np.asarray(label_values)[order]
  dataset = pipeline.eval_dataset(batched_split, batched_values, task, batch_size=batch_size,
                                  static_shapes=static_shapes, packing=packing)
  logits = task.example_logits(
      batched_split, predict_logits(model, dataset, strategy, task if packing else None,
                                    progress_log))
  if order is not None:
    in_file_order = np.empty_like(logits)
    in_file_order[order] = logits
    logits = in_file_order
  return label_values, logits


def _shortest_first(split):
  """The split's example indices by length in characters (text and text pair), shortest
  first: a tokenizer-free proxy for wordpieces."""
  lengths = [len(text) for text in split.texts]
  if split.text_pairs is not None:
    lengths = [n + len(pair) for n, pair in zip(lengths, split.text_pairs)]
  return np.argsort(lengths, kind="stable")


def unreadable_checkpoint(path):
  """Why the checkpoint's files cannot be read whole, or None when every tensor reads
  (with its checksum)."""
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, ValueError, IndexError) as e:  # IndexError: a short data file
    return first_line(e)
  return None


def _restore_best(workdir, model):
  """The best checkpoint (best.json); when its files are gone or do not read whole, the
  training checkpoint of the same step, which holds the same weights (the loop saves it
  right after that step's evaluation), with a warning; refused with task.wise_ft_alpha < 1,
  whose training checkpoints hold the trained weights, not the evaluated mix. Returns
  (path, step)."""
  if not workdir.best_json.is_file():
    raise WorkdirError(f"{workdir.root}: no best checkpoint yet (checkpoints/best.json); use "
                       "--checkpoint=latest or a checkpoint path")
  try:
    best = read_best(workdir)
  except WorkdirError as e:
    raise WorkdirError(f"{e}; use --checkpoint=latest or a checkpoint path, or run the training "
                       "command again, which writes the file anew from the run's newest "
                       "checkpoint") from None
  path, step = str(workdir.best / best["checkpoint"]), best["step"]
  same_step = str(workdir.checkpoints / f"ckpt-{step}")
  kept = tf.io.gfile.exists(f"{same_step}.index")
  choices = ("use --checkpoint=latest or a checkpoint path (the training checkpoint of the "
             f"same step, {same_step}, is not kept)")
  if not tf.io.gfile.exists(f"{path}.index"):
    if not kept:
      raise WorkdirError(f"{workdir.best_json}: names {best['checkpoint']}, which is not in "
                         f"{workdir.best}; {choices}")
    state = f"not in {workdir.best}"
  else:
    try:
      restore_checkpoint(new_checkpoint(model), path, workdir, choices=choices)
      return path, step
    except WorkdirError:
      why = unreadable_checkpoint(path)
      if why is None or not kept:  # intact but not this model's, or nothing to fall back on
        raise
      state = f"damaged ({why})"
  alpha = workdir.load_config().task.wise_ft_alpha
  if alpha < 1:
    raise WorkdirError(
        f"{path}: the best checkpoint (step {step}) is {state}, and with task.wise_ft_alpha="
        f"{alpha} the training checkpoint of the same step, {same_step}, holds the trained "
        "encoder, not WiSE-FT's mix the best held; use --checkpoint=latest or a checkpoint "
        "path (each holds its own encoder and the head fitted on it)")
  logging.warning("%s: the best checkpoint (step %d) is %s; restoring %s, the training "
                  "checkpoint of the same step, which holds the same weights", path, step,
                  state, same_step)
  restore_checkpoint(new_checkpoint(model), same_step, workdir)
  return same_step, step


def restore_model(workdir, model, which="best"):
  """Restores model weights from `best`, `latest` or a checkpoint path; returns its step."""
  choices = None  # restore_checkpoint's advice
  if which == "best":
    return _restore_best(workdir, model)
  if which == "latest":
    found = training_checkpoints(workdir)
    if not found:
      raise WorkdirError(f"{workdir.root}: no checkpoint in {workdir.checkpoints}")
    path, step = found[0], _checkpoint_step(found[0])
    choices = "use --checkpoint=best" + (
        f" or the checkpoint before it, --checkpoint={found[1]}" if len(found) > 1 else "")
  else:
    path, step = which, _checkpoint_step(which)
  restore_checkpoint(new_checkpoint(model), path, workdir, choices=choices)
  return path, step


def _checkpoint_step(path):
  """The N of a checkpoint path .../ckpt-N."""
  name = pathlib.Path(path).name
  number = name.rsplit("-", 1)[-1]
  if "-" not in name or not number.isdigit():
    raise WorkdirError(f"--checkpoint={path}: not best, latest or a checkpoint path such as "
                       "WORKDIR/checkpoints/ckpt-120")
  return int(number)
