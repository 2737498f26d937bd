"""SavedModel for TF Serving: raw text in, the task's predictions out.

Layout (TF Serving's): WORKDIR/export/<model_name>/<version>/ with saved_model.pb,
variables/, assets/, assets.extra/tf_serving_warmup_requests and a model card README.md.
A version is written into a hidden temporary directory beside it and renamed into place,
so TF Serving never sees a half-written version; versions are never overwritten.
"""
import contextlib
import json
import os
import pathlib
import shutil

import tensorflow as tf
from absl import logging

from tf_finetune import atomic
from tf_finetune import experiment
from tf_finetune import peft
from tf_finetune import privacy
from tf_finetune.errors import UserError
from tf_finetune.errors import WorkdirError
from tf_finetune.export import WARMUP_FILE
from tf_finetune.tasks.metrics import metrics_line

MODEL_INPUTS = experiment.MODEL_INPUTS


class ServingModule(tf.Module):
  """Signatures around the fine-tuned model; the text path calls the training TextEncoder."""

  def __init__(self, model, task, calibration, has_pairs):
    super().__init__(name="tf_finetune_serving")
    self.model = model
    self.encoder = task.encoder  # tracked: its vocabulary tables go into the SavedModel
    self.has_pairs = has_pairs
    self._task, self._calibration = task, calibration  # (not tracked: plain Python objects)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
  def serve_text(self, text):
    return self._task.serve_text(self.model, text, None, self._calibration)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                tf.TensorSpec([None], tf.string, name="text_pair")])
  def serve_text_pair(self, text, text_pair):
    return self._task.serve_text(self.model, text, text_pair, self._calibration)

  @tf.function(input_signature=[{k: tf.TensorSpec([None, None], tf.int32, name=k)
                                 for k in MODEL_INPUTS}])
  def serve_token_ids(self, features):
    logits = tf.cast(self.model(features, training=False), tf.float32)
    return self._task.serving_outputs(logits, self._calibration)

  def signatures(self):
    text = (self.serve_text_pair if self.has_pairs else self.serve_text).get_concrete_function()
    extra = {name: function.get_concrete_function()
             for name, function in self._task.extra_signatures(self.model).items()}
    return {"serving_default": text,
            "token_ids": self.serve_token_ids.get_concrete_function(), **extra}


def next_version(model_dir):
  versions = [int(p.name) for p in pathlib.Path(model_dir).glob("*") if p.name.isdigit()]
  return max(versions, default=0) + 1


@contextlib.contextmanager
def new_version_dir(model_dir):
  """Yields a temporary directory that becomes model_dir/<next version> only on success.
  Temporary directories of killed exports (.tmp-<version>-<pid> of a pid that is gone) are
  removed first, and said."""
  model_dir = pathlib.Path(model_dir)
  model_dir.mkdir(parents=True, exist_ok=True)
  for stale in sorted(model_dir.glob(".tmp-*-*")):
    pid = stale.name.rsplit("-", 1)[1]
    if pid.isdigit() and not atomic.pid_alive(int(pid)):
      shutil.rmtree(stale, ignore_errors=True)
      logging.warning("Removed %s, left by an export that was killed", stale)
  version = next_version(model_dir)
  final = model_dir / str(version)
  tmp = model_dir / f".tmp-{version}-{os.getpid()}"
  try:
    yield tmp, final
    if final.exists():
      raise WorkdirError(f"{final} appeared during the export; nothing was overwritten")
    tmp.rename(final)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


def load_report(wd, step):
  """eval/report.json when it is of this checkpoint's step, else None."""
  path = wd.eval / "report.json"
  report = atomic.read_json(path, dict, "the evaluation report") if path.is_file() else None
  return report if report and report.get("step") == step else None


def write_warmup_requests(path, model_name, examples, has_pairs):
  """assets.extra/tf_serving_warmup_requests: PredictionLog records TF Serving replays at load."""
  from tensorflow_serving.apis import model_pb2
  from tensorflow_serving.apis import predict_pb2
  from tensorflow_serving.apis import prediction_log_pb2
  with tf.io.TFRecordWriter(str(path)) as writer:
    for batch in examples:
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
      request.inputs["text"].CopyFrom(tf.make_tensor_proto([t for t, _ in batch], dtype=tf.string))
      if has_pairs:
        request.inputs["text_pair"].CopyFrom(
            tf.make_tensor_proto([p for _, p in batch], dtype=tf.string))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())


def model_card(config, labels, step, checkpoint, report, signature_info):
  lines = [
      f"# {config.task.name} model fine-tuned by tf_finetune", "",
      f"- Base checkpoint: `{config.model.checkpoint}`" + (" (random init)" if config.model.random_init else ""),
      f"- Task: {config.task.name}; labels ({len(labels)}): {', '.join(labels)}",
      f"- Data: source `{config.data.source}` {config.data.dir or ''} "
      f"train `{config.data.train_file or config.data.tfds_train_split}`",
      f"- Checkpoint: `{checkpoint}` (step {step})",
      f"- Long texts: {_long_text(config)}",
      "- PII: " + ("e-mail addresses, phone numbers, URLs, IP addresses, payment card numbers "
                   "and IBANs replaced by [EMAIL], [PHONE], [URL], [IP], [CARD], [IBAN] in "
                   "training data and in served text, inside this graph (`data.mask_pii`)"
                   if config.data.mask_pii else "not masked (`data.mask_pii=False`)"),
      (f"- Zero-shot: nothing trained; label descriptions `{config.task.label_descriptions}`, "
       f"logits = {config.task.similarity_scale:g} x cosine similarity"
       if config.task.name == "zero_shot" else
       f"- Few-shot (SetFit-style): contrastive pairs ({config.task.pairs_per_example} per "
       f"train example), then a logistic-regression head on the sentence embedding; "
       f"batch {config.train.batch_size}, learning rate {config.train.learning_rate}, seed "
       f"{config.train.seed}"
       if config.task.name == "setfit" else
       f"- Hyperparameters: batch {config.train.batch_size}, learning rate {config.train.learning_rate}, "
      f"steps {config.train.steps or 'from ' + str(config.train.epochs) + ' epochs'}, max_seq_length "
      f"{config.data.max_seq_length}, weight decay {config.train.weight_decay}, warmup "
      f"{config.train.warmup_fraction}, precision {config.train.precision}, seed {config.train.seed}"),
      "", "## Metrics", ""]
  if report:
    for split, r in report["splits"].items():
      lines.append(f"- {split} ({r['num_examples']} examples): {metrics_line(r)}")
    if report.get("calibration"):
      lines.append(f"- calibrated on dev and applied in the signatures: "
                   f"{json.dumps(report['calibration'])}")
    if report.get("privacy"):
      p = report["privacy"]
      spent = "infinite (no noise)" if p["epsilon"] is None else f"{p['epsilon']:.3f}"
      lines.append(f"- differential privacy (DP-SGD, example level, fine-tuning data only): "
                   f"epsilon {spent} at delta {p['delta']:.3g} after {p['steps']} "
                   f"steps (noise multiplier {p['noise_multiplier']:.4f}, "
                   f"{privacy.clip_text(p)}, sampling rate {p['sampling_rate']:.5f}; "
                   f"{p['accountant']})")
  else:
    lines.append("- not evaluated at this checkpoint (run `python -m tf_finetune.evaluate`)")
  lines += ["", "## Signatures", "", signature_info, ""]
  return "\n".join(lines)


def _long_text(config):
  d = config.data
  if d.long_text == "truncate":
    return f"truncated to their first {d.max_seq_length} wordpieces (`data.long_text=truncate`)"
  if d.long_text == "head_tail":
    return (f"the first quarter and last three quarters of {d.max_seq_length} wordpieces "
            "kept (`data.long_text=head_tail`)")
  how = ("each word read from the window where it has the most context"
         if config.task.name == "tagging" else f"logits pooled by {config.task.window_pooling}")
  return (f"overlapping windows of {d.max_seq_length} wordpieces, "
          f"{d.window_stride or (d.max_seq_length - 2) // 2} apart, at most "
          f"{d.max_windows or 'any number of'} per text, {how} (`data.long_text=windows`), "
          "in evaluation and in serving alike")


def model_dir(workdir, model_name, suffix=""):
  """WORKDIR/export/<model_name><suffix>, the model's base path (TF Serving's); model_name
  (default: the workdir's name) must be one directory name, so that no export lands outside
  WORKDIR/export. Called before the run is loaded, so a bad name costs no model load."""
  workdir = experiment.Workdir(workdir)
  if model_name is not None and (model_name in ("", ".", "..") or "/" in model_name or
                                 os.sep in model_name):
    raise UserError(f"--model_name={model_name!r}: must be one directory name (it becomes "
                    f"{workdir.export}/<model_name>), not a path")
  return workdir.export / f"{model_name or workdir.root.name}{suffix}"


def export_saved_model(workdir, checkpoint="best", model_name=None):
  """Exports a checkpoint of the run; returns the new version directory."""
  base = model_dir(workdir, model_name)
  run = experiment.load_run(workdir, checkpoint, merge_lora=True)
  wd, config, labels, task, step = run.workdir, run.config, run.labels, run.task, run.step
  has_pairs = bool(config.data.text_pair_column)
  report = load_report(wd, step)
  calibration = report.get("calibration") if report else None
  if calibration is None and task.needs_calibration:
    raise WorkdirError(f"{wd.root}: no eval/report.json for step {step} holding the dev "
                       f"calibration a {config.task.name} model needs; run "
                       f"`python -m tf_finetune.evaluate --workdir={wd.root} "
                       f"--checkpoint={checkpoint}` first")
  module = ServingModule(run.model, task, calibration, has_pairs)

  with new_version_dir(base) as (tmp, final):
    tf.saved_model.save(module, str(tmp), signatures=module.signatures())
    (tmp / "assets.extra").mkdir(exist_ok=True)
    labels.save(tmp / "assets.extra" / "labels.json")  # for ensembles (tf_finetune.predict)
    sample = [("This is a warmup request.", "And its pair.")]
    write_warmup_requests(tmp / "assets.extra" / WARMUP_FILE, base.name,
                          [sample, sample * 8], has_pairs)
    inputs = "`text` (and `text_pair`)" if has_pairs else "`text`"
    signature_info = (f"- `serving_default`: {inputs}: string [batch] -> {task.serving_doc}; "
                      "`truncated` bool [batch]: wordpieces were left unread"
                      f"{'; `windows_used` int32 [batch]' if task.windowed else ''}\n"
                      "- `token_ids`: `token_ids`, `segment_ids`, `padding_mask` int32 "
                      f"[batch, length] -> {task.token_ids_doc}; needs no custom ops")
    write_model_card(tmp, config, labels, step, run.checkpoint, report, signature_info)
  return final


def write_model_card(directory, config, labels, step, checkpoint_path, report, usage):
  (directory / "README.md").write_text(
      model_card(config, labels.labels, step, checkpoint_path, report, usage))


def export_hf(workdir, checkpoint="best", model_name=None):
  """Exports a checkpoint as a transformers BertForSequenceClassification directory
  (BertForTokenClassification for tagging)."""
  from tf_finetune.export import hf
  base = model_dir(workdir, model_name, "_hf")
  run = experiment.load_run(workdir, checkpoint, merge_lora=True)
  wd, config, labels = run.workdir, run.config, run.labels
  kind = "Token" if config.task.name == "tagging" else "Sequence"
  with new_version_dir(base) as (tmp, final):
    hf.write_hf_checkpoint(tmp, run.model, config, labels.labels)
    write_model_card(tmp, config, labels, run.step, run.checkpoint, load_report(wd, run.step),
                     f"Load with transformers: `AutoModelFor{kind}Classification."
                     "from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`.")
  return final


def export_tflite(workdir, checkpoint="best", model_name=None, quantize=True):
  """model.tflite: the classifier on token ids (TFLite has no kernels for the tokenizer ops),
  dynamic-range int8 weights by default; vocab.txt and labels.json beside it.

  Converted from Keras 3's own SavedModel export (model.export): converted from a tf.Module
  or a concrete function, the Keras variables stay unset resource variables in TFLite and
  the interpreter returns garbage.
  """
  import tempfile
  base = model_dir(workdir, model_name, "_tflite")
  run = experiment.load_run(workdir, checkpoint, merge_lora=True)
  wd, config, labels, encoder = run.workdir, run.config, run.labels, run.encoder
  with tempfile.TemporaryDirectory() as keras_export:
    run.model.export(keras_export, format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(keras_export)
    if quantize:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
  with new_version_dir(base) as (tmp, final):
    tmp.mkdir()
    (tmp / "model.tflite").write_bytes(flatbuffer)
    labels.save(tmp / "labels.json")
    (tmp / "vocab.txt").write_text("\n".join(encoder.tokenizer.get_vocabulary()) + "\n")
    write_model_card(
        tmp, config, labels, run.step, run.checkpoint, load_report(wd, run.step),
        f"`model.tflite` ({len(flatbuffer):,} bytes, "
        f"{'dynamic-range int8 weights' if quantize else 'float32'}): signature "
        "`serving_default`, inputs `token_ids`, `segment_ids`, `padding_mask` (int32 "
        "[batch, length]) -> `output_0`, the logits; label names by index in `labels.json`; "
        f"tokenize with `vocab.txt` (BERT WordPiece, max_seq_length {config.data.max_seq_length}).")
  return final


def export_peft(workdir, checkpoint="best", model_name=None):
  """Only the weights that trained (LoRA factors, biases, head...): trainable_weights.npz,
  with config.json and labels.json. Load with tf_finetune.peft.load_trainable into
  the model the config builds from its base checkpoint."""
  base = model_dir(workdir, model_name, "_peft")
  run = experiment.load_run(workdir, checkpoint)
  wd, config, labels, model = run.workdir, run.config, run.labels, run.model
  if config.peft.method == "none":
    raise WorkdirError(f"{wd.root}: peft.method is none, every weight trained; export the "
                       "whole model (--format=saved_model)")
  trainable, total = peft.parameter_counts(model)
  with new_version_dir(base) as (tmp, final):
    tmp.mkdir()
    peft.save_trainable(model, tmp / "trainable_weights.npz")
    (tmp / "config.json").write_text(config.to_json(indent=1) + "\n")
    labels.save(tmp / "labels.json")
    write_model_card(
        tmp, config, labels, run.step, run.checkpoint, load_report(wd, run.step),
        f"`trainable_weights.npz`: the {trainable:,} of {total:,} weights that trained under "
        f"peft.method={config.peft.method}, by variable path. Build the model from "
        "`config.json` (`tf_finetune.experiment.build_model`) and call "
        "`tf_finetune.peft.load_trainable(model, path)`.")
  return final
