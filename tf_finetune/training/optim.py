"""AdamW with BERT's conventions, and the warmup + linear decay schedule."""
import math
import re

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable("tf_finetune")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0 to `peak` over `warmup_steps`, then linear decay to 0 at
  `total_steps` (BERT's and HF's get_linear_schedule_with_warmup). Keras has no such schedule."""

  def __init__(self, peak, warmup_steps, total_steps):
    self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
    decay = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
    rising = self.peak * step / warmup
    falling = self.peak * tf.maximum(0.0, (self.total_steps - step) / decay)
    return tf.where(step < self.warmup_steps, rising, falling)

  def get_config(self):
    return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


class FusedAdamW(keras.optimizers.AdamW):
  """Keras AdamW with three changes, written here because Keras 3 has none of them:

  - It takes gradients already summed over replicas. Keras clips before it all-reduces,
    so its clipnorm under a multi-replica strategy clips each replica's partial gradient;
    the trainer all-reduces, clips by the true global norm, then applies here.
  - The Adam update is TensorFlow's fused ResourceApplyAdam kernel, one pass per variable
    instead of Keras's element-wise ops (same formula). The embedding's IndexedSlices
    gradient is summed into a dense one first, as HF/PyTorch AdamW does; Keras's own
    sparse path is slower and mishandles repeated token ids (tests/test_optim.py).
  - A learning-rate multiplier per variable (layer-wise decay, `lr_multiplier`); the
    decoupled weight decay follows it, as with PyTorch parameter groups.
  - `update_condition`: a boolean tensor set by the trainer before `apply`; where it is
    False the step leaves every weight and moment as it was (a non-finite step is skipped
    on the device; `iterations` still counts it, so the data position stays exact).
  """

  def __init__(self, *args, lr_multiplier=None, **kwargs):
    super().__init__(*args, **kwargs)
    self._lr_multiplier = lr_multiplier or (lambda path: 1.0)
    self.update_condition = None
    self._inside_condition = False

  def build(self, variables):
    super().build(variables)
    self._multipliers = [float(self._lr_multiplier(v.path)) for v in variables]
    self._decays = [self._use_weight_decay(v) for v in variables]

  def _all_reduce_sum_gradients(self, grads_and_vars):
    return list(grads_and_vars)

  def _apply_weight_decay(self, variables):
    """Applied in update_step instead, with the variable's learning-rate multiplier."""

  def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
    """Keras's loop over the variables (a private hook of Keras 3's TensorFlow optimizer)
    under one tf.cond on update_condition: a cond per variable costs seconds of tracing at
    every run's first step (about 100 variables in MiniLM)."""
    update_all = super()._distributed_tf_update_step
    if self.update_condition is None:
      return update_all(distribution, grads_and_vars, learning_rate)

    def update_inside_condition():
      self._inside_condition = True
      try:
        update_all(distribution, grads_and_vars, learning_rate)
      finally:
        self._inside_condition = False
    self._if_update_condition(update_inside_condition)

  def update_step(self, gradient, variable, learning_rate):
    if self.update_condition is None or self._inside_condition:
      self._adamw_step(gradient, variable, learning_rate)
    else:  # only if Keras stops calling the hook above: the guard then holds per variable
      self._if_update_condition(lambda: self._adamw_step(gradient, variable, learning_rate))

  def _if_update_condition(self, update):
    def run_update():
      update()
      return tf.constant(True)
    tf.cond(self.update_condition, run_update, lambda: tf.constant(False))

  def _adamw_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    m, v = self._momentums[index], self._velocities[index]
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    learning_rate = tf.cast(learning_rate, dtype) * self._multipliers[index]
    if self.weight_decay and self._decays[index]:
      # var * (1 - wd * lr), assigned: one pass over the variable where assign_sub of
      # var * wd * lr takes two (half the decay's time on MiniLM's 22.7 M weights).
      _tf_variable(variable).assign(
          _tf_variable(variable) * (1 - tf.cast(self.weight_decay, dtype) * learning_rate))
    tf.raw_ops.ResourceApplyAdam(
        var=_handle(variable), m=_handle(m), v=_handle(v),
        beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
        beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
        lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype),
        beta2=tf.cast(self.beta_2, dtype), epsilon=tf.cast(self.epsilon, dtype),
        grad=tf.cast(tf.convert_to_tensor(gradient), dtype), use_locking=False)


def _tf_variable(variable):
  return variable.value if isinstance(variable, keras.Variable) else variable


def _handle(variable):
  return _tf_variable(variable).handle


def layer_decay_multiplier(layer_decay, num_layers):
  """Layer-wise learning-rate decay (ELECTRA, BEiT): the head and pooler get 1, transformer
  layer i (0 = bottom) layer_decay ** (num_layers - i), the embeddings
  layer_decay ** (num_layers + 1)."""
  def multiplier(path):
    if "embedding" in path:
      return layer_decay ** (num_layers + 1)
    match = re.search(r"transformer_layer_(\d+)/", path)
    return layer_decay ** (num_layers - int(match.group(1))) if match else 1.0
  return multiplier


NO_DECAY_NAMES = ("bias", "gamma", "beta")


def head_multiplier(ratio, encoder_paths):
  """`ratio` for every variable outside the encoder (the head), 1 inside it."""
  return lambda path: 1.0 if path in encoder_paths else ratio


def build_optimizer(train_config, total_steps, trainable_variables, num_layers=0,
                    encoder_paths=frozenset()):
  schedule = WarmupLinearDecay(train_config.learning_rate,
                               int(train_config.warmup_fraction * total_steps), total_steps)
  multipliers = []
  if train_config.layer_decay != 1.0:
    multipliers.append(layer_decay_multiplier(train_config.layer_decay, num_layers))
  if train_config.head_learning_rate:
    multipliers.append(head_multiplier(
        train_config.head_learning_rate / train_config.learning_rate, encoder_paths))
  multiplier = None
  if multipliers:
    multiplier = lambda path: math.prod(m(path) for m in multipliers)
  optimizer = FusedAdamW(
      learning_rate=schedule, weight_decay=train_config.weight_decay,
      epsilon=train_config.adam_epsilon, beta_1=0.9, beta_2=0.999, lr_multiplier=multiplier)
  optimizer.exclude_from_weight_decay(
      var_list=[v for v in trainable_variables if v.name in NO_DECAY_NAMES])
  # Built inside the strategy scope before the first step, or a distributed step fails.
  optimizer.build(trainable_variables)
  return optimizer
