"""The hand-off: SavedModel export, its signatures, warmup file and the predict CLI."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (REPO, assert_no_texts_give_no_rows, dev_logits, tiny_checkpoint_dir,
                            tiny_config, write_pair_tsv, write_sentiment_tsv)
from tf_finetune import experiment
from tf_finetune.errors import UserError
from tf_finetune.export import serving
from tf_finetune.training import trainer as trainer_lib


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  data = write_sentiment_tsv(root / "data", n_train=48, n_dev=40)
  workdir = root / "run"
  trainer_lib.Trainer(tiny_config(data, train__steps=6), workdir).train()
  return workdir


@pytest.fixture(scope="module")
def exported(run_dir):
  return serving.export_saved_model(run_dir)


def _dev_logits(run_dir):
  dev, _, logits, label_names = dev_logits(run_dir)
  return dev.texts, logits, label_names


def test_versions_increment_and_nothing_is_left_half_written(run_dir, exported, monkeypatch):
  assert exported.name == "1" and exported.parent.name == "run"
  second = serving.export_saved_model(run_dir, checkpoint="latest")
  assert second.name == "2"
  card = (second / "README.md").read_text()
  assert f"Base checkpoint: `{tiny_checkpoint_dir()}`" in card and "labels (2): 0, 1" in card

  def broken(*args, **kwargs):
    raise RuntimeError("disk full")
  monkeypatch.setattr(serving, "write_warmup_requests", broken)
  with pytest.raises(RuntimeError):
    serving.export_saved_model(run_dir)
  assert sorted(p.name for p in exported.parent.iterdir()) == ["1", "2"]
  for name in ("../elsewhere", "a/b", ".."):  # a model name is one directory, not a path
    for export in (serving.export_saved_model, serving.export_hf):
      with pytest.raises(UserError, match=rf"--model_name='{re.escape(name)}': must be one "
                                          "directory name"):
        export(run_dir, model_name=name)
  assert not (run_dir / "elsewhere").exists() and not (run_dir / "export" / "a").exists()


FRESH_PROCESS = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
texts = json.load(sys.stdin)
model = tf.saved_model.load(sys.argv[1])
out = model.signatures["serving_default"](text=tf.constant(texts))
print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(),
                  "label": [x.decode() for x in out["label"].numpy()],
                  "modules": sorted(m.split(".")[0] for m in sys.modules if m.startswith(("tf_finetune", "keras_hub")))}))
"""


def test_fresh_process_matches_evaluate_on_dev(run_dir, exported):
  texts, logits, labels = _dev_logits(run_dir)
  result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(exported)],
                          input=json.dumps(texts), capture_output=True, text=True, timeout=300,
                          cwd="/")
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["modules"] == []  # neither tf_finetune nor keras_hub is needed to serve
  expected = tf.nn.softmax(logits).numpy()
  served = np.array(out["probabilities"])
  assert (served.argmax(1) == expected.argmax(1)).all()
  np.testing.assert_allclose(served, expected, atol=1e-5)
  assert out["label"] == [labels[i] for i in expected.argmax(1)]


def test_token_id_signature_agrees_with_text_signature(run_dir, exported):
  model = tf.saved_model.load(str(exported))
  texts = tf.constant(["a wonderful film", "boring and far too long !"])
  by_text = model.signatures["serving_default"](text=texts)
  encoder = experiment.build_encoder(experiment.Workdir(run_dir).load_config())
  padded = encoder.pad(encoder(texts))
  by_ids = model.signatures["token_ids"](**padded)
  np.testing.assert_allclose(by_text["logits"], by_ids["logits"], atol=1e-6)
  assert_no_texts_give_no_rows(model.signatures["serving_default"])


def test_saved_model_cli_lists_both_signatures(exported):
  result = subprocess.run(["saved_model_cli", "show", "--all", "--dir", str(exported)],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "signature_def['serving_default']" in result.stdout
  assert "signature_def['token_ids']" in result.stdout
  assert "inputs['text'] tensor_info" in result.stdout


def test_warmup_requests_replay_through_the_signature(exported):
  from tensorflow_serving.apis import prediction_log_pb2
  model = tf.saved_model.load(str(exported))
  records = list(tf.data.TFRecordDataset(
      str(exported / "assets.extra" / serving.WARMUP_FILE)).as_numpy_iterator())
  assert len(records) == 2
  for record in records:
    log = prediction_log_pb2.PredictionLog.FromString(record)
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    out = model.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
    assert out["label"].shape[0] == inputs["text"].shape[0]


@pytest.mark.slow
def test_predict_cli_arguments_file_and_stdin(exported, tmp_path):
  base = [sys.executable, "-m", "tf_finetune.predict", f"--model={exported}"]
  by_args = subprocess.run(base + ["a wonderful film", "a dull mess"], capture_output=True,
                           text=True, timeout=300, cwd=REPO)
  assert by_args.returncode == 0, by_args.stderr[-2000:]
  rows = [line.split("\t") for line in by_args.stdout.strip().splitlines()]
  assert [r[0] for r in rows] == ["a wonderful film", "a dull mess"]
  assert all(r[1] in ("0", "1") and 0.5 <= float(r[2]) <= 1.0 for r in rows)
  texts = tmp_path / "texts.txt"
  texts.write_text("one\ntwo\nthree\n")
  by_file = subprocess.run(base + [f"--input={texts}", "--output_format=jsonl", "--batch_size=2"],
                           capture_output=True, text=True, timeout=300, cwd=REPO)
  records = [json.loads(line) for line in by_file.stdout.strip().splitlines()]
  assert [r["text"] for r in records] == ["one", "two", "three"]
  by_stdin = subprocess.run(base, input="four\nfive\n", capture_output=True, text=True,
                            timeout=300, cwd=REPO)
  assert [line.split("\t")[0] for line in by_stdin.stdout.strip().splitlines()] == ["four", "five"]


@pytest.mark.slow
def test_predict_logs_its_progress_on_stderr_not_among_the_predictions(exported, tmp_path):
  """With every line due (EVERY_SECONDS 0), one line a batch; stdout keeps only the rows."""
  texts = tmp_path / "texts.txt"
  texts.write_text("one\ntwo\nthree\n")
  run = ("import sys; from absl import app; from tf_finetune import progress, predict; "
         "progress.EVERY_SECONDS = 0.0; app.run(predict.main, argv=sys.argv)")
  out = subprocess.run([sys.executable, "-c", run, f"--model={exported}", f"--input={texts}",
                        "--batch_size=2"], capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-2000:]
  assert [line.split("\t")[0] for line in out.stdout.splitlines()] == ["one", "two", "three"]
  lines = re.findall(r"predict: (\d+) of 3 texts \((\d+)%\) \| [\d.]+ texts/s \| ETA \dm\d\ds",
                     out.stderr)
  assert lines == [("2", "67"), ("3", "100")], out.stderr[-2000:]


def _predict(exported, *args, stdin=b""):
  return subprocess.run([sys.executable, "-m", "tf_finetune.predict", f"--model={exported}",
                         *args], input=stdin, capture_output=True, timeout=300, cwd=REPO)


def _predicted_or_refused(export, loads):
  """None after checking that predict answered "good film" (loads), else _refusal's lines."""
  out = _predict(export, "good film")
  if loads:
    assert out.returncode == 0 and out.stdout.decode().startswith("good film\t"), out.stderr
    return None
  return _refusal(out)


def _refusal(out):
  """The stderr lines of a predict that stopped in one line: exit 1, nothing printed."""
  assert out.returncode == 1 and out.stdout == b"" and "Traceback" not in out.stderr.decode()
  return out.stderr.decode().strip().splitlines()


def test_predict_keeps_one_output_line_per_input_line(exported):
  out = _predict(exported, "--output_format=jsonl", stdin=b"a wonderful film\n\n  \na dull mess\n")
  assert out.returncode == 0, out.stderr[-2000:]
  records = [json.loads(line) for line in out.stdout.decode().splitlines()]
  assert [r["text"] for r in records] == ["a wonderful film", "", "  ", "a dull mess"]
  assert [r.get("blank", False) for r in records] == [False, True, True, False]
  assert records[1]["label"] is None and records[0]["label"] in ("0", "1")
  tsv = _predict(exported, stdin=b"a wonderful film\n\na dull mess\n").stdout.decode()
  rows = [line.split("\t") for line in tsv.split("\n")[:-1]]
  assert len(rows) == 3 and len({len(r) for r in rows}) == 1 and rows[1][1:] == ["", "", ""]


def test_predict_refuses_a_tab_or_carriage_return_that_would_break_the_tsv_output(exported, tmp_path):
  """A single-text model reads a whole line as its text: a line holding a tab (a TSV data
  file given as input, text<TAB>label) would be predicted with its label's word in the text
  and printed with a column too many; a carriage return inside a line (a file of old Mac
  line endings, read as one text) is a row break to pandas. TSV output refuses them, naming
  the line; JSON lines keep the text as it is."""
  texts = tmp_path / "dev.tsv"
  texts.write_text("a wonderful film\na dull mess\t0\n")
  out = _predict(exported, f"--input={texts}")
  assert _refusal(out) == [
      f"error: {texts}:2: the text holds a tab, which would add a column to the TSV output "
      "(and a data file's columns would be read as one text); give one text per line, or "
      "--output_format=jsonl to predict on the line as it is; nothing was predicted"]
  assert _refusal(_predict(exported, "fine", "one\ttwo"))[0].startswith("error: argument 2: ")
  old_mac = _refusal(_predict(exported, stdin=b"a wonderful film\ra dull mess\r"))
  assert old_mac == [
      "error: standard input:1: the text holds a carriage return (\\r) that does not end the "
      "line, which readers of the TSV output (pandas among them) take for a line break (a file "
      "whose lines end in \\r alone is read as one text); give one text per line, ended by "
      "\\n or \\r\\n, or --output_format=jsonl to predict on the line as it is; nothing was "
      "predicted"]
  kept = _predict(exported, f"--input={texts}", "--output_format=jsonl")
  assert kept.returncode == 0, kept.stderr[-2000:]
  assert [json.loads(l)["text"] for l in kept.stdout.decode().splitlines()] == [
      "a wonderful film", "a dull mess\t0"]


def test_predict_stops_on_bytes_that_are_not_utf8_before_printing_anything(exported, tmp_path):
  texts = tmp_path / "texts.txt"
  texts.write_bytes(b"fine\nbad \xff byte\nfine again\n")
  out = _predict(exported, f"--input={texts}")
  assert out.returncode == 1 and out.stdout == b""
  assert out.stderr.decode().strip() == (f"error: {texts}:2: bytes b'\\xff' are not valid UTF-8; "
                                         "nothing was predicted (--errors=replace reads them as "
                                         "U+FFFD)")
  replaced = _predict(exported, f"--input={texts}", "--errors=replace")
  assert replaced.returncode == 0
  assert [l.split("\t")[0] for l in replaced.stdout.decode().splitlines()] == [
      "fine", "bad \ufffd byte", "fine again"]
  assert "1 line(s) had bytes that are not UTF-8" in replaced.stderr.decode()


def test_predict_says_when_input_is_empty_and_when_a_text_was_cut(exported):
  empty = _predict(exported)
  assert empty.returncode == 1
  assert empty.stderr.decode().strip() == "error: no text to predict: standard input is empty"
  no_batch = _predict(exported, "--batch_size=0", "a film")  # was a ValueError traceback
  assert no_batch.returncode == 1
  assert no_batch.stderr.decode().strip().splitlines()[-1] == (
      "error: flag --batch_size=0: 0 is not a positive integer")
  long_text = " ".join(["wonderful"] * 100)  # max_seq_length is 32
  out = _predict(exported, "--output_format=jsonl", stdin=f"short film\n{long_text}\n".encode())
  records = [json.loads(line) for line in out.stdout.decode().splitlines()]
  assert [r["truncated"] for r in records] == [False, True]


def test_predict_on_a_run_directory_names_the_export_to_pass(run_dir, exported, tmp_path):
  newest = max((v for v in exported.parent.iterdir() if v.name.isdigit()),
               key=lambda v: int(v.name))  # other tests of this module export more versions
  for wrong in (run_dir, exported.parent):
    out = subprocess.run([sys.executable, "-m", "tf_finetune.predict", f"--model={wrong}",
                          "good film"], capture_output=True, timeout=300, cwd=REPO)
    assert out.returncode == 1 and out.stdout == b""
    assert out.stderr.decode().strip().endswith(
        f"; it holds the export {newest}: pass --model={newest}")
  out = subprocess.run([sys.executable, "-m", "tf_finetune.predict", f"--model={tmp_path}",
                        "good film"], capture_output=True, timeout=300, cwd=REPO)
  assert out.stderr.decode().strip() == (f"error: {tmp_path}: cannot load a SavedModel "
                                         f"(SavedModel file does not exist at: {tmp_path}/"
                                         "{saved_model.pbtxt|saved_model.pb})")


@pytest.mark.parametrize("damage", ["index cut short", "data cut short", "a bit flipped in "
                                    "the data", "data file missing"])
def test_predict_on_an_export_with_damaged_variables_says_so_in_one_line(exported, tmp_path,
                                                                         damage):
  """TensorFlow's checkpoint reader raises its own errors (not OSError) on a SavedModel's
  damaged variables/: each is one line naming the export and what to do, no traceback."""
  copy = tmp_path / "1"
  shutil.copytree(exported, copy)
  index = copy / "variables" / "variables.index"
  data = next((copy / "variables").glob("variables.data-*"))
  if damage == "index cut short":
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 3])
  elif damage == "data cut short":
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
  elif damage == "data file missing":
    data.unlink()
  else:
    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 1
    data.write_bytes(bytes(flipped))
  out = _predict(copy, "good film")
  message = _refusal(out)
  if damage == "index cut short":  # fingerprint.pb holds the index's hash (the test below)
    assert message[-1] == (f"error: {copy}: cannot load a SavedModel: its variables/variables."
                           "index does not match the hash its fingerprint.pb recorded at "
                           "export. It is damaged (cut short, garbled or changed since); "
                           "export the run again")
    return
  assert message[-1].startswith(f"error: {copy}: cannot load a SavedModel ("), message
  assert message[-1].endswith("): its variables/ files are damaged (cut short, garbled or "
                              "missing); export the run again"), message[-1]


def test_a_fingerprint_cut_short_at_any_byte_is_refused(exported, tmp_path):
  """fingerprint.pb is a protocol buffer, which a cut between two of its fields (or to
  nothing) leaves readable, with the fields after the cut zero: such a file was taken for
  one from another way of hashing (its version 0) and the export loaded unchecked. In the
  CLI test below, that was the fate of a cut at byte 10 whenever the first hash's varint
  was 9 bytes long, about one export in two."""
  from tf_finetune import predict
  copy = tmp_path / "1"
  shutil.copytree(exported, copy)
  content = (copy / "fingerprint.pb").read_bytes()
  assert predict._damaged_by_fingerprint(str(copy)) is None
  for length in range(len(content)):
    (copy / "fingerprint.pb").write_bytes(content[:length])
    assert predict._damaged_by_fingerprint(str(copy)).startswith(
        "its fingerprint.pb cannot be read ("), length


@pytest.mark.parametrize("damage", ["graph", "fingerprint cut short", "graph, no fingerprint",
                                    "no fingerprint"])
def test_predict_checks_an_export_against_its_fingerprint(exported, tmp_path, damage):
  """saved_model.pb is checked against the hash fingerprint.pb recorded at export before it
  is loaded: a damaged graph failed inside TensorFlow's loader (a KeyError, found by
  fuzzing: a node input renamed) or crashed the process when called. An export without
  fingerprint.pb (TensorFlow before 2.12) is loaded unchecked, and a damaged graph there is
  still one line."""
  copy = tmp_path / "1"
  shutil.copytree(exported, copy)
  graph, fingerprint = copy / "saved_model.pb", copy / "fingerprint.pb"
  if "graph" in damage:
    content = graph.read_bytes()
    assert b"/Tensordot/axes:output:0" in content
    graph.write_bytes(content.replace(b"/Tensordot/axes:output:0", b"/Tensordot/axes:outpu{:0",
                                      1))
  if damage == "fingerprint cut short":
    fingerprint.write_bytes(fingerprint.read_bytes()[:10])
  if "no fingerprint" in damage:
    fingerprint.unlink()
  message = _predicted_or_refused(copy, loads=damage == "no fingerprint")
  if message is None:
    return
  assert message[-1].startswith(f"error: {copy}: cannot load a SavedModel"), message
  if damage == "graph, no fingerprint":
    assert message[-1].startswith(f"error: {copy}: cannot load a SavedModel (KeyError: ")
    assert message[-1].endswith("): TensorFlow's loader failed on its saved_model.pb, which is "
                                "damaged or not a SavedModel this TensorFlow reads; export the "
                                "run again"), message[-1]
    return
  what = ("its saved_model.pb does not match the hash its fingerprint.pb recorded at export"
          if damage == "graph" else "its fingerprint.pb cannot be read (")
  assert message[-1].startswith(f"error: {copy}: cannot load a SavedModel: {what}"), message
  assert message[-1].endswith(". It is damaged (cut short, garbled or changed since); export "
                              "the run again"), message[-1]


@pytest.mark.parametrize("damage", ["a byte changed", "cut short", "another signature",
                                    "no warmup file"])
def test_predict_checks_the_warmup_requests_tf_serving_replays(exported, tmp_path, damage):
  """assets.extra/tf_serving_warmup_requests is outside fingerprint.pb, and TF Serving refuses
  to load a model whose warmup requests it cannot read or run; predict loaded such an export
  without a word. Now it reads them as TF Serving does (TFRecord checksums, PredictionLog
  protos) and checks each names a signature of the model and its inputs."""
  from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
  copy = tmp_path / "1"
  shutil.copytree(exported, copy)
  warmup = copy / "assets.extra" / serving.WARMUP_FILE
  content = warmup.read_bytes()
  if damage == "a byte changed":
    middle = len(content) // 2
    warmup.write_bytes(content[:middle] + bytes([content[middle] ^ 0x20]) + content[middle + 1:])
  elif damage == "cut short":
    warmup.write_bytes(content[:-7])
  elif damage == "another signature":
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name="classify"))
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(["a text"]))
    with tf.io.TFRecordWriter(str(warmup)) as writer:
      writer.write(prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
  else:
    warmup.unlink()
  message = _predicted_or_refused(copy, loads=damage == "no warmup file")
  if message is None:
    return
  assert message[-1].startswith(
      f"error: {copy}: its assets.extra/tf_serving_warmup_requests, which TF Serving replays "
      "when it loads the model, "), message[-1]
  if damage == "another signature":
    assert "record 1 asks for the signature 'classify', which the model does not have" in \
        message[-1], message[-1]
  else:
    assert "cannot be read (" in message[-1], message[-1]
  assert message[-1].endswith("TF Serving would refuse the model; export the run again"), \
      message[-1]


class _Doubler(tf.Module):
  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")], autograph=False)
  def double(self, x):
    return {"y": x * 2}


@pytest.mark.parametrize("signatures", ["another model's serving_default", "no serving_default"])
def test_predict_on_a_saved_model_that_is_not_a_tf_finetune_export_says_so(tmp_path, signatures):
  """Another tool's SavedModel: its serving_default's inputs ended in TensorFlow's TypeError
  at the first call; one without serving_default was called damaged."""
  module = _Doubler()
  name = "serving_default" if signatures == "another model's serving_default" else "double"
  tf.saved_model.save(module, str(tmp_path / "1"), signatures={name: module.double})
  out = _predict(tmp_path / "1", "good film")
  message = _refusal(out)
  if name == "double":
    assert message[-1] == (f"error: {tmp_path / '1'}: the SavedModel has no serving_default "
                           "signature (it has: double); predict reads the exports of `python -m "
                           "tf_finetune.export`"), message[-1]
  else:
    assert message[-1] == (f"error: {tmp_path / '1'}: not a tf_finetune export: its "
                           "serving_default takes x (float32) and returns y, where a tf_finetune "
                           "export takes text (string; and text_pair) and returns truncated and "
                           "label, labels, score or the entities; predict reads the exports of "
                           "`python -m tf_finetune.export`"), message[-1]


def test_hf_export_loads_in_transformers_with_same_logits(run_dir):
  torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
  import transformers
  path = serving.export_hf(run_dir)
  assert path.name == "1" and path.parent.name == "run_hf"
  for name in ("config.json", "model.safetensors", "vocab.txt", "README.md"):
    assert (path / name).is_file(), name
  # The base checkpoint's tokenizer files come along (the tiny one has no tokenizer.json).
  assert not (path / "tokenizer.json").exists()
  texts = ["a wonderful, moving film", "boring and far too long ! really", "Café naïve 😀"]
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
  batch = tokenizer(texts, padding=True, return_tensors="pt")
  with torch.no_grad():
    theirs = hf_model(**batch).logits.numpy()
  model = experiment.load_run(run_dir, "best").model
  ours = model({"token_ids": batch["input_ids"].numpy().astype(np.int32),
                "segment_ids": batch["token_type_ids"].numpy().astype(np.int32),
                "padding_mask": batch["attention_mask"].numpy().astype(np.int32)}, training=False)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)
  assert hf_model.config.id2label == {0: "0", 1: "1"}


def test_sentence_pair_export_takes_two_strings(tmp_path):
  data = write_pair_tsv(tmp_path / "pairs", ["was", "is", "seemed", "felt"])
  # MiniLM's vocabulary (random weights): the segment ids below are counted in its wordpieces.
  config = tiny_config(data, train__steps=2, model__checkpoint="all-MiniLM-L6-v2")
  config.data.text_column, config.data.text_pair_column = "premise", "hypothesis"
  trainer_lib.Trainer(config, tmp_path / "run").train()
  exported = serving.export_saved_model(tmp_path / "run")
  model = tf.saved_model.load(str(exported))
  serve = model.signatures["serving_default"]
  assert set(serve.structured_input_signature[1]) == {"text", "text_pair"}
  out = serve(text=tf.constant(["the film was long", "x"]), text_pair=tf.constant(["it is long", "y"]))
  assert out["probabilities"].shape == (2, 2)
  assert_no_texts_give_no_rows(serve)
  encoder = experiment.build_encoder(config)
  features = encoder.pad(encoder(tf.constant(["the film was long"]), tf.constant(["it is long"])))
  assert features["segment_ids"].numpy().tolist() == [[0] * 6 + [1] * 4]
  by_ids = model.signatures["token_ids"](**features)
  np.testing.assert_allclose(by_ids["logits"].numpy()[0], out["logits"].numpy()[0], atol=1e-6)
  # predict reads text<TAB>pair; a line with no tab (or two) was read as a text and an empty
  # (or tab-holding) pair: refused, naming the line, before anything is predicted.
  answered = _predict(exported, stdin=b"the film was long\tit is long\n\nx\ty\n")
  assert answered.returncode == 0, answered.stderr[-2000:]
  rows = [line.split("\t") for line in answered.stdout.decode().splitlines()]
  assert [r[:2] for r in rows] == [["the film was long", "it is long"], ["", ""], ["x", "y"]]
  np.testing.assert_allclose(float(rows[0][3]), out["probabilities"].numpy()[0].max(), atol=1e-5)
  for line, tabs in ((b"the film was long it is long", 0), (b"a\tb\tc", 2)):
    assert _refusal(_predict(exported, stdin=b"x\ty\n" + line + b"\n")) == [
        f"error: standard input:2: a sentence-pair model takes text<TAB>pair, one tab; this "
        f"line holds {tabs}; nothing was predicted"]
  assert _refusal(_predict(exported, stdin=b"x\ty\rz\n"))[0].startswith(
      "error: standard input:1: the text holds a carriage return")


def test_tflite_runs_in_the_interpreter_close_to_the_saved_model(run_dir, exported):
  path = serving.export_tflite(run_dir)
  assert (path / "model.tflite").is_file() and (path / "vocab.txt").is_file()
  assert json.loads((path / "labels.json").read_text()) == ["0", "1"]
  saved = tf.saved_model.load(str(exported))
  interpreter = tf.lite.Interpreter(model_path=str(path / "model.tflite"))
  runner = interpreter.get_signature_runner("serving_default")
  encoder = experiment.build_encoder(experiment.Workdir(run_dir).load_config())
  for texts in (["a wonderful film"], ["boring and far too long !", "superb direction", "a dull mess"]):
    features = {k: v.numpy() for k, v in encoder.pad(encoder(tf.constant(texts))).items()}
    lite = runner(**features)["output_0"]
    full = saved.signatures["token_ids"](**{k: tf.constant(v) for k, v in features.items()})
    assert lite.shape == (len(texts), 2) and np.isfinite(lite).all()
    np.testing.assert_allclose(lite, full["logits"].numpy(), atol=0.01)


NO_CUSTOM_OPS = r"""
import sys
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry
proto = saved_model_pb2.SavedModel()
proto.ParseFromString(open(sys.argv[1] + "/saved_model.pb", "rb").read())
graph = proto.meta_graphs[0]
functions = {f.signature.name: f for f in graph.graph_def.library.function}
def ops_of(nodes, seen):
  for node in nodes:
    yield node.op
    names = [node.op] + [a.func.name for a in node.attr.values() if a.func.name]
    for name in names:
      if name in functions and name not in seen:
        seen.add(name)
        yield from ops_of(functions[name].node_def, seen)
def signature_ops(key):
  outputs = {t.name.split(":")[0] for t in graph.signature_def[key].outputs.values()}
  nodes = [n for n in graph.graph_def.node if n.name in outputs]
  return set(ops_of(nodes, set()))
ids, text = signature_ops("token_ids"), signature_ops("serving_default")
unknown = lambda ops: sorted(o for o in ops if o not in functions and op_def_registry.get(o) is None)
print(unknown(ids), unknown(text))
"""


def test_token_id_signature_needs_no_custom_ops(exported):
  result = subprocess.run([sys.executable, "-c", NO_CUSTOM_OPS, str(exported)],
                          capture_output=True, text=True, timeout=300, cwd="/")
  assert result.returncode == 0, result.stderr[-3000:]
  ids_unknown, text_unknown = result.stdout.strip().splitlines()[-1].split("] [")
  assert ids_unknown == "["  # every op of the token-id signature is in core TensorFlow
  assert "FastWordpieceTokenizeWithOffsets" in text_unknown  # the raw-text one needs TF Text
