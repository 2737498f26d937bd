"""Techniques switched on from config: layer-wise learning-rate decay, label smoothing,
early stopping (gradient accumulation: test_trainer.py; PEFT: test_peft.py)."""
import json

import numpy as np
import tensorflow as tf

from tests.conftest import tiny_config
from tf_finetune import experiment
from tf_finetune.training import trainer as trainer_lib


def test_layer_decay_scales_each_layers_first_step(sentiment_dir, tmp_path):
  """Adam's first step moves every weight by about the learning rate (|m / sqrt(v)| = 1),
  so the largest move of each variable is the learning rate times its multiplier."""
  peak = 1e-3
  t = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=1, train__layer_decay=0.5,
                                      train__warmup_fraction=0.0, train__weight_decay=0.0,
                                      train__max_grad_norm=0.0, train__learning_rate=peak,
                                      train__adam_epsilon=1e-12),
                          tmp_path / "run")
  before = {v.path: v.numpy().copy() for v in t.model.trainable_variables}
  t.train()
  expected = {"token_embedding/embeddings": 0.5 ** 3,
              "transformer_layer_0/self_attention_layer/query/kernel": 0.5 ** 2,
              "transformer_layer_1/feedforward_output_dense/kernel": 0.5,
              "pooled_dense/kernel": 1.0, "logits/kernel": 1.0}
  for v in t.model.trainable_variables:
    if v.path in expected:
      moved = np.abs(v.numpy() - before[v.path]).max()
      np.testing.assert_allclose(moved, peak * expected[v.path], rtol=2e-3, err_msg=v.path)


def test_label_smoothing_changes_the_training_loss_only(sentiment_dir):
  config = tiny_config(sentiment_dir, task__label_smoothing=0.2)
  _, labels = experiment.load_data(config)
  task, _ = experiment.build_model(config, labels)
  logits = tf.constant([[2.0, -1.0], [0.5, 0.5]])
  gold = tf.constant([0, 1])
  log_p = tf.nn.log_softmax(logits).numpy()
  targets = np.array([[0.9, 0.1], [0.1, 0.9]])  # 0.8 on the label + 0.2 / 2 everywhere
  np.testing.assert_allclose(task.training_losses(gold, logits), -(targets * log_p).sum(-1),
                             rtol=1e-6)
  np.testing.assert_allclose(task.build_losses(gold, logits), -log_p[[0, 1], [0, 1]], rtol=1e-6)


def test_early_stopping_stops_says_why_and_stays_stopped(sentiment_dir, tmp_path, caplog):
  config = tiny_config(sentiment_dir, train__steps=10, train__eval_every=1,
                       train__learning_rate=1e-9, train__early_stopping_patience=2)
  t = trainer_lib.Trainer(config, tmp_path / "run")
  with caplog.at_level("WARNING"):
    t.train()
  # A learning rate of 1e-9 leaves dev accuracy where it was: the best stays step 1.
  assert t.step == 3
  assert any("Early stopping at step 3 of 10" in r.getMessage() and
             "early_stopping_patience=2" in r.getMessage() for r in caplog.records)
  best = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())
  assert best["step"] == 1 and best["stopped_early_at_step"] == 3
  again = trainer_lib.Trainer(config, tmp_path / "run")
  again.train()
  assert again.step == 3
