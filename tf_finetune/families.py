"""The encoder families tf_finetune reads from Hugging Face-format directories, by the
config.json `model_type`: which keras-hub backbone holds each, and how it differs from BERT.

keras-hub 0.32 converts bert, roberta, xlm-roberta, distilbert and albert checkpoints
(keras_hub/src/utils/transformers/convert_*.py). It has an ElectraBackbone but no
converter for ELECTRA's checkpoints, so `_port_electra` writes one by hand after
convert_bert.py. It has a DebertaV3Backbone but no converter either; DeBERTa's
disentangled attention is not ported here, so deberta-v2 is refused like any other type.
"""
import dataclasses
import importlib
import pathlib
import re

import keras
import keras_hub
import numpy as np
import safetensors
from absl import logging
from keras_hub.src.utils import preset_utils
from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

from tf_finetune.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Family:
  """model_type: config.json's. backbone_class: the keras-hub backbone. pooler_activation: None where
  model.pooling=pooler is the backbone's pre-trained pooler (BERT's and ALBERT's tanh
  dense on [CLS]); else the activation of the dense layer the family's HF sequence
  classifier puts on the first token, which model.pooling=pooler adds newly initialized
  as "head_dense" (RoBERTa's classification head: tanh; DistilBERT's pre_classifier: relu;
  ELECTRA's head: gelu; ELECTRA's checkpoints hold no pooler). hf_class: the prefix of
  transformers' class names. hf_prefix: the base model's name in its weights.
  hf_head_dense: where head_dense goes in XForSequenceClassification, hf_head_out: where
  the logits layer goes. activation_key: config.json's key of the feed-forward activation."""
  model_type: str
  backbone_class: type
  pooler_activation: str | None
  hf_class: str
  hf_prefix: str
  hf_head_dense: str | None = None
  hf_head_out: str = "classifier"
  activation_key: str = "hidden_act"


FAMILIES = {f.model_type: f for f in [
    Family("bert", keras_hub.models.BertBackbone, None, "Bert", "bert"),
    Family("roberta", keras_hub.models.RobertaBackbone, "tanh", "Roberta", "roberta",
           "classifier.dense", "classifier.out_proj"),
    Family("xlm-roberta", keras_hub.models.XLMRobertaBackbone, "tanh", "XLMRoberta",
           "roberta", "classifier.dense", "classifier.out_proj"),
    Family("distilbert", keras_hub.models.DistilBertBackbone, "relu", "DistilBert",
           "distilbert", "pre_classifier", activation_key="activation"),
    Family("albert", keras_hub.models.AlbertBackbone, None, "Albert", "albert"),
    Family("electra", keras_hub.models.ElectraBackbone, "gelu", "Electra", "electra",
           "classifier.dense", "classifier.out_proj"),
]}

HEAD_DENSE = "head_dense"

UNSUPPORTED_NOTES = {
    "deberta-v2": "keras-hub 0.32 has a DebertaV3Backbone but no converter of its HF "
                  "checkpoints, and its disentangled attention is not ported here",
}

_EXACT_GELU = ("gelu",)
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def backbone_of(model):
  """The keras-hub encoder inside a task's model."""
  return next(layer for layer in model.layers if isinstance(layer, keras_hub.models.Backbone))


def family_of(backbone):
  """The Family of a keras-hub backbone instance (the most specific class matches:
  XLMRobertaBackbone is a RobertaBackbone)."""
  matches = [f for f in FAMILIES.values() if isinstance(backbone, f.backbone_class)]
  if not matches:
    raise TypeError(f"{type(backbone).__name__} is not a backbone of {', '.join(FAMILIES)}")
  return max(matches, key=lambda f: len(f.backbone_class.__mro__))


def encode(backbone, inputs, training=None):
  """Model inputs (token_ids, segment_ids, padding_mask) -> the backbone's outputs as a
  dict with `sequence_output` (and `pooled_output` where the backbone has a pooler): each
  backbone reads the inputs it has (RoBERTa and DistilBERT have no segment ids;
  DistilBERT returns its sequence alone)."""
  outputs = backbone({name: inputs[name] for name in backbone.input}, training=training)
  return outputs if isinstance(outputs, dict) else {"sequence_output": outputs}


def add_pooler(backbone, outputs):
  """outputs with `pooled_output`: the backbone's own pooler, or, for a family whose HF
  classifier has its own (Family.pooler_activation), a new Dense HEAD_DENSE on the first
  token with that activation, so that the model exports to that head (export/hf.py)."""
  family = family_of(backbone)
  if family.pooler_activation is None:
    return outputs
  dense = keras.layers.Dense(
      backbone.hidden_dim, activation=family.pooler_activation,
      kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02), name=HEAD_DENSE)
  return dict(outputs, pooled_output=dense(outputs["sequence_output"][:, 0, :]))


def embed(backbone, token_ids, segment_ids, position_ids, training=None):
  """The backbone's embedding stage with explicit position ids (packed rows restart them
  per example), through its own layers as its constructor wires them: token + position
  (+ segment where the family has one) embeddings, layer norm, dropout, and the projection
  to the hidden size (ALBERT; ELECTRA where the sizes differ)."""
  if hasattr(backbone, "segment_embedding"):  # BERT, ALBERT, ELECTRA
    tokens = backbone.token_embedding(token_ids)
    x = backbone.embeddings_add((
        tokens, backbone.position_embedding(tokens, positions=position_ids),
        backbone.segment_embedding(segment_ids)))
  else:  # RoBERTa, XLM-R, DistilBERT: keras-hub's TokenAndPositionEmbedding
    x = backbone.embeddings(token_ids, positions=position_ids)
  x = backbone.embeddings_layer_norm(x)
  x = backbone.embeddings_dropout(x, training=training)
  if hasattr(backbone, "embeddings_projection"):  # built only where the sizes differ
    x = backbone.embeddings_projection(x)
  return x


def transformer_stack(backbone):
  """The backbone's transformer layers in the order it calls them (ALBERT calls each
  group's shared layers num_layers / num_groups times)."""
  if isinstance(backbone, keras_hub.models.AlbertBackbone):
    calls = backbone.num_layers // backbone.num_groups
    return [layer for group in backbone.transformer_layers for _ in range(calls)
            for layer in group]
  return list(backbone.transformer_layers)


def pooler(model, backbone):
  """The dense layer model.pooling=pooler puts on the first token: the family's head
  dense (add_pooler) where the model has one, else the backbone's pre-trained pooler."""
  if family_of(backbone).pooler_activation is not None:
    return model.get_layer(HEAD_DENSE)
  return backbone.pooled_dense


def exact_gelu(x):
  """x * Phi(x), as keras.activations.gelu(approximate=False) computes it but through erf:
  on CPU TensorFlow's erfc (Keras's form) takes twice erf's time in bfloat16 and up to 1.4x
  in float32 (`tools/profile_step.py --tf_op_profile`: in mixed_bfloat16 Erfc was 20 ms of
  a MiniLM step's 426 ms of op time at 7 x 64)."""
  return 0.5 * x * (1.0 + keras.ops.erf(x * 0.7071067811865476))


def feedforward_activation(hf_config, family):
  """The keras activation of the checkpoint's feed-forward layers, or None if not one of
  the GELUs."""
  name = hf_config.get(family.activation_key, "gelu")
  if name in _EXACT_GELU:
    return exact_gelu
  if name in _TANH_GELU:
    return lambda x: keras.activations.gelu(x, approximate=True)
  return None


def match_checkpoint_numerics(backbone, hf_config, family):
  """keras-hub hard-codes one GELU per backbone (BERT, ALBERT, ELECTRA: the tanh
  approximation; RoBERTa, DistilBERT: exact) and one layer-norm epsilon (RoBERTa 1e-5,
  the others 1e-12), whichever the checkpoint was trained with: the checkpoint's own
  (config.json) bring BERT's last hidden state from ~3e-3 to ~1e-6 of transformers."""
  activation = feedforward_activation(hf_config, family)
  epsilon = hf_config.get("layer_norm_eps")
  for layer in backbone._flatten_layers(include_self=False):
    if isinstance(layer, keras_hub.layers.TransformerEncoder):
      layer._feedforward_intermediate_dense.activation = activation
      layer.activation = activation
    if epsilon is not None and isinstance(layer, keras.layers.LayerNormalization):
      layer.epsilon = float(epsilon)


def backbone_config(family, hf_config):
  """keras-hub constructor arguments of the checkpoint's architecture."""
  if family.model_type == "electra":
    return dict(
        vocab_size=hf_config["vocab_size"], num_layers=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"], hidden_dim=hf_config["hidden_size"],
        embedding_dim=hf_config.get("embedding_size", hf_config["hidden_size"]),
        intermediate_dim=hf_config["intermediate_size"],
        dropout=hf_config.get("hidden_dropout_prob", 0.1),
        max_sequence_length=hf_config["max_position_embeddings"],
        num_segments=hf_config.get("type_vocab_size", 2))
  converter = _keras_hub_converter(family)
  return converter.convert_backbone_config(hf_config)


def _keras_hub_converter(family):
  """keras_hub/src/utils/transformers/convert_<model_type>.py: the family's config and
  weight mapping (private to keras-hub, which exposes them only through from_preset)."""
  name = family.model_type.replace("-", "_")
  return importlib.import_module(f"keras_hub.src.utils.transformers.convert_{name}")


def load_pretrained(family, checkpoint_dir, hf_config, **kwargs):
  """The family's backbone with the checkpoint's weights, ported by keras-hub's converter
  (ELECTRA: _port_electra) through a CheckpointLoader."""
  backbone = family.backbone_class(**{**backbone_config(family, hf_config), **kwargs})
  with CheckpointLoader(str(checkpoint_dir), family, hf_config) as loader:
    loader.check_layer_count()
    if family.model_type == "electra":
      _port_electra(backbone, loader)
    else:
      _keras_hub_converter(family).convert_weights(backbone, loader, hf_config)
    if family.model_type == "roberta":
      # HF RoBERTa adds token_type_embeddings[0] to every token; keras-hub's RobertaBackbone
      # has no segment embedding and its RoBERTa converter drops it (its XLM-R converter
      # folds it into the position embeddings, as this does).
      type_0 = loader.get_tensor("embeddings.token_type_embeddings.weight")[0]
      positions = backbone.embeddings.position_embedding.position_embeddings
      positions.assign(positions.numpy() + type_0)
    loader.check_all_read()
  return backbone


_LAYER_INDEX = re.compile(r"(?:^|\.)layer\.(\d+)\.")


class CheckpointLoader(SafetensorLoader):
  """keras-hub's safetensors reader, also for checkpoints saved from the bare base model
  (RobertaModel's `embeddings...`, where keras-hub's RoBERTa converter asks for
  `roberta.embeddings...`) and for ones without a pooler (saved from XForMaskedLM, which
  keras-hub's ALBERT converter stops on): the pooler keeps its fresh weights, and the log
  says so. A config.json that does not describe the weights (a tensor of another shape,
  one the file lacks, layers it would leave out) is refused naming the file, the tensor
  and the config.json fields; keras-hub would print a whole tensor, or drop the layers."""

  def __init__(self, preset, family, hf_config=None):
    super().__init__(preset)
    self.family = family
    self.hf_config = hf_config or {}
    self.read = set()
    self._tensor_names = None

  def get_prefixed_key(self, hf_weight_key, dict_like):
    own = self.family.hf_prefix + "."
    bare = hf_weight_key[len(own):] if hf_weight_key.startswith(own) else None
    if bare and hf_weight_key not in dict_like.keys() and bare in dict_like.keys():
      key = bare
    else:
      key = super().get_prefixed_key(hf_weight_key, dict_like)
    self.read.add(key)
    return key

  def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
    if not self._holds(hf_weight_key):
      if ".pooler." in f".{hf_weight_key}":
        logging.warning("%s holds no %s: the pooler starts from fresh weights (it matters "
                        "only for model.pooling=pooler)", self.preset, hf_weight_key)
        return
      raise CheckpointError(f"{self._file()}: holds no {hf_weight_key}, which the model of "
                            f"{self._config_file()} needs: config.json does not match the "
                            "weights")
    stored = self.get_tensor(hf_weight_key)
    expected = tuple(keras_variable.shape)
    try:
      value = hook_fn(stored, list(expected)) if hook_fn else stored
    except ValueError:  # the converter's reshape of a tensor of another size
      value = None
    if value is None or tuple(np.shape(value)) != expected:
      differing = set(expected) - set(stored.shape)
      fields = ", ".join(f"{k}={v}" for k, v in self.hf_config.items()
                         if isinstance(v, int) and not isinstance(v, bool) and v in differing)
      raise CheckpointError(
          f"{self._file()}: {hf_weight_key} has shape {tuple(stored.shape)}, but the model "
          f"of {self._config_file()}{f' ({fields})' if fields else ''} needs "
          f"{keras_variable.path} of shape {expected}: config.json does not match the weights")
    keras_variable.assign(value)

  def check_layer_count(self):
    """Before conversion: config.json's layer count against the layers the file holds
    (`layer.N.` in their names; ALBERT's shared layers have none). keras-hub's converter
    would leave the extra layers out silently, or stop on the first one missing."""
    layers = self._layer_indices(self.tensor_names())
    key = "n_layers" if self.family.model_type == "distilbert" else "num_hidden_layers"
    if layers and self.hf_config.get(key) != len(layers):
      raise CheckpointError(
          f"{self._config_file()}: {key}={self.hf_config.get(key)}, but {self._file()} holds "
          f"{len(layers)} layers (layer.{min(layers)} to layer.{max(layers)}): config.json "
          "does not match the weights")

  def check_all_read(self):
    """After conversion: tensors no encoder read (a pretraining or task head) are named
    in a warning, as transformers' "Some weights ... were not used"; a layer's tensor
    left unread is refused (its layer would be incomplete)."""
    unread = sorted(n for n in self.tensor_names() if n not in self.read
                    and not n.endswith("position_ids"))  # a buffer, not a weight
    if self._layer_indices(unread):
      raise CheckpointError(f"{self._file()}: {', '.join(unread[:3])} would be left out by the "
                            f"encoder {self._config_file()} describes: config.json does not "
                            "match the weights")
    if unread:
      logging.warning("%s: %d tensors are not part of the encoder and are not used (a "
                      "pretraining or task head): %s", self._file(), len(unread),
                      ", ".join(unread[:5]) + (f" and {len(unread) - 5} more"
                                               if len(unread) > 5 else ""))

  @staticmethod
  def _layer_indices(names):
    return {int(m.group(1)) for n in names for m in [_LAYER_INDEX.search(n)] if m}

  def _config_file(self):
    return pathlib.Path(self.preset) / "config.json"

  def tensor_names(self):
    """The names of every tensor in the checkpoint (read once)."""
    if self._tensor_names is None:
      if self.safetensor_config is not None:
        self._tensor_names = list(self.safetensor_config["weight_map"])
      else:
        with safetensors.safe_open(self._file(), framework="np") as file:
          self._tensor_names = list(file.keys())
    return self._tensor_names

  def _file(self):
    if self.safetensor_config is not None:
      return str(pathlib.Path(self.preset) / "model.safetensors.index.json")
    return preset_utils.get_file(self.preset, "model.safetensors")

  def _holds(self, hf_weight_key):
    own = self.family.hf_prefix + "."
    bare = hf_weight_key[len(own):] if hf_weight_key.startswith(own) else hf_weight_key
    return any(name in (hf_weight_key, bare) or name.endswith("." + bare)
               for name in self.tensor_names())


def _port_electra(backbone, loader):
  """HF ElectraModel's weights into keras-hub's ElectraBackbone (which has the same layers:
  BERT's, with an embedding projection when embedding_size != hidden_size). Written by
  hand after keras_hub's convert_bert.py, as keras-hub 0.32 has no ELECTRA converter."""
  def transpose(x, _):
    return np.transpose(x)

  def transpose_to(x, shape):  # [out, in] -> the EinsumDense kernel's shape
    return np.reshape(np.transpose(x), shape)

  port = loader.port_weight
  port(backbone.token_embedding.embeddings, "embeddings.word_embeddings.weight")
  port(backbone.position_embedding.position_embeddings,
       "embeddings.position_embeddings.weight")
  port(backbone.segment_embedding.embeddings, "embeddings.token_type_embeddings.weight")
  port(backbone.embeddings_layer_norm.gamma, "embeddings.LayerNorm.weight")
  port(backbone.embeddings_layer_norm.beta, "embeddings.LayerNorm.bias")
  if backbone.hidden_dim != backbone.embedding_dim:
    port(backbone.embeddings_projection.kernel, "embeddings_project.weight",
         hook_fn=transpose)
    port(backbone.embeddings_projection.bias, "embeddings_project.bias")
  for i, block in enumerate(backbone.transformer_layers):
    prefix = f"encoder.layer.{i}."
    attention = block._self_attention_layer
    for name, dense in (("query", attention.query_dense), ("key", attention.key_dense),
                        ("value", attention.value_dense)):
      port(dense.kernel, f"{prefix}attention.self.{name}.weight", hook_fn=transpose_to)
      port(dense.bias, f"{prefix}attention.self.{name}.bias",
           hook_fn=lambda x, shape: np.reshape(x, shape))
    port(attention.output_dense.kernel, f"{prefix}attention.output.dense.weight",
         hook_fn=transpose_to)
    port(attention.output_dense.bias, f"{prefix}attention.output.dense.bias")
    port(block._self_attention_layer_norm.gamma, f"{prefix}attention.output.LayerNorm.weight")
    port(block._self_attention_layer_norm.beta, f"{prefix}attention.output.LayerNorm.bias")
    port(block._feedforward_intermediate_dense.kernel, f"{prefix}intermediate.dense.weight",
         hook_fn=transpose)
    port(block._feedforward_intermediate_dense.bias, f"{prefix}intermediate.dense.bias")
    port(block._feedforward_output_dense.kernel, f"{prefix}output.dense.weight",
         hook_fn=transpose)
    port(block._feedforward_output_dense.bias, f"{prefix}output.dense.bias")
    port(block._feedforward_layer_norm.gamma, f"{prefix}output.LayerNorm.weight")
    port(block._feedforward_layer_norm.beta, f"{prefix}output.LayerNorm.bias")
