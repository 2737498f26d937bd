"""Export a fine-tuned BERT as a Hugging Face checkpoint: BertForSequenceClassification
(classification, multi-label, regression) or BertForTokenClassification (tagging).

keras-hub 0.32 converts HF BERT checkpoints in but has no BERT exporter out, so this is the
inverse of keras_hub/src/utils/transformers/convert_bert.py, written by hand.
"""
import json
import pathlib
import shutil

import numpy as np
from safetensors.numpy import save_file

from tf_finetune import checkpoints
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


def hf_config(backbone, base_config, labels, dropout, task_name="classification"):
  config = dict(base_config)
  config.update({
      "architectures": ["BertForTokenClassification" if task_name == "tagging" else
                        "BertForSequenceClassification"], "model_type": "bert",
      "vocab_size": backbone.vocabulary_size, "hidden_size": backbone.hidden_dim,
      "num_hidden_layers": backbone.num_layers, "num_attention_heads": backbone.num_heads,
      "intermediate_size": backbone.intermediate_dim,
      "max_position_embeddings": backbone.max_sequence_length,
      "type_vocab_size": backbone.num_segments, "hidden_act": "gelu",
      "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
      "classifier_dropout": dropout, "layer_norm_eps": 1e-12,
      "id2label": {str(i): label for i, label in enumerate(labels)},
      "label2id": {label: i for i, label in enumerate(labels)},
      "problem_type": PROBLEM_TYPES[task_name],
  })
  if config["problem_type"] is None:
    del config["problem_type"]
  config.pop("_name_or_path", None)
  config.pop("transformers_version", None)
  return config


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def write_hf_checkpoint(path, model, config, labels):
  """Writes config.json, model.safetensors and the base checkpoint's tokenizer files."""
  if config.task.name in ("zero_shot", "setfit"):
    raise ConfigError(f"config.task.name={config.task.name!r}: transformers has no sequence "
                      "classifier of (normalized) mean-pooled embeddings, so --format=hf "
                      "cannot hold this model; use --format=saved_model")
  if config.peft.method == "adapter":
    raise ConfigError("config.peft.method='adapter': transformers' BERT has no bottleneck "
                      "adapters, so --format=hf cannot hold this model; use --format="
                      "saved_model (or peft.method=lora, which exports merged)")
  tagging = config.task.name == "tagging"
  if config.model.pooling != "pooler" and not tagging:
    raise ConfigError(f"config.model.pooling={config.model.pooling!r}: --format=hf needs "
                      "'pooler' (BertForSequenceClassification)")
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  backbone = [l for l in model.layers if l.name.startswith("bert_backbone")][0]
  head = model.get_layer("logits")
  base_dir = checkpoints.resolve_checkpoint_dir(config.model.checkpoint)
  base = json.loads((base_dir / "config.json").read_text())
  (path / "config.json").write_text(json.dumps(
      hf_config(backbone, base, labels, config.model.dropout, config.task.name), indent=1) + "\n")
  save_file(state_dict(backbone, head, pooler=not tagging), str(path / "model.safetensors"), metadata={"format": "pt"})
  for name in TOKENIZER_FILES:
    if (base_dir / name).is_file():
      shutil.copy(base_dir / name, path / name)
  return path
