"""Few-shot SetFit-style classification (task.name=setfit): contrastive pairs, the pair loss
in the shared loop, a logistic-regression head fitted before each evaluation, one exported
graph from raw text."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (assert_no_texts_give_no_rows, dev_logits, tiny_config, write_pair_tsv,
                            write_sentiment_tsv)
from tf_finetune import checkpoints
from tf_finetune import experiment
from tf_finetune.data import pipeline
from tf_finetune.evaluation import evaluator
from tf_finetune.errors import CheckpointError, ConfigError, DataError, WorkdirError
from tf_finetune.export import serving
from tf_finetune.tasks import sentence_embedding
from tf_finetune.tasks import setfit
from tf_finetune.training import trainer as trainer_lib


def _setfit_config(data_dir, **keys):
  keys = {"task__name": "setfit", "task__pairs_per_example": 4, "data__examples_per_class": 6,
          "train__steps": 12, "train__eval_every": 6, **keys}
  return tiny_config(data_dir, **keys)


@pytest.fixture(scope="module")
def setfit_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("setfit")
  data = write_sentiment_tsv(root / "data", n_train=48, n_dev=24)
  workdir = root / "run"
  trainer_lib.Trainer(_setfit_config(data), workdir).train()
  evaluator.evaluate_workdir(workdir)
  return workdir


def _unordered(first, second):
  return list(zip(np.minimum(first, second).tolist(), np.maximum(first, second).tolist()))


def test_pairs_alternate_one_label_and_two_labels_and_follow_the_seed():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  first, second, similarity = setfit.contrastive_pairs(labels, 6, seed=0)
  assert len(first) == 6 * len(labels)
  np.testing.assert_array_equal(similarity, np.tile([1.0, 0.0], 3 * len(labels)))
  np.testing.assert_array_equal(labels[first] == labels[second], similarity == 1.0)
  again = setfit.contrastive_pairs(labels, 6, seed=0)
  for a, b in zip((first, second, similarity), again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(setfit.contrastive_pairs(labels, 6, seed=1)[1], second)


def test_no_pair_repeats_while_its_kind_has_enough_and_a_short_kind_is_cycled_evenly():
  labels = np.repeat(np.arange(3), 20)  # 630 pairs of one label, 1200 of two
  first, second, similarity = setfit.contrastive_pairs(labels, 40, seed=3)
  for kind in (1.0, 0.0):
    pairs = _unordered(first[similarity == kind], second[similarity == kind])
    if kind == 0.0:  # 1200 pairs of two labels wanted, 1200 exist: each once
      assert len(set(pairs)) == len(pairs) == 1200
    else:  # 1200 wanted, 630 exist (self-pairs included): all used, none a third time
      counts = np.unique(pairs, axis=0, return_counts=True)[1]
      assert len(counts) == 630 and counts.min() == 1 and counts.max() == 2
      assert counts.sum() == 1200
  # The order is random, not text by text: the first texts of the first 60 pairs vary.
  assert len(set(first[:60].tolist())) > 20


def test_a_label_with_one_example_pairs_it_with_itself():
  first, second, similarity = setfit.contrastive_pairs(np.array([0, 1, 1]), 8, seed=0)
  assert set(_unordered(first[similarity == 1.0], second[similarity == 1.0])) == {
      (0, 0), (1, 1), (1, 2), (2, 2)}
  assert set(_unordered(first[similarity == 0.0], second[similarity == 0.0])) == {(0, 1), (0, 2)}


def test_too_many_train_texts_to_draw_pairs_from_are_refused_with_the_keys_that_cap_them():
  setfit.contrastive_pairs(np.arange(5792) % 2, 2, seed=0)  # 16,776,528 pairs: drawn
  with pytest.raises(ValueError, match="5793 train texts .*data.examples_per_class"):
    setfit.contrastive_pairs(np.arange(5793) % 2, 2, seed=0)


def test_the_contrastive_steps_lower_the_pair_loss_and_change_the_encoder(tmp_path):
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=8)
  trainer = trainer_lib.Trainer(_setfit_config(data, train__steps=30, train__eval_every=30,
                                               train__learning_rate=3e-3), tmp_path / "run")
  assert trainer.num_train_examples == 12 * 4  # 6 of each label, 4 pairs each
  task, model = trainer.task, trainer.model
  pairs = pipeline.train_dataset(trainer.splits["train"], trainer.train_label_values, task,
                                 batch_size=48, seed=0, shuffle_buffer=0, bucketing=False)
  batch = next(iter(pairs))
  assert {"token_ids_b", "segment_ids_b", "padding_mask_b"} <= set(batch)
  assert sorted(np.unique(batch["label"].numpy())) == [0.0, 1.0]

  def pair_loss():
    logits = task.training_logits(model, batch, training=False)
    return float(tf.reduce_mean(task.training_losses(batch["label"], logits)))

  before, weights = pair_loss(), [w.numpy() for w in model.trainable_weights]
  trainer.train()
  assert pair_loss() < 0.5 * before
  # Unchanged: the pooler (mean pooling reads no pooler) and the attention key biases (a
  # constant a query adds to every score; softmax ignores it, so its gradient is 0).
  unchanged = [v.path for a, v in zip(weights, model.trainable_weights)
               if np.allclose(a, v.numpy())]
  assert sorted(unchanged) == ["pooled_dense/bias", "pooled_dense/kernel"] + [
      f"transformer_layer_{i}/self_attention_layer/key/bias" for i in range(2)]


def _head_and_logistic_regressions(workdir, checkpoint, *cs):
  """Dev probabilities of a run's checkpoint, then those of logistic regressions with each C
  fitted on its encoder's train embeddings."""
  from sklearn.linear_model import LogisticRegression
  run = experiment.load_run(workdir, checkpoint)
  splits, _ = experiment.load_data(run.config, run.labels)
  embed = lambda split: experiment.predict_logits(
      sentence_embedding.embedder(run.model),
      pipeline.eval_dataset(split, run.task.label_values(split), run.task, batch_size=64))
  train_values = run.task.label_values(splits["train"])
  dev, _, logits, _ = dev_logits(workdir, checkpoint)
  return [tf.nn.softmax(logits).numpy()] + [
      LogisticRegression(C=c, max_iter=1000).fit(embed(splits["train"]), train_values)
      .predict_proba(embed(dev)) for c in cs]


def test_the_head_is_the_logistic_regression_of_the_train_embeddings(setfit_run):
  run = experiment.load_run(setfit_run)
  assert run.config.task.head_c == 100.0  # the default, not scikit-learn's (and SetFit's) 1.0
  probabilities, with_c_100, with_c_1 = _head_and_logistic_regressions(
      setfit_run, "best", 100.0, 1.0)
  np.testing.assert_allclose(probabilities, with_c_100, atol=1e-4)
  assert np.abs(probabilities - with_c_1).max() > 1e-2
  dev, _, _, _ = dev_logits(setfit_run)
  report = json.loads((setfit_run / "eval" / "report.json").read_text())
  assert report["splits"]["dev"]["accuracy"] == pytest.approx(
      np.mean(probabilities.argmax(-1) == run.task.label_values(dev)))


def test_a_run_made_before_task_head_c_resumes_with_the_head_it_was_made_with(tmp_path):
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=24)
  config, workdir = _setfit_config(data), tmp_path / "run"
  trainer_lib.Trainer(config, workdir).train(until_step=3)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["task"].pop("head_c") == 100.0  # as tf_finetune wrote it before the key
  (workdir / "config.json").write_text(json.dumps(saved))
  assert experiment.Workdir(workdir).load_config().task.head_c == 1.0
  with pytest.raises(WorkdirError, match=r"another config \(task\.head_c: 1\.0 -> 7\.0\)"):
    trainer_lib.Trainer(_setfit_config(data, task__head_c=7.0), workdir)
  resumed = trainer_lib.Trainer(config, workdir)
  assert (resumed.config.task.head_c, config.task.head_c) == (1.0, 100.0)
  resumed.train()
  assert resumed.step == 12
  probabilities, with_c_1, with_c_100 = _head_and_logistic_regressions(
      workdir, "latest", 1.0, 100.0)
  np.testing.assert_allclose(probabilities, with_c_1, atol=1e-4)
  assert np.abs(probabilities - with_c_100).max() > 1e-2
  assert "head_c" not in json.loads((workdir / "config.json").read_text())["task"]


@pytest.mark.parametrize("until_step", [3, 7])
def test_a_run_stopped_between_evaluations_resumes_to_the_uninterrupted_weights(tmp_path,
                                                                                until_step):
  """The packed pair stream, dropout and the head refitted at the resume's checkpoint and
  evaluations: a run stopped before its first evaluation (step 3) or after it (step 7) ends
  with every variable of the uninterrupted run, head included, bit for bit."""
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=24)
  config = _setfit_config(data, model__dropout=0.1)
  assert config.data.packing
  straight = trainer_lib.Trainer(config, tmp_path / "straight")
  straight.train()
  trainer_lib.Trainer(config, tmp_path / "resumed").train(until_step=until_step)
  resumed = trainer_lib.Trainer(config, tmp_path / "resumed")
  assert resumed.step == until_step
  resumed.train()
  for a, b in zip(straight.model.variables, resumed.model.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
  assert (json.loads((tmp_path / "straight" / "checkpoints" / "best.json").read_text())
          == json.loads((tmp_path / "resumed" / "checkpoints" / "best.json").read_text()))


def test_wise_ft_evaluates_the_mix_of_start_and_trained_weights_and_trains_on_unmixed(
    tmp_path):
  """task.wise_ft_alpha=0.5: every evaluation, the best checkpoint and the last one hold
  start + 0.5 * (trained - start), the head fitted on them; training goes on from its own
  weights after the evaluation at step 6, so the trained weights are those of alpha=1 (also
  when the run is stopped after that evaluation and resumed)."""
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=24)
  def trained(workdir, alpha, until_step=None):
    # C=1: the regression is well conditioned, so refitting it apart gives the same head.
    trainer = trainer_lib.Trainer(_setfit_config(data, task__wise_ft_alpha=alpha,
                                                 task__head_c=1.0), workdir)
    start = [v.numpy() for v in trainer.model.trainable_variables]
    trainer.train(until_step)
    return trainer, start
  plain, start = trained(tmp_path / "plain", 1.0)
  mixed, _ = trained(tmp_path / "mixed", 0.5)
  trained(tmp_path / "resumed", 0.5, until_step=6)
  resumed, _ = trained(tmp_path / "resumed", 0.5)
  head = {"logits/kernel", "logits/bias"}
  for a, b, c, v in zip(start, plain.model.trainable_variables, mixed.model.trainable_variables,
                        resumed.model.trainable_variables):
    if v.path not in head:
      np.testing.assert_allclose(c.numpy(), (a + b.numpy()) / 2, atol=2e-6, err_msg=v.path)
      np.testing.assert_allclose(v.numpy(), c.numpy(), atol=2e-6, err_msg=v.path)
  moved = [v.path for a, v in zip(start, plain.model.trainable_variables)
           if not np.allclose(a, v.numpy(), atol=1e-4)]
  assert len(moved) > 20
  for run in (tmp_path / "mixed", tmp_path / "resumed"):
    for checkpoint in ("best", "latest"):  # its head is the regression of its own encoder
      probabilities, with_c_1 = _head_and_logistic_regressions(run, checkpoint, 1.0)
      np.testing.assert_allclose(probabilities, with_c_1, atol=1e-4)
  plain_dev = dev_logits(tmp_path / "plain", "latest")[2]
  assert np.abs(dev_logits(tmp_path / "mixed", "latest")[2] - plain_dev).max() > 1e-2
  for trainer in (plain, mixed, resumed):
    trainer.close()


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_every_training_checkpoint_holds_the_head_of_its_own_encoder(tmp_path, alpha):
  """A checkpoint between evaluations (train.checkpoint_every), or after WiSE-FT's swap back
  to the trained weights, holds the head refitted on the encoder it holds, so that
  evaluate and export --checkpoint=latest (or a path) read a head and an encoder that
  belong together; a damaged best checkpoint of a WiSE-FT run is not replaced by the
  training checkpoint of its step, which holds the trained encoder, not the mix."""
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=24)
  workdir = tmp_path / "run"
  config = _setfit_config(data, task__head_c=1.0, task__wise_ft_alpha=alpha,
                          train__checkpoint_every=3, train__keep_checkpoints=5)
  trainer = trainer_lib.Trainer(config, workdir)
  trainer.train(until_step=9)
  trainer.close()
  for step in (3, 6, 9):
    probabilities, with_c_1 = _head_and_logistic_regressions(
        workdir, str(workdir / "checkpoints" / f"ckpt-{step}"), 1.0)
    np.testing.assert_allclose(probabilities, with_c_1, atol=1e-4, err_msg=f"ckpt-{step}")
  best = json.loads((workdir / "checkpoints" / "best.json").read_text())
  assert best["step"] == 6
  for path in (workdir / "checkpoints" / "best").glob(f"{best['checkpoint']}.*"):
    path.unlink()
  if alpha == 1.0:
    assert dev_logits(workdir, "best")[2].shape == (24, 2)
  else:
    with pytest.raises(WorkdirError, match=r"task\.wise_ft_alpha=0\.5 the training checkpoint "
                                           r"of the same step, \S*/ckpt-6, holds the trained "
                                           r"encoder, not WiSE-FT's mix"):
      dev_logits(workdir, "best")


def test_the_head_fit_and_the_dev_evaluation_trace_one_forward_pass(tmp_path):
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=24)
  trainer = trainer_lib.Trainer(_setfit_config(data), tmp_path / "run")
  report = trainer.evaluate_dev()  # embeds the train texts, fits the head, evaluates dev
  assert 0 <= report["accuracy"] <= 1
  embedder = trainer.task._embedder(trainer.model)
  assert trainer.model not in experiment._PACKED_FORWARD
  assert experiment._PACKED_FORWARD[embedder][1].experimental_get_tracing_count() == 1
  trainer.close()


def test_export_serves_raw_text_equal_to_evaluate(setfit_run):
  dev, _, logits, labels = dev_logits(setfit_run)
  export = serving.export_saved_model(setfit_run)
  model = tf.saved_model.load(str(export))
  served = model.signatures["serving_default"](text=tf.constant(dev.texts))
  np.testing.assert_allclose(served["logits"].numpy(), logits, atol=1e-5)
  assert_no_texts_give_no_rows(model.signatures["serving_default"])
  assert [x.decode() for x in served["label"].numpy()] == [
      labels[i] for i in logits.argmax(-1)]
  assert "Few-shot (SetFit-style): contrastive pairs (4 per train example)" in (
      export / "README.md").read_text()


def test_pairs_train_under_mirrored_with_static_shapes(tmp_path):
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=8, max_repeats=3)
  config = _setfit_config(data, distribution__strategy="mirrored", data__static_shapes=True,
                          train__steps=4, train__eval_every=4)
  trainer = trainer_lib.Trainer(config, tmp_path / "run")
  assert trainer.strategy.num_replicas_in_sync == 2
  before = [w.numpy() for w in trainer.model.trainable_weights]
  trainer.train()
  assert trainer.step == 4 and trainer.best["step"] == 4
  assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, trainer.model.trainable_weights))
  head = trainer.model.get_layer("logits").kernel.numpy()
  assert np.abs(head).sum() > 0  # fitted before the evaluation


def test_switches_that_do_not_apply_are_refused(tmp_path):
  data = write_sentiment_tsv(tmp_path / "data")
  for keys, message in [
      ({"task__pairs_per_example": 3}, "task.pairs_per_example=3: must be even and >= 2"),
      ({"task__head_c": 0.0}, "task.head_c=0.0: must be > 0"),
      ({"task__wise_ft_alpha": 0.0}, "task.wise_ft_alpha=0.0: must be in (0, 1]"),
      ({"task__wise_ft_alpha": 1.5}, "task.wise_ft_alpha=1.5: must be in (0, 1]"),
      ({"data__long_text": "windows"}, "data.long_text='windows': does not apply to "
                                       "task.name='setfit'"),
      ({"privacy__method": "dp_sgd"}, "privacy.method='dp_sgd': does not apply to "
                                      "task.name='setfit'"),
      ({"adversarial__method": "fgm"}, "adversarial.method='fgm': does not apply")]:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
      _setfit_config(data, **keys)
  pairs = write_pair_tsv(tmp_path / "pairs", ["is", "was"])
  config = _setfit_config(pairs, data__text_column="premise", data__text_pair_column="hypothesis",
                          data__examples_per_class=0)
  with pytest.raises(DataError, match=r"train\.tsv.*: has a second text column; "
                                      r"task\.name='setfit' classifies single texts"):
    trainer_lib.Trainer(config, tmp_path / "run").train()


def test_pooling_is_read_from_the_sentence_transformers_files(tmp_path):
  from tests.conftest import tiny_checkpoint_dir
  assert checkpoints.sentence_pooling(tiny_checkpoint_dir())[:2] == ("mean", False)
  directory = tmp_path / "st"
  directory.mkdir()
  (directory / "config.json").write_text("{}")
  (directory / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize",
       "type": "sentence_transformers.models.Normalize"}]))
  (directory / "1_Pooling").mkdir()
  pooling_file = directory / "1_Pooling" / "config.json"
  pooling_file.write_text(json.dumps({"pooling_mode_cls_token": True,
                                      "pooling_mode_mean_tokens": False}))
  assert checkpoints.sentence_pooling(directory)[:2] == ("cls", True)
  pooling_file.write_text(json.dumps({"pooling_mode_max_tokens": True}))
  with pytest.raises(CheckpointError, match=r"1_Pooling/config\.json: pooling_mode_max_tokens: "
                                            "only one of mean or cls"):
    checkpoints.sentence_pooling(directory)
  pooling_file.unlink()  # was read as mean pooling, whatever the checkpoint pooled with
  with pytest.raises(CheckpointError) as e:
    checkpoints.sentence_pooling(directory)
  assert str(e.value) == (f"{pooling_file}: missing, but {directory / 'modules.json'} names a "
                          "Pooling module in '1_Pooling'; the pooling (mean or cls) is not "
                          "known: restore the file from the checkpoint")
  for damaged in ([1], [{"idx": 0, "path": "1_Pooling"}], [{"type": "x.Pooling", "path": 1}]):
    (directory / "modules.json").write_text(json.dumps(damaged))
    with pytest.raises(CheckpointError, match=r"modules\.json: module 1, .*, is not an object "
                                              r"with a \"type\" \(and \"path\"\) string; the "
                                              "file is damaged"):
      checkpoints.sentence_pooling(directory)
