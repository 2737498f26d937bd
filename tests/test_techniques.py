"""Techniques switched on from config: layer-wise learning-rate decay, the head's own
learning rate, label smoothing, early stopping (gradient accumulation: test_trainer.py;
PEFT: test_peft.py)."""
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tf_finetune import experiment
from tf_finetune.training import trainer as trainer_lib


@pytest.mark.parametrize("head_multiplier", [None, 20.0])
def test_layer_decay_and_head_learning_rate_scale_each_layers_first_step(
    sentiment_dir, tmp_path, head_multiplier):
  """Adam's first step moves every weight by about the learning rate (|m / sqrt(v)| = 1),
  so the largest move of each variable is the learning rate times its multiplier:
  layer_decay's in the encoder (BERT's pooler included), train.head_learning_rate's in the
  classifier."""
  peak = 1e-3
  t = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=1, train__layer_decay=0.5,
                                      train__head_learning_rate=(head_multiplier or 0) * peak,
                                      train__warmup_fraction=0.0, train__weight_decay=0.0,
                                      train__max_grad_norm=0.0, train__learning_rate=peak,
                                      train__adam_epsilon=1e-12),
                          tmp_path / "run")
  before = {v.path: v.numpy().copy() for v in t.model.trainable_variables}
  t.train()
  expected = {"token_embedding/embeddings": 0.5 ** 3,
              "transformer_layer_0/self_attention_layer/query/kernel": 0.5 ** 2,
              "transformer_layer_1/feedforward_output_dense/kernel": 0.5,
              "pooled_dense/kernel": 1.0, "logits/kernel": head_multiplier or 1.0,
              "logits/bias": head_multiplier or 1.0}
  moved = {v.path: np.abs(v.numpy() - before[v.path]).max()
           for v in t.model.trainable_variables if v.path in expected}
  assert set(moved) == set(expected)
  for path, multiplier in expected.items():
    np.testing.assert_allclose(moved[path], peak * multiplier, rtol=2e-3, err_msg=path)


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


def _augmented(augmenter, texts, index=0):
  return [augmenter(tf.constant(index + i, tf.int64), {"text": tf.constant(t)})["text"]
          .numpy().decode() for i, t in enumerate(texts)]


def test_augmentation_deletes_swaps_and_inserts_training_words_reproducibly():
  from tf_finetune.data import augment
  train = ["the quick brown fox jumps over the lazy dog", "a b c d e f g h i j", "solo"]
  augmenter = augment.Augmenter(train, probability=0.3, seed=7)
  first, again = _augmented(augmenter, train), _augmented(augmenter, train)
  assert first == again  # keyed by (seed, position): a resumed run sees the same texts
  assert _augmented(augmenter, train, index=100) != first
  vocabulary = {w for t in train for w in t.split()}
  for original, changed in zip(train, first):
    words = changed.split()
    assert words and set(words) <= vocabulary
  assert first[0] != train[0] and first[1] != train[1]
  assert first[2] == "solo" or first[2].split()[0] in vocabulary
  # Each operation shows over a few draws: a text of letters, a vocabulary of x, y, z.
  letters = "a b c d e f g h i j".split()
  inserter = augment.Augmenter(["x y z"], probability=0.3, seed=7)
  draws = [_augmented(inserter, [" ".join(letters)], index=k)[0].split() for k in range(20)]
  kept = [[w for w in d if w in letters] for d in draws]
  assert all(set(d) <= set(letters) | {"x", "y", "z"} for d in draws)
  assert all(len(k) == len(set(k)) for k in kept)  # nothing duplicated
  assert any(len(k) < 10 for k in kept)  # deletion
  assert any(k != sorted(k) for k in kept)  # swap
  assert all(len(d) - len(k) == round(0.3 * len(k)) for d, k in zip(draws, kept))  # insertion


def test_augmented_stream_resumes_at_the_same_batch(sentiment_dir):
  from tf_finetune.data import augment
  from tf_finetune.data import pipeline
  config = tiny_config(sentiment_dir, data__augment="eda", data__augment_probability=0.3)
  splits, labels = experiment.load_data(config)
  task, _ = experiment.build_model(config, labels)
  augmenter = augment.Augmenter(splits["train"].texts, 0.3, seed=0)
  stream = lambda skip: pipeline.train_dataset(
      splits["train"], task.label_values(splits["train"]), task, batch_size=8, seed=0,
      shuffle_buffer=100, bucketing=True, skip_batches=skip, augmenter=augmenter)
  whole = [b["token_ids"].numpy() for b in stream(0).take(9)]
  resumed = [b["token_ids"].numpy() for b in stream(6).take(3)]
  for a, b in zip(whole[6:], resumed):
    np.testing.assert_array_equal(a, b)
  plain = pipeline.train_dataset(splits["train"], task.label_values(splits["train"]), task,
                                 batch_size=8, seed=0, shuffle_buffer=100, bucketing=True)
  assert any(not np.array_equal(a, b.numpy()) if a.shape == b.shape else True
             for a, b in zip(whole, (x["token_ids"] for x in plain.take(9))))


def _adversarial_setup(sentiment_dir, **keys):
  from tf_finetune.data import pipeline
  from tf_finetune.training import adversarial
  config = tiny_config(sentiment_dir, **{f"adversarial__{k}": v for k, v in keys.items()})
  splits, labels = experiment.load_data(config)
  task, model = experiment.build_model(config, labels)
  values = task.label_values(splits["train"])
  batch = next(iter(pipeline.eval_dataset(splits["train"], values, task, batch_size=8)))
  features = {k: batch[k] for k in experiment.MODEL_INPUTS}
  loss_of = lambda logits: tf.reduce_mean(task.training_losses(batch["label"], logits))
  return adversarial.AdversarialLoss(config, model), features, loss_of


def test_fgm_moves_the_embeddings_uphill_by_epsilon(sentiment_dir):
  """For a small epsilon, loss(x + r) - loss(x) = epsilon * sum of per-example gradient
  norms to first order (the mean loss: each example's share): r is added where it should be."""
  epsilon = 1e-3
  adv, features, loss_of = _adversarial_setup(sentiment_dir, method="fgm", epsilon=epsilon)
  clean_loss, grads, g = adv.clean(features, loss_of)
  assert len(grads) == len(adv.model.trainable_variables) and g.shape[:2] == \
      features["token_ids"].shape
  adversarial_loss, adversarial_grads = adv.gradients(features, loss_of, g)
  rise = float(adversarial_loss - clean_loss)
  first_order = epsilon * float(tf.reduce_sum(tf.sqrt(tf.reduce_sum(g ** 2, axis=[1, 2]))))
  np.testing.assert_allclose(rise, first_order, rtol=0.05)
  assert any(not np.allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b))
             for a, b in zip(grads, adversarial_grads) if a is not None)


def test_pgd_climbs_at_least_as_high_as_fgm_within_the_ball(sentiment_dir):
  adv, features, loss_of = _adversarial_setup(sentiment_dir, method="fgm", epsilon=0.5)
  clean_loss, _, g = adv.clean(features, loss_of)
  fgm_loss, _ = adv.gradients(features, loss_of, g)
  adv.config.method, adv.config.alpha, adv.config.steps = "pgd", 0.2, 5
  pgd_loss, _ = adv.gradients(features, loss_of, g)
  assert float(pgd_loss) >= float(fgm_loss) - 1e-4 > float(clean_loss)


def test_adversarial_training_steps_under_mirrored(sentiment_dir, tmp_path):
  for method in ("fgm", "pgd"):
    t = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=2, train__eval_every=100,
                                        adversarial__method=method,
                                        distribution__strategy="mirrored"), tmp_path / method)
    before = [v.numpy().copy() for v in t.model.trainable_variables]
    t.train()
    moved = [not np.allclose(a, v.numpy()) for a, v in zip(before, t.model.trainable_variables)]
    assert np.mean(moved) > 0.9, method


def test_ensemble_averages_the_models_probabilities(sentiment_dir, tmp_path):
  import pytest
  from tests.conftest import write_sentiment_tsv
  from tf_finetune import predict
  from tf_finetune.export import serving
  exports = []
  for seed in (0, 1):
    workdir = tmp_path / f"seed{seed}"
    trainer_lib.Trainer(tiny_config(sentiment_dir, train__seed=seed), workdir).train()
    exports.append(str(serving.export_saved_model(workdir)))
  texts = ["a wonderful, moving film", "boring and far too long"]
  alone = [predict.Predictor([path])(texts)["probabilities"].numpy() for path in exports]
  assert not np.allclose(alone[0], alone[1])
  together = predict.Predictor(exports)(texts)
  np.testing.assert_allclose(together["probabilities"], np.mean(alone, axis=0), rtol=1e-6)
  assert [x.decode() for x in together["label"].numpy()] == [
      str(i) for i in np.mean(alone, axis=0).argmax(-1)]
  # Models with other labels do not mix.
  other_data = write_sentiment_tsv(tmp_path / "other")
  for name in ("train.tsv", "dev.tsv"):
    path = other_data / name
    path.write_text(path.read_text().replace("\t0\n", "\tneg\n").replace("\t1\n", "\tpos\n"))
  trainer_lib.Trainer(tiny_config(other_data), tmp_path / "other_run").train()
  other = str(serving.export_saved_model(tmp_path / "other_run"))
  with pytest.raises(SystemExit, match="different labels"):
    predict.Predictor([exports[0], other])
  # A damaged labels.json is named, not a traceback.
  labels_file = pathlib.Path(other) / "assets.extra" / "labels.json"
  labels_file.write_bytes(labels_file.read_bytes()[:5])
  with pytest.raises(SystemExit) as e:
    predict.Predictor([exports[0], other])
  assert str(e.value).startswith(f"error: {labels_file}: cannot be read as JSON (")
  assert str(e.value).endswith("; it should hold the label vocabulary; the file is damaged "
                                "(truncated or overwritten); export the run again")
  labels_file.write_text('["neg", "neg"]')  # JSON, but not a label vocabulary
  with pytest.raises(SystemExit) as e:
    predict.Predictor([exports[0], other])
  assert str(e.value) == (f"error: {labels_file}: not a list of distinct label strings; the "
                          "file is damaged; export the run again")


def test_student_starts_from_chosen_teacher_layers_and_distills(sentiment_dir, tmp_path):
  from tf_finetune.evaluation import evaluator
  from tf_finetune.training import distill
  teacher_dir = tmp_path / "teacher"
  trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=6), teacher_dir).train()
  config = tiny_config(sentiment_dir, train__steps=4, distill__teacher_workdir=str(teacher_dir),
                       distill__student_layers="1", distill__temperature=2.0)
  student = trainer_lib.Trainer(config, tmp_path / "student")
  teacher = {v.path: v.numpy() for v in student.teacher.weights}
  start = {v.path: v.numpy().copy() for v in student.model.weights}
  assert not any(p.startswith("transformer_layer_1/") for p in start)
  for path, value in start.items():
    source = path.replace("transformer_layer_0/", "transformer_layer_1/")
    if "seed_generator" not in path:
      np.testing.assert_array_equal(value, teacher[source], err_msg=path)
  student.train()
  assert any(not np.array_equal(start[v.path], v.numpy()) for v in student.model.weights)
  report = evaluator.evaluate_workdir(tmp_path / "student")
  teacher_report = evaluator.evaluate_workdir(teacher_dir)
  assert report["parameters"]["total"] < teacher_report["parameters"]["total"]
  # The loss: alpha = 0 is the plain cross-entropy, alpha = 1 the tempered KL times T^2.
  logits, teacher_logits = tf.constant([[1.0, -1.0]]), tf.constant([[3.0, 0.0]])
  gold = tf.constant([1])
  config.distill.alpha = 0.0
  np.testing.assert_allclose(
      distill.distillation_losses(config, student.task, gold, logits, teacher_logits),
      student.task.build_losses(gold, logits), rtol=1e-6)
  config.distill.alpha = 1.0
  p_t, p_s = tf.nn.softmax(teacher_logits / 2.0), tf.nn.softmax(logits / 2.0)
  np.testing.assert_allclose(
      distill.distillation_losses(config, student.task, gold, logits, teacher_logits),
      4.0 * tf.reduce_sum(p_t * tf.math.log(p_t / p_s), -1), rtol=1e-4)


def test_dropout_override_reaches_the_encoder_and_the_head(sentiment_dir):
  from tf_finetune import peft
  config = tiny_config(sentiment_dir, model__dropout=0.3)
  _, labels = experiment.load_data(config)
  _, model = experiment.build_model(config, labels)
  assert peft.backbone(model).dropout == 0.3
  assert model.get_layer("head_dropout").rate == 0.3
  layer = peft.backbone(model).get_layer("transformer_layer_0")
  assert layer._self_attention_dropout.rate == 0.3 and layer._feedforward_dropout.rate == 0.3
