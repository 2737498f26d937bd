"""The BERT family beyond BERT. Each family's tiny random-weight checkpoint was written by
transformers itself (tools/make_tiny_checkpoints.py -> tests/fixtures/tiny_checkpoints/
<model_type>, with reference.json / reference.npz: the ids, token types, first-piece
positions and last hidden states transformers gives on texts with accents, CJK, emoji and
pairs); these tests need no torch except the --format=hf round trip."""
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, dev_logits, override, tiny_model_config, write_pair_tsv
from tests.conftest import write_sentiment_tsv
from tests.test_packing import assert_packed_equals_unpacked
from tf_finetune import checkpoints
from tf_finetune import config as config_lib
from tf_finetune import experiment
from tf_finetune import families
from tf_finetune import peft
from tf_finetune import text_encoder
from tf_finetune.errors import CheckpointError, ConfigError
from tf_finetune.evaluation import evaluator
from tf_finetune.export import serving
from tf_finetune.training import trainer as trainer_lib

FIXTURES = REPO / "tests" / "fixtures" / "tiny_checkpoints"
MODEL_TYPES = sorted(families.FAMILIES)


def _reference(model_type):
  directory = FIXTURES / model_type
  return (directory, json.loads((directory / "reference.json").read_text(encoding="utf-8")),
          np.load(directory / "reference.npz"))


def test_every_supported_family_has_a_fixture():
  assert sorted(p.name for p in FIXTURES.iterdir()) == MODEL_TYPES
  assert set(MODEL_TYPES) == {"bert", "roberta", "xlm-roberta", "distilbert", "albert",
                              "electra"}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_in_graph_tokenizer_gives_the_ids_of_tokenizer_json(model_type):
  directory, reference, _ = _reference(model_type)
  encoder = text_encoder.TextEncoder(checkpoints.read_tokenizer_spec(directory), 128)
  for case in reference["cases"]:
    pair = tf.constant([case["text_pair"]]) if "text_pair" in case else None
    features = encoder(tf.constant([case["text"]]), pair)
    assert features["token_ids"][0].numpy().tolist() == case["input_ids"], case["text"]
    if "token_type_ids" in case:
      assert features["segment_ids"][0].numpy().tolist() == case["token_type_ids"]
  for case in reference["word_cases"]:
    features = encoder.encode_words(tf.ragged.constant([case["words"]]))
    assert features["token_ids"][0].numpy().tolist() == case["input_ids"], case["words"]
    assert (features["word_positions"][0].numpy().tolist() ==
            case["first_piece_positions"]), case["words"]


def _hidden_states(backbone, encoder, case):
  pair = tf.constant([case["text_pair"]]) if "text_pair" in case else None
  features = encoder.pad(encoder(tf.constant([case["text"]]), pair))
  return families.encode(backbone, features)["sequence_output"].numpy()[0]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_last_hidden_state_matches_transformers_from_raw_text(model_type):
  directory, reference, hidden = _reference(model_type)
  backbone = checkpoints.load_backbone(directory)
  encoder = text_encoder.TextEncoder(checkpoints.read_tokenizer_spec(directory), 128)
  for i, case in enumerate(reference["cases"]):
    np.testing.assert_allclose(_hidden_states(backbone, encoder, case), hidden[f"case_{i}"],
                               atol=1e-4, err_msg=case["text"])


def test_the_tolerance_tells_the_two_gelus_apart():
  """keras-hub's own GELU for ELECTRA (tanh approximation) misses transformers' exact one
  by more than the 1e-4 the parity test allows, so that test would catch a wrong one."""
  directory, reference, hidden = _reference("electra")
  backbone = checkpoints.load_backbone(directory)
  encoder = text_encoder.TextEncoder(checkpoints.read_tokenizer_spec(directory), 128)
  families.match_checkpoint_numerics(backbone, {"hidden_act": "gelu_new"},
                                     families.FAMILIES["electra"])
  worst = max(np.abs(_hidden_states(backbone, encoder, case) - hidden[f"case_{i}"]).max()
              for i, case in enumerate(reference["cases"]))
  assert worst > 1e-4


@pytest.mark.parametrize("model_type,why", [
    ("deberta-v2", "no converter of its HF checkpoints"), ("gpt2", "converts no such")])
def test_a_family_keras_hub_cannot_convert_is_refused_in_one_line(tmp_path, model_type, why):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
  with pytest.raises(CheckpointError) as error:
    checkpoints.load_backbone(tmp_path)
  message = str(error.value)
  assert "\n" not in message and f"model_type={model_type!r}" in message and why in message
  assert "supported: bert, roberta, xlm-roberta, distilbert, albert, electra" in message


def _family_config(model_type, **keys):
  c = tiny_model_config()
  c.model.random_init = False
  for key in ("num_layers", "hidden_dim", "num_heads", "intermediate_dim"):
    c.model[key] = 0
  c.model.checkpoint = str(FIXTURES / model_type)
  c.train.steps, c.train.batch_size, c.train.learning_rate = 4, 8, 1e-3
  c.train.eval_every, c.train.log_every = 4, 1
  c.train.eval_splits = "dev"
  return override(c, keys)


@pytest.fixture(scope="module", params=MODEL_TYPES)
def pair_run(request, tmp_path_factory):
  """A sentence-pair classifier of each family, trained 4 steps from its checkpoint."""
  root = tmp_path_factory.mktemp(request.param)
  data = write_pair_tsv(root / "pairs", ["was", "is", "seemed", "felt"])
  config = _family_config(request.param, data__source="tsv", data__dir=str(data),
                          data__train_file="train.tsv", data__dev_file="dev.tsv",
                          data__text_column="premise", data__text_pair_column="hypothesis",
                          data__max_seq_length=32)
  handler, absl_logger = _Records(), logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.addHandler(handler)
  absl_logger.setLevel(logging.INFO)
  try:
    trainer_lib.Trainer(config, root / "run").train()
    evaluator.evaluate_workdir(root / "run")
  finally:
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(level)
  return request.param, root / "run", handler.messages


class _Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


SERVE_PAIRS = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
pairs = json.load(sys.stdin)
model = tf.saved_model.load(sys.argv[1])
out = model.signatures["serving_default"](text=tf.constant([a for a, _ in pairs]),
                                          text_pair=tf.constant([b for _, b in pairs]))
print(json.dumps({"logits": out["logits"].numpy().tolist(),
                  "modules": sorted({m.split(".")[0] for m in sys.modules
                                     if m.startswith(("tf_finetune", "keras_hub", "torch"))})}))
"""


def test_each_family_trains_and_its_run_log_names_family_and_tokenizer(pair_run):
  model_type, workdir, messages = pair_run
  first = experiment.load_run(workdir, "best")
  fresh = checkpoints.load_backbone(FIXTURES / model_type)
  trained = peft.backbone(first.model).weights
  assert [w.shape for w in trained] == [w.shape for w in fresh.weights]
  assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in zip(trained, fresh.weights))
  report = json.loads((workdir / "eval" / "report.json").read_text())
  assert "accuracy" in report["splits"]["dev"]
  spec = checkpoints.read_tokenizer_spec(FIXTURES / model_type)
  assert any(f"model_type={model_type}" in m and spec.describe() in m for m in messages), [
      m for m in messages if "model_type" in m]


def test_each_family_serves_raw_text_pairs_with_tensorflow_text_alone(pair_run):
  model_type, workdir, _ = pair_run
  exported = serving.export_saved_model(workdir)
  dev, _, logits, _ = dev_logits(workdir)
  pairs = list(zip(dev.texts, dev.text_pairs))
  result = subprocess.run([sys.executable, "-c", SERVE_PAIRS, str(exported)],
                          input=json.dumps(pairs).encode(), capture_output=True, timeout=300)
  assert result.returncode == 0, result.stderr.decode()[-2000:]
  served = json.loads(result.stdout.decode().strip().splitlines()[-1])
  assert served["modules"] == []
  np.testing.assert_allclose(np.array(served["logits"]), logits, atol=1e-4)


def test_each_family_exports_to_transformers_with_the_same_logits(pair_run):
  torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
  import transformers
  model_type, workdir, _ = pair_run
  path = serving.export_hf(workdir)
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
  family = families.FAMILIES[model_type]
  assert type(hf_model).__name__ == f"{family.hf_class}ForSequenceClassification"
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
  run = experiment.load_run(workdir, "best")
  texts = ["Café naïve résumé was long", "東京は日本の首都です 😍", "the film seemed long"]
  pairs = ["it is not long", "Le café est fermé.", "it is long"]
  batch = tokenizer(texts, pairs, padding=True, return_tensors="pt",
                    return_token_type_ids="segment_ids" in peft.backbone(run.model).input)
  with torch.no_grad():
    theirs = hf_model(**batch).logits.numpy()
  features = run.task.encoder.pad(run.task.encoder(tf.constant(texts), tf.constant(pairs)))
  assert features["token_ids"].numpy().tolist() == batch["input_ids"].numpy().tolist()
  ours = run.model(features, training=False)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


@pytest.fixture(scope="module", params=MODEL_TYPES)
def tagging_run(request, tmp_path_factory):
  workdir = tmp_path_factory.mktemp(f"ner_{request.param}") / "run"
  config = _family_config(
      request.param, task__name="tagging", data__source="conll",
      data__dir=str(config_lib.EXAMPLES_DIR), data__train_file="ner_train.conll",
      data__dev_file="ner_dev.conll", data__max_seq_length=64, train__learning_rate=3e-3)
  trainer_lib.Trainer(config, workdir).train()
  return request.param, workdir


def test_tagging_serves_each_word_of_raw_text_at_transformers_first_piece(tagging_run):
  """Raw text made of the reference words (accents, CJK, emoji): each served word's offsets
  give the word back, and its tag is the model's argmax at the piece transformers'
  word_ids() marks first for it (RoBERTa's leading-space piece, SentencePiece's "▁")."""
  model_type, workdir = tagging_run
  _, reference, _ = _reference(model_type)
  run = experiment.load_run(workdir, "best")
  served = tf.saved_model.load(str(serving.export_saved_model(workdir)))
  serve = served.signatures["serving_default"]
  encoder = run.task.encoder
  for case in reference["word_cases"]:
    text = " ".join(case["words"])
    words, _, _ = encoder.split_words(tf.constant([text]))
    features = encoder.encode_words(words)
    assert features["token_ids"][0].numpy().tolist() == case["input_ids"]
    assert features["word_positions"][0].numpy().tolist() == case["first_piece_positions"]
    out = serve(text=tf.constant([text]))
    n = int(out["word_count"][0])
    starts, ends = out["word_start"][0, :n].numpy(), out["word_end"][0, :n].numpy()
    assert [text[s:e] for s, e in zip(starts, ends)] == case["words"]
    ids = np.array([case["input_ids"]], np.int32)
    logits = run.model({"token_ids": ids, "segment_ids": np.zeros_like(ids),
                        "padding_mask": np.ones_like(ids)}, training=False)
    expected = [run.labels.labels[int(np.argmax(logits[0, p]))]
                for p in case["first_piece_positions"]]
    assert [t.decode() for t in out["word_tag"][0, :n].numpy()] == expected, case["words"]


def test_tagging_exports_to_transformers_with_the_same_logits(tagging_run):
  torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
  import transformers
  model_type, workdir = tagging_run
  _, reference, _ = _reference(model_type)
  path = serving.export_hf(workdir)
  hf_model = transformers.AutoModelForTokenClassification.from_pretrained(str(path)).eval()
  family = families.FAMILIES[model_type]
  assert type(hf_model).__name__ == f"{family.hf_class}ForTokenClassification"
  run = experiment.load_run(workdir, "best")
  for case in reference["word_cases"]:
    ids = np.array([case["input_ids"]], np.int32)
    with torch.no_grad():
      theirs = hf_model(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = run.model({"token_ids": ids, "segment_ids": np.zeros_like(ids),
                      "padding_mask": np.ones_like(ids)}, training=False)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


def test_a_checkpoint_without_pooler_loads_with_a_fresh_one_and_says_so(tmp_path, caplog):
  """Checkpoints saved from XForMaskedLM hold no pooler (keras-hub's ALBERT converter
  would stop on it): the encoder still matches transformers, the pooler starts fresh."""
  import shutil
  from safetensors.numpy import load_file, save_file
  directory, reference, hidden = _reference("albert")
  copy = tmp_path / "albert"
  shutil.copytree(directory, copy)
  tensors = load_file(str(copy / "model.safetensors"))
  save_file({k: v for k, v in tensors.items() if ".pooler." not in k},
            str(copy / "model.safetensors"), metadata={"format": "pt"})
  with caplog.at_level(logging.WARNING):
    backbone = checkpoints.load_backbone(copy)
  assert any("holds no albert.pooler.weight" in r.getMessage() for r in caplog.records)
  encoder = text_encoder.TextEncoder(checkpoints.read_tokenizer_spec(copy), 128)
  np.testing.assert_allclose(_hidden_states(backbone, encoder, reference["cases"][0]),
                             hidden["case_0"], atol=1e-4)


def test_a_roberta_saved_from_the_bare_model_loads(tmp_path):
  """Weights named embeddings... (RobertaModel.save_pretrained, as sentence-transformers
  saves them), where keras-hub's RoBERTa converter asks for roberta.embeddings...; the
  xlm-roberta fixture is saved that way too."""
  import shutil
  from safetensors.numpy import load_file, save_file
  directory, reference, hidden = _reference("roberta")
  copy = tmp_path / "roberta"
  shutil.copytree(directory, copy)
  tensors = load_file(str(copy / "model.safetensors"))
  save_file({k[len("roberta."):]: v for k, v in tensors.items() if k.startswith("roberta.")},
            str(copy / "model.safetensors"), metadata={"format": "pt"})
  backbone = checkpoints.load_backbone(copy)
  encoder = text_encoder.TextEncoder(checkpoints.read_tokenizer_spec(copy), 128)
  for i, case in enumerate(reference["cases"]):
    np.testing.assert_allclose(_hidden_states(backbone, encoder, case), hidden[f"case_{i}"],
                               atol=1e-4)


def _shard(directory, copy):
  """The checkpoint as transformers' save_pretrained(max_shard_size=...) writes a big one:
  tensors spread over files named in model.safetensors.index.json."""
  import shutil
  from safetensors.numpy import load_file, save_file
  shutil.copytree(directory, copy)
  tensors = load_file(str(copy / "model.safetensors"))
  (copy / "model.safetensors").unlink()
  names = sorted(tensors)
  halves = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  for file, part in halves.items():
    save_file({n: tensors[n] for n in part}, str(copy / file), metadata={"format": "pt"})
  (copy / "model.safetensors.index.json").write_text(json.dumps({
      "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
      "weight_map": {n: file for file, part in halves.items() for n in part}}))
  return copy


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_a_sharded_checkpoint_loads_and_exports_as_the_single_file(tmp_path, model_type):
  from tf_finetune.export import hf
  directory, reference, hidden = _reference(model_type)
  sharded = _shard(directory, tmp_path / model_type)
  backbone = checkpoints.load_backbone(sharded)
  encoder = text_encoder.TextEncoder(checkpoints.read_tokenizer_spec(sharded), 128)
  np.testing.assert_allclose(_hidden_states(backbone, encoder, reference["cases"][0]),
                             hidden["case_0"], atol=1e-4)
  family = families.FAMILIES[model_type]
  with hf._InverseLoader(directory, family) as single, hf._InverseLoader(sharded, family) as split:
    expected, got = single.encoder_tensors(), split.encoder_tensors()
  assert sorted(got) == sorted(expected)
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name])
  (sharded / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(CheckpointError, match=r"index.json: names the shard "
                     r"model-00002-of-00002.safetensors, which is not in .*\(1 of its 2"):
    checkpoints.load_backbone(sharded)


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_each_family_packed_gives_the_unpacked_logits_and_gradients(tmp_path, model_type,
                                                                    pooling):
  """Packed rows through the family's own layers (RoBERTa's and DistilBERT's embeddings
  without segments, ALBERT's projection and shared layers, the families' head dense)."""
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=8, max_repeats=4)
  config = _family_config(model_type, data__source="tsv", data__dir=str(data),
                          data__train_file="train.tsv", data__dev_file="dev.tsv",
                          data__text_column="sentence", data__max_seq_length=64,
                          model__pooling=pooling)
  assert_packed_equals_unpacked(config)


def test_a_sequence_longer_than_the_checkpoints_positions_is_refused_before_training():
  config = _family_config("roberta", data__max_seq_length=256)
  with pytest.raises(ConfigError, match=r"config.data.max_seq_length=256: .*roberta has "
                     r"position embeddings for 128 tokens"):
    experiment.build_model(config, None)


REMOVED = "removed from config.json"


def _damaged_copy(tmp_path, model_type, config_changes=None, tokenizer_pieces=0):
  """A copy of a family's fixture with config.json fields changed (or REMOVED), or pieces
  added to tokenizer.json's vocabulary."""
  import shutil
  copy = tmp_path / model_type
  shutil.copytree(FIXTURES / model_type, copy)
  config = {**json.loads((copy / "config.json").read_text()), **(config_changes or {})}
  (copy / "config.json").write_text(json.dumps(
      {key: value for key, value in config.items() if value != REMOVED}))
  tokenizer = json.loads((copy / "tokenizer.json").read_text())
  vocabulary = tokenizer["model"]["vocab"]
  for i in range(tokenizer_pieces):
    vocabulary[f"added{i}"] = len(vocabulary)
  (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
  return copy


@pytest.mark.parametrize("model_type, changes, message", [
    ("bert", {"hidden_size": 48}, r"bert/model.safetensors: embeddings.word_embeddings.weight "
     r"has shape \(580, 32\), but the model of \S+/bert/config.json \(hidden_size=48\) needs "
     r"token_embedding/embeddings of shape \(580, 48\): config.json does not match"),
    ("bert", {"intermediate_size": 96}, r"bert/model.safetensors: encoder.layer.0.intermediate"
     r".dense.weight has shape \(64, 32\), but .* \(intermediate_size=96\) needs"),
    ("bert", {"num_hidden_layers": 1}, r"bert/config.json: num_hidden_layers=1, but \S+/bert/"
     r"model.safetensors holds 2 layers \(layer.0 to layer.1\): config.json does not match"),
    ("bert", {"num_hidden_layers": 3}, r"num_hidden_layers=3, but .* holds 2 layers"),
    ("distilbert", {"n_layers": 1}, r"distilbert/config.json: n_layers=1, but .* holds 2 layers"),
    ("bert", {"hidden_size": "32"}, r"bert/config.json: hidden_size='32' must be a positive "
     r"integer"),
    ("bert", {"num_attention_heads": 0}, r"num_attention_heads=0 must be a positive integer"),
    # transformers would take its class's default size (vocab_size 30522, dim 768).
    ("bert", {"vocab_size": REMOVED}, r"bert/config.json: no 'vocab_size', which the "
     r"architecture of a model_type='bert' encoder needs; the file is damaged"),
    ("distilbert", {"dim": REMOVED}, r"distilbert/config.json: no 'dim', which"),
    ("electra", {"intermediate_size": REMOVED}, r"electra/config.json: no 'intermediate_size'"),
])
def test_a_config_json_that_does_not_match_the_weights_is_refused_naming_both(
    tmp_path, model_type, changes, message):
  """keras-hub printed a whole tensor for a shape it could not assign, and loaded a file of
  more layers than config.json names with the extra layers silently left out."""
  with pytest.raises(CheckpointError, match=message):
    checkpoints.load_backbone(_damaged_copy(tmp_path, model_type, changes))


def test_a_tokenizer_with_more_pieces_than_embedding_rows_is_refused(tmp_path):
  """Ids past the embedding's end fail at the first batch holding one on a CPU, and read a
  row of zeros on a GPU."""
  config = _family_config("bert")
  config.model.checkpoint = str(_damaged_copy(tmp_path, "bert", tokenizer_pieces=3))
  with pytest.raises(CheckpointError, match=r"bert/tokenizer.json: the tokenizer has 583 "
                     r"pieces, but the word embedding of \S+ has 580 rows .*: ids 580-582"):
    experiment.build_model(config, ["negative", "positive"])


def test_tensors_no_encoder_reads_are_named_and_the_encoders_all_read(caplog):
  """As transformers' "Some weights of the model checkpoint were not used": the fixtures
  were saved from XForMaskedLM (or the ELECTRA discriminator) with their heads."""
  with caplog.at_level(logging.WARNING):
    checkpoints.load_backbone(FIXTURES / "bert")
  (warning,) = [r.getMessage() for r in caplog.records if "not part of the encoder" in
                r.getMessage()]
  assert "bert/model.safetensors: 7 tensors are not part of the encoder" in warning
  assert "cls.predictions.bias" in warning and "encoder.layer" not in warning
