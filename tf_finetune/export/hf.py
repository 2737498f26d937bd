"""Export a fine-tuned encoder as a Hugging Face checkpoint: XForSequenceClassification
(classification, multi-label, regression) or XForTokenClassification (tagging), X the
checkpoint's family (families.py).

keras-hub 0.32 converts these families' HF checkpoints in but has no exporter out for any
of them. BERT's is the inverse of keras_hub/src/utils/transformers/convert_bert.py, written
by hand (`state_dict`), and also writes architectures other than the base checkpoint's
(distillation students, random_init overrides). The other families run keras-hub's own
converter backwards (`_InverseLoader`): the base checkpoint gives each tensor's name and
shape, the converter's hook applied to the tensor's element indices says where each of the
keras variable's elements came from.
"""
import contextlib
import json
import pathlib
import shutil

import numpy as np
from safetensors.numpy import save_file

from tf_finetune import checkpoints
from tf_finetune import families
from tf_finetune import peft
from tf_finetune.errors import ConfigError


def _np(variable):
  return np.asarray(variable.numpy(), dtype=np.float32)


def _attention_in(kernel):
  """EinsumDense kernel [hidden, heads, head_dim] -> [heads * head_dim, hidden]."""
  k = _np(kernel)
  return np.ascontiguousarray(k.reshape(k.shape[0], -1).T)


def _attention_out(kernel):
  """EinsumDense kernel [heads, head_dim, hidden] -> [hidden, heads * head_dim]."""
  k = _np(kernel)
  return np.ascontiguousarray(k.reshape(-1, k.shape[-1]).T)


def state_dict(backbone, head, pooler=True):
  """Tensors named as transformers' BertFor{Sequence,Token}Classification expects them
  (the token classifier has no pooler)."""
  tensors = {
      "bert.embeddings.word_embeddings.weight": _np(backbone.get_layer("token_embedding").embeddings),
      "bert.embeddings.position_embeddings.weight":
          _np(backbone.get_layer("position_embedding").position_embeddings),
      "bert.embeddings.token_type_embeddings.weight":
          _np(backbone.get_layer("segment_embedding").embeddings),
      "bert.embeddings.LayerNorm.weight": _np(backbone.get_layer("embeddings_layer_norm").gamma),
      "bert.embeddings.LayerNorm.bias": _np(backbone.get_layer("embeddings_layer_norm").beta),
      "bert.pooler.dense.weight": _np(backbone.get_layer("pooled_dense").kernel).T.copy(),
      "bert.pooler.dense.bias": _np(backbone.get_layer("pooled_dense").bias),
      "classifier.weight": _np(head.kernel).T.copy(),
      "classifier.bias": _np(head.bias),
  }
  if not pooler:
    tensors = {k: v for k, v in tensors.items() if not k.startswith("bert.pooler.")}
  for i in range(backbone.num_layers):
    block = backbone.get_layer(f"transformer_layer_{i}")
    attn = block._self_attention_layer
    prefix = f"bert.encoder.layer.{i}."
    for name, dense in (("query", attn.query_dense), ("key", attn.key_dense),
                        ("value", attn.value_dense)):
      tensors[f"{prefix}attention.self.{name}.weight"] = _attention_in(dense.kernel)
      tensors[f"{prefix}attention.self.{name}.bias"] = _np(dense.bias).reshape(-1)
    tensors[f"{prefix}attention.output.dense.weight"] = _attention_out(attn.output_dense.kernel)
    tensors[f"{prefix}attention.output.dense.bias"] = _np(attn.output_dense.bias)
    tensors[f"{prefix}attention.output.LayerNorm.weight"] = _np(block._self_attention_layer_norm.gamma)
    tensors[f"{prefix}attention.output.LayerNorm.bias"] = _np(block._self_attention_layer_norm.beta)
    tensors[f"{prefix}intermediate.dense.weight"] = _np(block._feedforward_intermediate_dense.kernel).T.copy()
    tensors[f"{prefix}intermediate.dense.bias"] = _np(block._feedforward_intermediate_dense.bias)
    tensors[f"{prefix}output.dense.weight"] = _np(block._feedforward_output_dense.kernel).T.copy()
    tensors[f"{prefix}output.dense.bias"] = _np(block._feedforward_output_dense.bias)
    tensors[f"{prefix}output.LayerNorm.weight"] = _np(block._feedforward_layer_norm.gamma)
    tensors[f"{prefix}output.LayerNorm.bias"] = _np(block._feedforward_layer_norm.beta)
  return tensors


PROBLEM_TYPES = {"classification": "single_label_classification",
                 "multilabel": "multi_label_classification", "regression": "regression",
                 "tagging": None}


def labelled_config(base_config, labels, task_name, family):
  """The base checkpoint's config.json as transformers' sequence or token classifier of
  `labels`."""
  config = {k: v for k, v in base_config.items()
            if k not in ("_name_or_path", "transformers_version")}
  kind = "Token" if task_name == "tagging" else "Sequence"
  config.update({
      "architectures": [f"{family.hf_class}For{kind}Classification"],
      "id2label": {str(i): label for i, label in enumerate(labels)},
      "label2id": {label: i for i, label in enumerate(labels)},
      "problem_type": PROBLEM_TYPES[task_name],
  })
  if config["problem_type"] is None:
    del config["problem_type"]
  return config


def hf_config(backbone, base_config, labels, dropout, task_name="classification"):
  """BERT's, with the sizes of the backbone (which may differ from the base checkpoint's:
  distillation students, random_init overrides) and the run's dropout."""
  config = labelled_config(base_config, labels, task_name, families.FAMILIES["bert"])
  config.update({
      "model_type": "bert",
      "vocab_size": backbone.vocabulary_size, "hidden_size": backbone.hidden_dim,
      "num_hidden_layers": backbone.num_layers, "num_attention_heads": backbone.num_heads,
      "intermediate_size": backbone.intermediate_dim,
      "max_position_embeddings": backbone.max_sequence_length,
      "type_vocab_size": backbone.num_segments,
      "hidden_act": base_config.get("hidden_act", "gelu"),
      "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
      "classifier_dropout": dropout,
      "layer_norm_eps": base_config.get("layer_norm_eps", 1e-12),
  })
  return config


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")


def _check_same_architecture(family, backbone, base):
  wanted = families.backbone_config(family, base)
  have = backbone.get_config()
  differ = [k for k, v in wanted.items() if k != "dropout" and have.get(k) != v]
  if differ:
    raise ConfigError(
        f"--format=hf writes a {family.model_type} model only with its base checkpoint's "
        f"architecture; this one differs in {', '.join(f'{k}={have.get(k)}' for k in differ)}"
        f" (the checkpoint's: {', '.join(f'{k}={wanted[k]}' for k in differ)})")


class _InverseLoader:
  """Runs a keras-hub converter (or families._port_electra) backwards: every
  port_weight(keras variable, HF name, hook) writes the variable into a copy of the base
  checkpoint's tensor, through the hook's element mapping. Hooks in these converters only
  transpose, reshape and slice; one that computes is refused rather than inverted."""

  def __init__(self, checkpoint_dir, family):
    self.base = families.CheckpointLoader(str(checkpoint_dir), family)
    self.family = family
    self.tensors = {}

  def __enter__(self):
    self.base.__enter__()
    return self

  def __exit__(self, *exc):
    return self.base.__exit__(*exc)

  def get_tensor(self, key):
    return self.base.get_tensor(key)

  def full_key(self, key):
    """The name `key` has in the base checkpoint's file (keras-hub's lookup)."""
    self.base.get_tensor(key)  # opens the file
    (file,) = self.base.safetensor_files.values()
    return self.base.get_prefixed_key(key, file)

  def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
    base = np.asarray(self.base.get_tensor(hf_weight_key), np.float32)
    value = np.asarray(keras_variable.numpy(), np.float32)
    if (self.family.model_type in ("roberta", "xlm-roberta")
        and hf_weight_key.endswith("embeddings.position_embeddings.weight")):
      # Loading put rows 2: here with token_type_embeddings[0] added (see
      # families.load_pretrained); the checkpoint keeps that row as it was.
      type_0 = self.base.get_tensor("embeddings.token_type_embeddings.weight")[0]
      new = base.copy()
      new[2:2 + value.shape[0]] = value - type_0
    elif hook_fn is None:
      new = value.reshape(base.shape)
    else:
      index = np.arange(base.size).reshape(base.shape)
      source = np.asarray(hook_fn(index, list(value.shape)))
      if source.dtype.kind not in "iu" or len(np.unique(source)) != source.size:
        raise NotImplementedError(f"{hf_weight_key}: the converter's hook is not a "
                                  "rearrangement, so it cannot be inverted")
      new = base.copy().reshape(-1)
      new[source.reshape(-1)] = value.reshape(-1)
      new = new.reshape(base.shape)
    self.tensors[self._canonical(self.full_key(hf_weight_key))] = new

  def _canonical(self, key):
    """The key under the family's base-model prefix (roberta., albert., ...), as the
    sequence and token classifiers name it, whatever the base checkpoint was saved as."""
    prefix = self.family.hf_prefix + "."
    return key if key.startswith(prefix) else prefix + key

  def encoder_tensors(self):
    """Every tensor of the base checkpoint's encoder (the ones no converter ports too,
    e.g. RoBERTa's token_type_embeddings), with the ported ones replaced."""
    from safetensors import safe_open
    out = {}
    own = self.family.hf_prefix + "."
    with contextlib.ExitStack() as stack:
      files = [stack.enter_context(safe_open(str(path), framework="np"))
               for path in checkpoints.weight_files(self.base.preset)]
      keys = [(f, key) for f in files for key in f.keys()]
      bare = not any(key.startswith(own) for _, key in keys)  # saved from the base model alone
      for f, key in keys:
        if (bare or key.startswith(own)) and ".pooler." not in f".{key}":
          out[self._canonical(key)] = np.asarray(f.get_tensor(key), np.float32)
    out.update(self.tensors)
    return out


def family_state_dict(family, backbone, model, base_dir, base, tagging):
  """The tensors of transformers' XFor{Sequence,Token}Classification of a non-BERT family."""
  with _InverseLoader(base_dir, family) as loader:
    if family.model_type == "electra":
      families._port_electra(backbone, loader)
    else:
      families._keras_hub_converter(family).convert_weights(backbone, loader, base)
    tensors = loader.encoder_tensors()
  head = model.get_layer("logits")
  out = family.hf_head_out if not tagging else "classifier"
  tensors[f"{out}.weight"] = _np(head.kernel).T.copy()
  tensors[f"{out}.bias"] = _np(head.bias)
  if not tagging and family.hf_head_dense:
    dense = model.get_layer(families.HEAD_DENSE)
    tensors[f"{family.hf_head_dense}.weight"] = _np(dense.kernel).T.copy()
    tensors[f"{family.hf_head_dense}.bias"] = _np(dense.bias)
  if tagging:  # transformers' token classifiers have no pooler
    tensors = {k: v for k, v in tensors.items() if ".pooler." not in k}
  return tensors


def write_hf_checkpoint(path, model, config, labels):
  """Writes config.json, model.safetensors and the base checkpoint's tokenizer files."""
  if config.task.name in ("zero_shot", "setfit"):
    raise ConfigError(f"config.task.name={config.task.name!r}: transformers has no sequence "
                      "classifier of (normalized) mean-pooled embeddings, so --format=hf "
                      "cannot hold this model; use --format=saved_model")
  if config.peft.method == "adapter":
    raise ConfigError("config.peft.method='adapter': transformers' encoders have no "
                      "bottleneck adapters, so --format=hf cannot hold this model; use "
                      "--format=saved_model (or peft.method=lora, which exports merged)")
  tagging = config.task.name == "tagging"
  backbone = peft.backbone(model)
  family = families.family_of(backbone)
  if config.model.pooling != "pooler" and not tagging:
    raise ConfigError(f"config.model.pooling={config.model.pooling!r}: --format=hf needs "
                      f"'pooler' ({family.hf_class}ForSequenceClassification's head)")
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  base_dir = checkpoints.resolve_checkpoint_dir(config.model.checkpoint)
  base = checkpoints.read_hf_config(base_dir)
  if family.model_type == "bert":
    hf = hf_config(backbone, base, labels, config.model.dropout, config.task.name)
    tensors = state_dict(backbone, model.get_layer("logits"), pooler=not tagging)
  else:
    _check_same_architecture(family, backbone, base)
    hf = labelled_config(base, labels, config.task.name, family)
    tensors = family_state_dict(family, backbone, model, base_dir, base, tagging)
  (path / "config.json").write_text(json.dumps(hf, indent=1) + "\n")
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  for name in TOKENIZER_FILES:
    if (base_dir / name).is_file():
      shutil.copy(base_dir / name, path / name)
  return path
