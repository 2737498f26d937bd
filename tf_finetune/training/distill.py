"""Knowledge distillation from a fine-tuned teacher run (distill.teacher_workdir).

The student is the config's model, with distill.student_layers (e.g. "0,2,4") naming the
teacher's transformer layers it starts from, in order (DistilBERT's initialization); its
embeddings, pooler and head start as the teacher's. The training loss per example is
  (1 - alpha) * cross-entropy(labels, student)
  + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
(Hinton et al., 2015; T = distill.temperature; T^2 keeps the gradient scale).
"""
import re

import tensorflow as tf
from absl import logging

from tf_finetune import experiment
from tf_finetune.errors import ConfigError


def student_layers(config):
  return [int(x) for x in config.distill.student_layers.split(",") if x.strip()]


def load_teacher(config, labels):
  """The teacher run's model at its best checkpoint (build it inside the strategy scope)."""
  run = experiment.load_run(config.distill.teacher_workdir)
  if run.labels.labels != labels.labels:
    raise ConfigError(f"config.distill.teacher_workdir={str(run.workdir.root)!r}: the "
                      f"teacher's labels {run.labels.labels[:10]} differ from this run's "
                      f"{labels.labels[:10]}")
  run.model.trainable = False
  logging.info("Teacher: %s (step %d)", run.checkpoint, run.step)
  return run.model


def initialize_student(config, student, teacher):
  """Copies the teacher's weights into the student: embeddings, pooler and head as they
  are, student layer i from teacher layer student_layers[i]."""
  layers = student_layers(config)
  teacher_weights = {v.path: v for v in teacher.weights}
  for variable in student.weights:
    path = variable.path
    match = re.match(r"transformer_layer_(\d+)/(.*)", path)
    if match:
      path = f"transformer_layer_{layers[int(match.group(1))] if layers else match.group(1)}/" \
             f"{match.group(2)}"
    if path in teacher_weights:
      variable.assign(teacher_weights[path])
    elif "seed_generator" not in path:
      raise ConfigError(f"config.distill: the teacher has no weight {path} for the student")


def distillation_losses(config, task, labels, student_logits, teacher_logits):
  d = config.distill
  hard = task.training_losses(labels, student_logits)
  t = d.temperature
  teacher_log_p = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / t)
  student_log_p = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / t)
  soft = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
  return (1.0 - d.alpha) * hard + d.alpha * t * t * soft
