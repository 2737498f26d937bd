import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tf_finetune import checkpoint_dirs
from tf_finetune import checkpoints
from tf_finetune import families
from tf_finetune.errors import CheckpointError


@pytest.mark.slow
def test_minilm_matches_transformers_reference():
  """tests/fixtures/minilm_reference.npz comes from tools/make_reference.py (PyTorch)."""
  ref = np.load(REPO / "tests" / "fixtures" / "minilm_reference.npz")
  backbone = checkpoints.load_backbone(checkpoints.resolve_checkpoint_dir(checkpoints.MINILM))
  out = backbone({"token_ids": ref["token_ids"], "segment_ids": ref["segment_ids"],
                  "padding_mask": ref["padding_mask"]}, training=False)
  mask = ref["padding_mask"].astype(bool)
  diff = np.abs(np.asarray(out["sequence_output"]) - ref["last_hidden_state"])[mask]
  assert diff.max() < 1e-4, diff.max()
  pooled = np.abs(np.asarray(out["pooled_output"]) - ref["pooler_output"]).max()
  assert pooled < 1e-4


def test_unknown_name_is_not_downloaded():
  with pytest.raises(CheckpointError, match="neither a local directory nor a known offline name"):
    checkpoints.resolve_checkpoint_dir("bert-base-uncased")


def test_checkpoint_dirs_config_and_sources_import_no_tensorflow():
  """Benchmarks' PyTorch sides find the checkpoint and draw the same sample through these
  modules, and time no TensorFlow import (tools/bench_few_shot.py, tools/bench_sst2.py)."""
  code = ("import sys\n"
          "from tf_finetune import checkpoint_dirs, config\n"
          "from tf_finetune.data import sources\n"
          "print(checkpoint_dirs.resolve_checkpoint_dir(checkpoint_dirs.MINILM).is_dir(), sorted(\n"
          "    m for m in ('tensorflow', 'keras', 'keras_hub', 'tensorflow_text', 'torch')\n"
          "    if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)
  assert result.stdout.split("\n")[-2] == "True []"
  assert checkpoints.resolve_checkpoint_dir is checkpoint_dirs.resolve_checkpoint_dir


def test_unsupported_model_type(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(CheckpointError, match="model_type='gpt2' is not supported"):
    checkpoints.read_hf_config(tmp_path)


def test_exact_gelu_is_installed_on_random_backbone():
  directory = checkpoints.resolve_checkpoint_dir(checkpoints.MINILM)
  backbone = checkpoints.load_backbone(directory, random_init=True,
                                       overrides=dict(num_layers=2, hidden_dim=32, num_heads=2,
                                                      intermediate_dim=64))
  assert backbone.num_layers == 2
  for layer in backbone.transformer_layers:
    assert layer._feedforward_intermediate_dense.activation is families.exact_gelu


def test_exact_gelu_equals_keras_exact_gelu_and_its_gradient():
  """families.exact_gelu computes Keras's exact GELU through erf instead of erfc."""
  import keras
  import tensorflow as tf
  x = tf.Variable(tf.linspace(-12.0, 12.0, 100_001))
  with tf.GradientTape(persistent=True) as tape:
    ours, keras_gelu = families.exact_gelu(x), keras.activations.gelu(x, approximate=False)
  np.testing.assert_allclose(ours.numpy(), keras_gelu.numpy(), atol=2e-6)
  np.testing.assert_allclose(tape.gradient(ours, x).numpy(),
                             tape.gradient(keras_gelu, x).numpy(), atol=1e-6)
  tanh = keras.activations.gelu(x, approximate=True)
  assert np.abs(ours.numpy() - tanh.numpy()).max() > 1e-4


def _tokenizer_dir(tmp_path, family="bert"):
  import shutil
  directory = tmp_path / family
  shutil.copytree(REPO / "tests" / "fixtures" / "tiny_checkpoints" / family, directory)
  return directory


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_a_tokenizer_json_whose_ids_are_not_each_used_once_is_refused(tmp_path, family):
  """An id changed (a damaged digit, an edit by hand) used to shift every piece after it
  by one in the vocabulary read, silently."""
  directory = _tokenizer_dir(tmp_path, family)
  path = directory / "tokenizer.json"
  spec = json.loads(path.read_text())
  vocab = spec["model"]["vocab"]
  pieces = sorted(vocab, key=vocab.get)
  vocab[pieces[40]] = vocab[pieces[30]]
  path.write_text(json.dumps(spec))
  with pytest.raises(CheckpointError) as e:
    checkpoints.read_tokenizer_spec(directory)
  assert str(e.value) == (
      f"{path}: the vocabulary's {len(vocab)} ids must be 0-{len(vocab) - 1}, each once; "
      f"{pieces[40]!r} has id 30, also the id of {pieces[30]!r}; the file is damaged")
  vocab[pieces[40]] = len(vocab)
  path.write_text(json.dumps(spec))
  with pytest.raises(CheckpointError, match=f"has id {len(vocab)}, not one of them"):
    checkpoints.read_tokenizer_spec(directory)


def test_checkpoint_files_of_the_wrong_form_are_refused_naming_the_file(tmp_path, capfd):
  """Damage that keeps the JSON valid (a field of another type, a field missing), as a
  mutation fuzzer of the tiny checkpoints' files found it: one line naming the file, where
  each of these ended in a TypeError, KeyError, IndexError or a panic of tokenizers."""
  def damaged(family, name, change):
    directory = _tokenizer_dir(tmp_path / f"{family}-{name}-{len(list(tmp_path.iterdir()))}",
                               family)
    data = json.loads((directory / name).read_text())
    change(data)
    (directory / name).write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as e:
      checkpoints.read_tokenizer_spec(directory)
    assert str(e.value).startswith(f"{directory / name}: ") and "\n" not in str(e.value)
    return str(e.value)

  def id_as_list(spec):
    spec["model"]["vocab"]["[UNK]"] = [1]
  assert "the tokenizers library cannot read it (" in damaged("bert", "tokenizer.json", id_as_list)
  assert "the file is damaged" in damaged(
      "roberta", "tokenizer.json", lambda spec: spec["model"].pop("vocab"))
  capfd.readouterr()
  assert "the tokenizers library cannot read it" in damaged(  # a panic in tokenizers' Rust
      "xlm-roberta", "tokenizer.json", lambda spec: spec["normalizer"].pop(
          "precompiled_charsmap"))
  assert "panicked" not in capfd.readouterr().err  # the error quotes the panic's message
  assert "model_type=['bert'] is not supported" in damaged(
      "bert", "config.json", lambda config: config.update(model_type=["bert"]))

  def one_sequence_pair(spec):
    post = spec["post_processor"]
    post["pair"] = [p for p in post["pair"] if p.get("Sequence", {}).get("id") != "B"]
  assert "does not hold the two texts of a pair" in damaged("bert", "tokenizer.json",
                                                            one_sequence_pair)


def test_a_vocab_txt_that_differs_from_tokenizer_json_is_named_in_a_warning(tmp_path, caplog):
  import logging
  directory = _tokenizer_dir(tmp_path)
  pieces = checkpoints.read_tokenizer_spec(directory).vocabulary
  vocab_txt = directory / "vocab.txt"
  vocab_txt.write_text("\n".join(pieces) + "\n")
  with caplog.at_level(logging.WARNING, logger="absl"):
    checkpoints.read_tokenizer_spec(directory)
  assert "differs from tokenizer.json" not in caplog.text
  vocab_txt.write_text("\n".join(pieces[:100]))  # cut short
  with caplog.at_level(logging.WARNING, logger="absl"):
    spec = checkpoints.read_tokenizer_spec(directory)
  assert spec.vocabulary == pieces  # tokenizer.json is what is read, as transformers does
  assert (f"{vocab_txt}: differs from tokenizer.json, which is what is read (as transformers "
          f"does): 100 pieces against {len(pieces)}, first at line 101 (None against "
          f"{pieces[100]!r}); one of the two files may be damaged") in caplog.text


def test_a_vocab_txt_read_alone_that_is_not_utf8_is_refused(tmp_path):
  directory = _tokenizer_dir(tmp_path)
  pieces = checkpoints.read_tokenizer_spec(directory).vocabulary
  (directory / "tokenizer.json").unlink()
  vocab_txt = directory / "vocab.txt"
  vocab_txt.write_bytes("\n".join(pieces).encode() + b"\n\xff\xfe\n")
  with pytest.raises(CheckpointError, match=f"^{vocab_txt}: not UTF-8 text \\(.*\\); the file "
                     "is damaged$"):
    checkpoints.read_tokenizer_spec(directory)


def test_a_vocab_txt_read_alone_gives_the_ids_transformers_gives(tmp_path):
  """Pieces holding line breaks other than \n and \r (U+0085, U+2028, U+001C) stay whole,
  as transformers' load_vocab reads them; str.splitlines split them and shifted every id
  after them."""
  from transformers.models.bert.tokenization_bert import load_vocab
  directory = _tokenizer_dir(tmp_path)
  pieces = list(checkpoints.read_tokenizer_spec(directory).vocabulary)
  (directory / "tokenizer.json").unlink()
  pieces[200:203] = ["a\x85b", "c\u2028d", "e\x1cf"]
  vocab_txt = directory / "vocab.txt"
  vocab_txt.write_bytes("\n".join(pieces).encode() + b"\n")
  vocabulary = checkpoints.read_tokenizer_spec(directory).vocabulary
  assert list(vocabulary) == list(load_vocab(str(vocab_txt))) == pieces
