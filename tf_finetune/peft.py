"""Parameter-efficient fine-tuning: which weights train (peft.method).

- none: everything.
- freeze: the embeddings and the bottom peft.freeze_layers transformer layers are frozen.
- bitfit: only the backbone's biases (and the task head) train.
- adapter: bottleneck adapters (Houlsby et al., 2019) after the attention block and after
  the feed-forward block of every transformer layer, before the residual sum: x + up(gelu(
  down(x))) with peft.adapter_size units, up initialized at zero (the model starts as the
  pretrained one). Adapters, layer norms and the head train; the rest is frozen.
- lora: Keras 3's own LoRA (EinsumDense.enable_lora, what keras-hub's Backbone.enable_lora
  calls) on the attention projections named in peft.lora_targets, with peft.lora_rank and
  peft.lora_alpha; the rest of the backbone is frozen (biases included, as HF PEFT's
  default), the head trains. For export the LoRA
  product is merged into the kernels (merged_model).

The head (everything outside the backbone) always trains.
"""
import pathlib
import zipfile

import keras
import numpy as np
from absl import logging

from tf_finetune import families
from tf_finetune.errors import ConfigError, WorkdirError



class BottleneckAdapter(keras.layers.Layer):
  """x + up(gelu(down(x))); `up` starts at zero, so the adapter starts as the identity."""

  def __init__(self, hidden_dim, size, **kwargs):
    super().__init__(**kwargs)
    self.down = keras.layers.Dense(
        size, activation="gelu", name="down",
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))
    self.up = keras.layers.Dense(hidden_dim, kernel_initializer="zeros", name="up")
    self.hidden_dim, self.size = hidden_dim, size

  def build_under(self, scope):
    """Creates the weights with paths `<scope>/<adapter name>/down/kernel` and so on."""
    for dense, width in ((self.down, self.hidden_dim), (self.up, self.size)):
      with keras.name_scope(scope), keras.name_scope(self.name):
        dense.build((None, None, width))
    self.built = True

  def call(self, x):
    return x + self.up(self.down(x))


def _add_adapters(bert, size):
  """Adds an adapter to the output of each transformer layer's attention and feed-forward
  dropouts (the last step before the residual sum). keras-hub's TransformerEncoder has no
  hook for it, so the two dropout layers' call is wrapped; the adapters are attached to the
  encoder layer, so checkpoints, the optimizer and the SavedModel see their weights."""
  for i in range(bert.num_layers):
    layer = bert.get_layer(f"transformer_layer_{i}")
    for part in ("attention", "feedforward"):
      dropout = getattr(layer, "_self_attention_dropout" if part == "attention"
                        else "_feedforward_dropout")
      adapter = BottleneckAdapter(bert.hidden_dim, size, name=f"{part}_adapter")
      adapter.build_under(layer.name)
      layer._tracker.unlock()  # Keras locks a built layer's state; enable_lora does the same
      setattr(layer, f"{part}_adapter", adapter)
      layer._tracker.lock()

      def call(inputs, training=None, original=dropout.call, adapter=adapter):
        return adapter(original(inputs, training=training))
      dropout.call = call


def backbone(model):
  """The keras-hub encoder inside a task's model."""
  return families.backbone_of(model)


def apply(config, model):
  """Sets which weights of `model` train, per config.peft; returns the model."""
  p = config.peft
  if p.method == "none":
    return model
  bert = backbone(model)
  if p.method == "freeze":
    layers = bert.num_layers
    if not 0 <= p.freeze_layers <= layers:
      raise ConfigError(f"config.peft.freeze_layers={p.freeze_layers}: the backbone has "
                        f"{layers} transformer layers")
    import keras_hub
    encoder_layers = [layer for layer in bert.layers
                      if isinstance(layer, keras_hub.layers.TransformerEncoder)]
    if p.freeze_layers and len(encoder_layers) != layers:
      raise ConfigError(f"config.peft.freeze_layers={p.freeze_layers}: this backbone's "
                        f"{layers} layers share the weights of {len(encoder_layers)} "
                        "(ALBERT), so none freezes alone; use 0 (the embeddings only) or "
                        "another peft.method")
    for layer in bert.layers:  # the embeddings (and their projection), not the pooler
      if layer not in encoder_layers and layer.name != "pooled_dense":
        layer.trainable = False
    for layer in encoder_layers[:p.freeze_layers]:
      layer.trainable = False
  elif p.method == "bitfit":
    for variable in bert.weights:
      variable.trainable = variable.name == "bias"
  elif p.method == "adapter":
    for layer in bert._flatten_layers(include_self=False):
      layer.trainable = isinstance(layer, keras.layers.LayerNormalization)
    _add_adapters(bert, p.adapter_size)
  elif p.method == "lora":
    targets = [t.strip() for t in p.lora_targets.split(",") if t.strip()]
    for layer in bert._flatten_layers(include_self=False):
      layer.trainable = False
    found = 0
    for layer in bert._flatten_layers(include_self=False):
      if layer.name in targets and hasattr(layer, "enable_lora"):
        layer.trainable = True
        layer.enable_lora(p.lora_rank, lora_alpha=p.lora_alpha)
        if getattr(layer, "bias", None) is not None:
          layer.bias.trainable = False  # the LoRA factors only (HF PEFT's bias="none")
        found += 1
    if not found:
      raise ConfigError(f"config.peft.lora_targets={p.lora_targets!r}: no such layer in the "
                        "backbone (BERT's attention projections are query, key, value, "
                        "attention_output)")
  return model


def parameter_counts(model):
  """(trainable, total) numbers of weights."""
  count = lambda vs: int(sum(np.prod(v.shape) for v in vs))
  return count(model.trainable_weights), count(model.weights)


def is_lora_variable(variable):
  return "lora_kernel" in variable.path


def merged_model(config, model, build_plain_model):
  """A model without LoRA variables whose kernels are the LoRA model's merged ones
  (kernel + alpha / rank * A @ B): what a LoRA run exports."""
  if config.peft.method != "lora":
    return model
  plain = build_plain_model()
  source = [v for v in model.weights if not is_lora_variable(v)]
  if [v.path for v in source] != [v.path for v in plain.weights]:
    raise WorkdirError("cannot merge LoRA: the plain model's weights differ from the run's")
  merged = {id(layer._kernel): layer.kernel for layer in
            backbone(model)._flatten_layers(include_self=False)
            if getattr(layer, "lora_enabled", False)}
  for target, variable in zip(plain.weights, source):
    target.assign(merged.get(id(variable), variable))
  logging.info("LoRA merged into %d kernels", len(merged))
  return plain


def save_trainable(model, path):
  """The weights that trained (LoRA factors, biases, head...) as a .npz keyed by path."""
  weights = {v.path: np.asarray(v) for v in model.trainable_weights}
  if len(weights) != len(model.trainable_weights):
    raise WorkdirError("two trainable weights share a path; cannot save them by path")
  np.savez(path, **weights)


def load_trainable(model, path):
  """Loads save_trainable's file into a model built with the same config. The whole file is
  read and checked (the zip's CRC-32 of each array, names and shapes) before any weight is
  assigned, so a damaged file changes nothing."""
  if not pathlib.Path(path).is_file():
    raise WorkdirError(f"{path}: no such file (export --format=peft writes trainable_weights.npz)")
  try:
    archive = np.load(path)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError("one array, not a .npz of named arrays")
    with archive:
      stored = {name: archive[name] for name in archive.files}
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    raise WorkdirError(f"{path}: cannot be read ({type(e).__name__}: {e}): it is damaged (cut "
                       "short, garbled or not a .npz); export the run again") from None
  variables = {v.path: v for v in model.trainable_weights}
  if set(stored) != set(variables):
    missing, extra = set(variables) - set(stored), set(stored) - set(variables)
    raise WorkdirError(f"{path}: does not match this model's trainable weights "
                       f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})")
  for name, value in sorted(stored.items()):
    if tuple(value.shape) != tuple(variables[name].shape):
      raise WorkdirError(f"{path}: {name} has shape {tuple(value.shape)}, where this model's "
                         f"weight has {tuple(variables[name].shape)}: build the model from the "
                         "config.json beside the file")
  for name, value in stored.items():
    variables[name].assign(value)
