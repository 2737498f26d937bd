"""Predict with an exported SavedModel: classification, multi-label, regression or NER.

  python -m tf_finetune.predict --model=runs/bbc/export/bbc/1 "first text" "second text"
  python -m tf_finetune.predict --model=EXPORT_DIR --input=texts.txt --output_format=jsonl
  cat texts.txt | python -m tf_finetune.predict --model=EXPORT_DIR

One text per argument or per input line (for sentence-pair models: text<TAB>pair, one tab;
a single-text model's line holds no tab, unless --output_format=jsonl). Prints,
as TSV (default) or JSON lines, the text and: label and probability (classification), the
predicted labels (multi-label, at the thresholds tuned on dev), the score (regression), or
the entities (tagging): in TSV `type[start:end]=surface (score)` joined by "; ", in JSON
a list of {type, start, end, text, score} with character offsets into the text.

Every text gets a `truncated` field: true when it had more wordpieces than the model's
max_seq_length and its tail was not read.

Input lines: output line i is input line i. A blank input line gets an output line whose
fields are empty (TSV) or null with "blank": true (JSON lines), and is not sent to the
model. Input that is not UTF-8 stops with its line number before anything is printed,
unless --errors=replace, which writes U+FFFD for the bad bytes and says how many lines had
them. Empty input is an error. Work longer than 30 s logs a progress line (texts/s, ETA) on
stderr every 30 s.

Ensembles: `--model=A --model=B ...` (exports of classification runs with the same labels,
or of regression runs) averages the models' probabilities (or scores) per text.
"""
import json
import pathlib
import re

from absl import app
from absl import flags

from tf_finetune import cli
from tf_finetune import progress
from tf_finetune.data.labels import LabelVocabulary
from tf_finetune.errors import UserError, WorkdirError
from tf_finetune.export import WARMUP_FILE

_MODEL = flags.DEFINE_multi_string(
    "model", None, "Exported SavedModel directory; given several times, an ensemble that "
    "averages the models' probabilities (classification) or scores (regression).",
    required=True)
_INPUT = flags.DEFINE_string("input", None, "File with one text per line ('-': stdin).")
_FORMAT = flags.DEFINE_enum("output_format", "tsv", ["tsv", "jsonl"], "Output format.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Texts per call.", lower_bound=1)
_ERRORS = flags.DEFINE_enum("errors", "strict", ["strict", "replace"],
                            "Input bytes that are not UTF-8: strict (stop, naming the line) or "
                            "replace (U+FFFD, counted on stderr).")


def _saved_model_hint(path):
  """Where the export is when --model names a run directory or a model's base directory
  (TF Serving's layout: BASE/<version>/saved_model.pb)."""
  found = sorted(pathlib.Path(path).glob("*/saved_model.pb")) or sorted(
      pathlib.Path(path).glob("export/*/*/saved_model.pb"))
  found = [f.parent for f in found if f.parent.name.isdigit()]
  if not found:
    return ""
  newest = max(found, key=lambda version: (version.parent, int(version.name)))
  return f"; it holds the export {newest}: pass --model={newest}"


def _damaged_by_fingerprint(path):
  """What of the SavedModel at `path` no longer matches the hashes its fingerprint.pb
  recorded at export, recomputed by TensorFlow's own fingerprinting (saved_model.pb and
  variables/variables.index); None when all match, when there is no fingerprint.pb
  (TensorFlow before 2.12), or when the recomputation fails (the load then says why). A
  damaged graph can fail anywhere in TensorFlow's loader or crash the process when called
  (a segmentation fault, found by tools/fuzz_files.py), so it is refused before loading."""
  from tensorflow.core.protobuf import fingerprint_pb2
  from tensorflow.python.saved_model import pywrap_saved_model
  file = pathlib.Path(path) / "fingerprint.pb"
  if not file.is_file():
    return None
  try:
    recorded = fingerprint_pb2.FingerprintDef.FromString(file.read_bytes())
  except Exception as e:  # noqa: BLE001; protobuf's DecodeError, or an OSError
    return f"its fingerprint.pb cannot be read ({str(e).strip().splitlines()[-1][:200]})"
  try:
    now = fingerprint_pb2.FingerprintDef.FromString(
        pywrap_saved_model.fingerprinting.CreateFingerprintDef(str(path)))
  except Exception:  # noqa: BLE001
    return None
  # A protocol buffer cut between two fields (or to nothing) still parses, without the
  # fields after the cut; every way of hashing writes its version, and the same way writes
  # the fields the recomputation holds (a hash of zero, which counts as absent, has odds of
  # 2**-64).
  held = {field.name for field, _ in recorded.ListFields()}
  missing = [field.name for field, _ in now.ListFields() if field.name not in held]
  if "version" in missing or (now.version.producer == recorded.version.producer and missing):
    return (f"its fingerprint.pb cannot be read (it holds no {', '.join(missing)}: the file "
            "ends before its last fields)")
  if now.version.producer != recorded.version.producer:  # another way of hashing
    return None
  if now.saved_model_checksum != recorded.saved_model_checksum:
    return "its saved_model.pb does not match the hash its fingerprint.pb recorded at export"
  if now.checkpoint_hash != recorded.checkpoint_hash:
    return ("its variables/variables.index does not match the hash its fingerprint.pb "
            "recorded at export")
  return None


def _serving_signature(loaded, path):
  """The serving_default signature of a loaded tf_finetune export; any other SavedModel is
  refused in one line (its inputs would fail at the first call)."""
  import tensorflow as tf
  signature = loaded.signatures.get("serving_default")
  read = "predict reads the exports of `python -m tf_finetune.export`"
  if signature is None:
    raise SystemExit(f"error: {path}: the SavedModel has no serving_default signature (it "
                     f"has: {', '.join(loaded.signatures) or 'none'}); {read}")
  inputs = signature.structured_input_signature[1]
  outputs = set(signature.structured_outputs)
  if not ("text" in inputs and set(inputs) <= {"text", "text_pair"} and
          all(spec.dtype == tf.string for spec in inputs.values()) and
          "truncated" in outputs and outputs & {"label", "labels", "score", "entity_type"}):
    takes = ", ".join(f"{name} ({spec.dtype.name})" for name, spec in sorted(inputs.items()))
    raise SystemExit(f"error: {path}: not a tf_finetune export: its serving_default takes "
                     f"{takes or 'nothing'} and returns {', '.join(sorted(outputs))}, where a "
                     "tf_finetune export takes text (string; and text_pair) and returns "
                     f"truncated and label, labels, score or the entities; {read}")
  return signature


def _op_error_message(error):
  """The first line of an error without TensorFlow's function-node prefix and op suffix."""
  lines = str(error).strip().splitlines() or [""]
  why = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[0])
  return re.sub(r"\s*\[Op:[^\]]*\]( name:.*)?$", "", why)


def _warmup_problem(path, loaded):
  """What in the export's assets.extra/tf_serving_warmup_requests would make TF Serving
  refuse the model, or None (also when there is no such file: warmup is optional). TF
  Serving reads it at load with a checksummed TFRecord reader, parses each record as a
  PredictionLog, at most 1,000 of them, and runs each request; a failure of any fails the
  load (saved_model_warmup_util.cc). fingerprint.pb does not cover the file. Checked here
  as TF Serving reads it, and each request against the signatures of the loaded model
  instead of running it."""
  import tensorflow as tf
  from tensorflow_serving.apis import prediction_log_pb2
  file = pathlib.Path(path) / "assets.extra" / WARMUP_FILE
  if not file.is_file():
    return None
  number = 0
  try:
    for number, record in enumerate(tf.data.TFRecordDataset(str(file)).as_numpy_iterator(), 1):
      if number > 1000:
        return "holds more than the 1,000 records TF Serving reads"
      log = prediction_log_pb2.PredictionLog()
      log.ParseFromString(record)
      kind = log.WhichOneof("log_type")
      if kind != "predict_log":
        return f"record {number} is a {kind or 'empty'} request, where the model answers predict"
      request = log.predict_log.request
      name = request.model_spec.signature_name or "serving_default"
      signature = loaded.signatures.get(name)
      if signature is None:
        return f"record {number} asks for the signature {name!r}, which the model does not have"
      wanted = signature.structured_input_signature[1]
      if set(request.inputs) != set(wanted) or any(
          tensor.dtype != wanted[key].dtype.as_datatype_enum or len(tensor.tensor_shape.dim) != 1
          for key, tensor in request.inputs.items()):
        given = ", ".join(f"{key} ({tf.dtypes.as_dtype(t.dtype).name if t.dtype else '?'}, "
                          f"rank {len(t.tensor_shape.dim)})"
                          for key, t in sorted(request.inputs.items()))
        return (f"record {number} gives {given or 'no inputs'} to {name}, which takes "
                f"{', '.join(f'{k} ({v.dtype.name}, rank 1)' for k, v in sorted(wanted.items()))}")
  except Exception as e:  # noqa: BLE001; DataLossError (checksum, cut short), DecodeError
    return f"cannot be read (record {number + 1}: {type(e).__name__}: {_op_error_message(e)[:200]})"
  return None


class Predictor:
  """One exported model, or several averaged (an ensemble), on batches of raw texts."""

  def __init__(self, paths):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops the SavedModel uses)
    self.paths = list(paths)
    self.serves = []
    for path in self.paths:
      damage = _damaged_by_fingerprint(path)
      if damage:
        raise SystemExit(f"error: {path}: cannot load a SavedModel: {damage}. It is damaged "
                         "(cut short, garbled or changed since); export the run again")
      try:
        loaded = tf.saved_model.load(path)
      except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: cannot load a SavedModel "
                         f"({str(e).splitlines()[0]}){_saved_model_hint(path)}")
      except (tf.errors.OpError, IndexError) as e:  # IndexError: variables/ cut short
        why = _op_error_message(e)
        damaged = isinstance(e, (IndexError, tf.errors.DataLossError)) or any(
            sign in why.lower() for sign in ("variables", "checksum", "sstable"))
        raise SystemExit(f"error: {path}: cannot load a SavedModel ({why[:300]})" + (
            ": its variables/ files are damaged (cut short, garbled or missing); export the "
            "run again" if damaged else "")) from None
      except Exception as e:  # noqa: BLE001; a damaged graph fails anywhere in TF's loader
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise SystemExit(f"error: {path}: cannot load a SavedModel ({why[:300]}): "
                         "TensorFlow's loader failed on its saved_model.pb, which is damaged "
                         "or not a SavedModel this TensorFlow reads; export the run again") \
            from None
      self.serves.append(_serving_signature(loaded, path))
      problem = _warmup_problem(path, loaded)
      if problem:
        raise SystemExit(f"error: {path}: its assets.extra/{WARMUP_FILE}, which TF Serving "
                         f"replays when it loads the model, {problem}: TF Serving would refuse "
                         "the model; export the run again")
    self.has_pairs = "text_pair" in self.serves[0].structured_input_signature[1]
    self.labels = None
    if len(self.serves) > 1:
      self._check_ensemble()

  def _check_ensemble(self):
    outputs = [set(serve.structured_outputs) for serve in self.serves]
    kinds = {"probabilities" in o and "label" in o and "labels" not in o for o in outputs}
    scores = {"score" in o for o in outputs}
    if not (kinds == {True} or scores == {True}):
      raise SystemExit(f"error: --model: an ensemble takes classification or regression "
                       f"exports only, all of one kind ({', '.join(self.paths)})")
    if len({"text_pair" in s.structured_input_signature[1] for s in self.serves}) > 1:
      raise SystemExit("error: --model: some models take sentence pairs and some do not")
    if kinds == {True}:
      labels = []
      for path in self.paths:
        file = pathlib.Path(path) / "assets.extra" / "labels.json"
        if not file.is_file():
          raise SystemExit(f"error: {path}: no assets.extra/labels.json (exported before "
                           "ensembles existed; export the run again)")
        try:
          labels.append(LabelVocabulary.load(file).labels)
        except WorkdirError as e:
          raise SystemExit(f"error: {e}; export the run again") from None
      if any(l != labels[0] for l in labels):
        raise SystemExit(f"error: --model: the models have different labels: {labels}")
      self.labels = labels[0]

  def __call__(self, batch):
    """Outputs for a list of texts (pairs as text<TAB>pair), averaged over the models."""
    import numpy as np
    import tensorflow as tf
    if self.has_pairs:
      pairs = [t.split("\t", 1) + [""] * (1 - t.count("\t")) for t in batch]
      inputs = {"text": tf.constant([p[0] for p in pairs]),
                "text_pair": tf.constant([p[1] for p in pairs])}
    else:
      inputs = {"text": tf.constant(batch)}
    outs = [serve(**inputs) for serve in self.serves]
    if len(outs) == 1:
      return outs[0]
    if self.labels is not None:
      probabilities = np.mean([o["probabilities"].numpy() for o in outs], axis=0)
      return {"probabilities": tf.constant(probabilities), "truncated": outs[0]["truncated"],
              **({"windows_used": outs[0]["windows_used"]} if "windows_used" in outs[0] else {}),
              "label": tf.constant([self.labels[i] for i in probabilities.argmax(-1)])}
    return {"score": tf.constant(np.mean([o["score"].numpy() for o in outs], axis=0)),
            "truncated": outs[0]["truncated"]}


def main(argv):
  texts = cli.read_texts(argv[1:], _INPUT.value, _ERRORS.value)
  cli.import_tensorflow_quietly()
  predict = Predictor(_MODEL.value)
  _check_lines(texts, argv[1:], predict.has_pairs)
  names = None  # the output fields, from the first batch the model answers
  progress_log = progress.ProgressLog("predict", len(texts), unit="texts")  # on stderr
  for start in range(0, len(texts), _BATCH.value):
    batch = texts[start:start + _BATCH.value]
    asked = [t for t in batch if t.strip()]
    answers = iter(_fields(predict(asked)) if asked else [])
    for text in batch:
      fields = next(answers) if text.strip() else None
      if fields is not None:
        names = names or list(fields)
      if _FORMAT.value == "jsonl":
        record = {"text": text, **fields} if fields is not None else {
            "text": text, "blank": True, **{k: None for k in names or []}}
        print(json.dumps(record, ensure_ascii=False))
      elif fields is not None:
        print("\t".join([text] + [_tsv(v) for v in fields.values()]))
      else:  # a blank line: as many (empty) columns as the others
        print("\t".join([text] + [""] * len(names or [])))
    progress_log.add(len(batch))


def _check_lines(texts, arguments, has_pairs):
  """Tabs make columns and line breaks rows: a sentence-pair model's line is text<TAB>pair,
  and a TSV output row is the line, then the outputs. A line they would split otherwise is
  refused before anything is predicted."""
  if has_pairs:
    cli.check_pair_lines(texts, arguments, _INPUT.value, "predict")
  if _FORMAT.value == "jsonl":
    return
  for number, text in enumerate(texts, start=1):
    if "\t" in text and not has_pairs:
      raise UserError(f"{cli.text_place(arguments, _INPUT.value, number)}: the text holds a "
                      "tab, which would add a column to the TSV output (and a data file's "
                      "columns would be read as one text); give one text per line, or "
                      "--output_format=jsonl to predict on the line as it is; nothing was "
                      "predicted")
    if "\r" in text:  # read_texts has taken off a \r that ends a line
      raise UserError(f"{cli.text_place(arguments, _INPUT.value, number)}: the text holds a "
                      "carriage return (\\r) that does not end the line, which readers of the "
                      "TSV output (pandas among them) take for a line break (a file whose "
                      "lines end in \\r alone is read as one text); give one text per line, "
                      "ended by \\n or \\r\\n, or --output_format=jsonl to predict on the "
                      "line as it is; nothing was predicted")


def _tsv(value):
  return str(value).lower() if isinstance(value, bool) else str(value)


def _entities(out):
  count = out["entity_count"].numpy()
  columns = {k: out[f"entity_{k}"].numpy() for k in ("type", "start", "end", "text", "score")}
  for i, n in enumerate(count):
    yield [{"type": columns["type"][i, j].decode("utf-8"), "start": int(columns["start"][i, j]),
            "end": int(columns["end"][i, j]), "text": columns["text"][i, j].decode("utf-8"),
            "score": round(float(columns["score"][i, j]), 6)} for j in range(n)]


def _fields(out):
  """Per example, the task's outputs worth printing, by the signature's output names."""
  extra = [{"truncated": bool(x)} for x in out["truncated"].numpy()]
  if "windows_used" in out:
    extra = [dict(e, windows_used=int(n)) for e, n in zip(extra, out["windows_used"].numpy())]
  return [dict(fields, **more) for fields, more in zip(_task_fields(out), extra)]


def _task_fields(out):
  if "entity_type" in out:
    if _FORMAT.value == "jsonl":
      return [{"entities": e} for e in _entities(out)]
    return [{"entities": "; ".join(f"{x['type']}[{x['start']}:{x['end']}]={x['text']} "
                                   f"({x['score']:.4f})" for x in e)} for e in _entities(out)]
  if "label" in out:
    labels = [x.decode("utf-8") for x in out["label"].numpy()]
    probabilities = out["probabilities"].numpy().max(axis=-1)
    return [{"label": l, "probability": round(float(p), 6)} for l, p in zip(labels, probabilities)]
  if "labels" in out:
    return [{"labels": x.decode("utf-8")} for x in out["labels"].numpy()]
  return [{"score": round(float(x), 6)} for x in out["score"].numpy()]


if __name__ == "__main__":
  app.run(cli.guard(main), flags_parser=cli.parse_flags)
