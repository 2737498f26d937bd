"""data.packing: a batch's examples laid end to end in rows compute what they compute alone."""
import re

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config, write_sentiment_tsv
from tests.test_tagging import ner_config
from tf_finetune import experiment
from tf_finetune.data import packing
from tf_finetune.data import pipeline
from tf_finetune.tasks import sentence_embedding
from tf_finetune.training import trainer as trainer_lib


@pytest.mark.parametrize("seed", range(5))
def test_first_fit_decreasing_places_every_example_once_within_a_row(seed):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, 33, size=int(rng.integers(1, 40))).astype(np.int32)
  rows, starts = (x.numpy() for x in packing.first_fit_decreasing(tf.constant(lengths), 32))
  occupied = {}
  for i, (row, start, length) in enumerate(zip(rows, starts, lengths)):
    assert 0 <= start and start + length <= 32
    for column in range(start, start + length):
      assert (row, column) not in occupied, "two examples overlap"
      occupied[row, column] = i
  assert set(rows) == set(range(rows.max() + 1))  # rows numbered without gaps
  assert rows.max() + 1 <= -(-2 * lengths.sum() // 32)  # first-fit fills rows over half
  again = packing.first_fit_decreasing(tf.constant(lengths), 32)
  assert (again[0].numpy() == rows).all() and (again[1].numpy() == starts).all()


@pytest.mark.parametrize("seed", range(3))
def test_unpack_lays_packed_values_out_as_they_were_padded(seed):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, 17, size=int(rng.integers(1, 12)))
  mask = (np.arange(lengths.max())[None, :] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(5, 100, size=mask.shape).astype(np.int32) * mask
  batch = {"token_ids": tf.constant(ids), "segment_ids": tf.constant(mask * 0),
           "padding_mask": tf.constant(mask), "label": tf.constant(ids)}
  packed = packing.pack(batch, 16, 0, token_labels=True)
  assert packed["token_ids"].shape[0] < len(lengths) or len(lengths) < 3
  np.testing.assert_array_equal(packing.unpack(packed["token_ids"], packed).numpy(), ids)
  per_token = tf.stack([packed["token_ids"], packed["label"]], -1)  # a trailing axis
  np.testing.assert_array_equal(packing.unpack(per_token, packed).numpy(),
                                np.stack([ids, np.where(mask > 0, ids, 0)], -1))


def _model_and_batch(config):
  """The config's task and model, a shuffled training batch of 16, and that batch packed."""
  splits, labels = experiment.load_data(config)
  task, model = experiment.build_model(config, labels)
  values = task.label_values(splits["train"])
  batch = next(iter(pipeline.train_dataset(splits["train"], values, task, batch_size=16,
                                           seed=0, shuffle_buffer=64, bucketing=False)))
  packed = packing.pack(batch, config.data.max_seq_length, task.encoder.pad_id,
                        task.token_labels)
  assert packed["token_ids"].shape[0] < batch["token_ids"].shape[0]  # fewer rows
  return task, model, batch, packed


def _sentiment_config(tmp_path, **overrides):
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=8, max_repeats=4)
  return tiny_config(data, data__max_seq_length=32, **overrides)


def _regression_config(tmp_path, **overrides):
  data = tmp_path / "scores"
  data.mkdir()
  rng = np.random.default_rng(0)
  words = "good bad fine dull great awful nice poor".split()
  for name, n in (("train.tsv", 48), ("dev.tsv", 8)):
    rows = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(n)]
    (data / name).write_text("sentence\tscore\n" + "".join(
        f"{r}\t{rng.uniform(0, 5):.3f}\n" for r in rows))
  return tiny_config(data, task__name="regression", data__label_column="score",
                     data__max_seq_length=32, **overrides)


def _assert_same_gradients(tape, loss, other_loss, model):
  for a, b, v in zip(tape.gradient(loss, model.trainable_variables),
                     tape.gradient(other_loss, model.trainable_variables),
                     model.trainable_variables):
    if a is None or b is None:
      assert a is None and b is None, v.path  # the pooler, when the head does not read it
      continue
    np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(),
                               atol=1e-5, err_msg=v.path)


@pytest.mark.parametrize("task_name,pooling", [("classification", "pooler"),
                                               ("classification", "cls"),
                                               ("classification", "mean"),
                                               ("regression", "pooler")])
def test_packed_forward_and_gradients_equal_the_unpacked_ones(tmp_path, task_name, pooling):
  make_config = _regression_config if task_name == "regression" else _sentiment_config
  assert_packed_equals_unpacked(make_config(tmp_path, model__pooling=pooling))


def assert_packed_equals_unpacked(config):
  """A training batch's logits and loss gradients, packed and not, within 1e-5."""
  task, model, batch, packed = _model_and_batch(config)
  assert int(tf.reduce_sum(packed["padding_mask"])) == int(tf.reduce_sum(batch["padding_mask"]))
  features = {k: batch[k] for k in experiment.MODEL_INPUTS}
  with tf.GradientTape(persistent=True) as tape:
    plain = model(features, training=False)
    by_rows = task.packed_logits(model, packed, training=False)
    plain_loss = tf.reduce_sum(task.training_losses(batch["label"], plain))
    packed_loss = tf.reduce_sum(task.training_losses(packed["label"], by_rows))
  np.testing.assert_allclose(by_rows.numpy(), plain.numpy(), atol=1e-5)
  _assert_same_gradients(tape, packed_loss, plain_loss, model)


def test_attention_stays_inside_each_example(tmp_path):
  """Changing one example's tokens leaves its row-mates' logits as they were."""
  task, model, batch, packed = _model_and_batch(_sentiment_config(tmp_path))
  rows = packed["example_rows"].numpy()
  shared = [r for r in set(rows.tolist()) if (rows == r).sum() > 1][0]
  first, *others = np.flatnonzero(rows == shared)
  changed = dict(packed)
  ids = packed["token_ids"].numpy()
  ids[packed["example_ids"].numpy() == first + 1] = task.encoder.cls_id + 3
  changed["token_ids"] = tf.constant(ids)
  before = task.packed_logits(model, packed, training=False).numpy()
  after = task.packed_logits(model, changed, training=False).numpy()
  assert np.abs(after[first] - before[first]).max() > 1e-4
  np.testing.assert_allclose(after[others], before[others], atol=1e-6)


def test_fill_counts_measure_the_packed_rows_and_the_padding_packing_removed():
  lengths = np.array([3, 5, 2])
  mask = (np.arange(5)[None, :] < lengths[:, None]).astype(np.int32)
  batch = {"token_ids": tf.constant(mask * 7), "segment_ids": tf.constant(mask * 0),
           "padding_mask": tf.constant(mask), "label": tf.constant([0, 1, 0])}
  packed = packing.pack(batch, 8, 0)  # 5 + 3 fill the first row, 2 the second
  rows, slots, tokens, examples, unpacked_slots = packing.fill_counts(packed).numpy()
  assert (rows, slots, tokens, examples, unpacked_slots) == (2, 16, 10, 3, 15)


def test_a_packed_run_trains_and_says_how_full_its_rows_are(tmp_path, caplog):
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=8, max_repeats=4)
  with caplog.at_level("INFO", logger="absl"):
    t = trainer_lib.Trainer(tiny_config(data, train__steps=2), tmp_path / "run")
  assert t.packing
  before = [v.numpy() for v in t.model.trainable_variables]
  with caplog.at_level("INFO", logger="absl"):
    t.train()
  changed = [not np.allclose(a, b.numpy()) for a, b in zip(before, t.model.trainable_variables)]
  assert np.mean(changed) > 0.95
  line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Packing: on"))
  assert "examples per row" in line and "padding" in line, line
  # Read from the training stream: each step packed exactly its batch of examples.
  per_step = float(re.search(r"([\d.]+) examples in", line).group(1))
  assert per_step == t.global_batch_size, line
  off = trainer_lib.Trainer(tiny_config(data, data__packing=False), tmp_path / "off")
  assert not off.packing
  off.close()


@pytest.mark.parametrize("long_text", ["truncate", "windows"])
def test_evaluation_packs_and_gives_the_unpacked_logits(tmp_path, long_text):
  data = write_sentiment_tsv(tmp_path / "data", n_train=16, n_dev=24, max_repeats=6)
  packed_config = tiny_config(data, data__max_seq_length=16, data__long_text=long_text)
  plain_config = tiny_config(data, data__max_seq_length=16, data__long_text=long_text,
                             data__packing=False)
  splits, labels = experiment.load_data(plain_config)
  task, model = experiment.build_model(packed_config, labels)
  plain_task = experiment.build_model(plain_config, labels, task.encoder)[0]
  dev = splits["dev"]
  rows = [sum(b["token_ids"].shape[0] for b in pipeline.eval_dataset(
      dev, task.label_values(dev), task, batch_size=8, packing=packing)) for packing in (1, 0)]
  assert rows[0] < rows[1]  # fewer rows than texts (or windows)
  _, packed = experiment.evaluate_split(task, model, dev, batch_size=8)
  _, plain = experiment.evaluate_split(plain_task, model, dev, batch_size=8)
  assert packed.shape == plain.shape == (len(dev), 2)
  np.testing.assert_allclose(packed, plain, atol=1e-5)
  # Serving's forward (eager here): packed for a batch, the model as it is for one text.
  packed_sizes, pack = [], task.pack
  task.pack = lambda batch: packed_sizes.append(len(batch["token_ids"])) or pack(batch)
  several = task.encoder.pad(task.encoder(tf.constant(dev.texts[:5])))
  np.testing.assert_allclose(task.forward(model, several), model(several), atol=1e-5)
  one = task.encoder.pad(task.encoder(tf.constant(dev.texts[:1])))
  np.testing.assert_allclose(task.forward(model, one), model(one), atol=1e-5)
  assert packed_sizes == [len(several["token_ids"])] and len(one["token_ids"]) == 1


def test_unpacked_evaluation_batches_by_length_and_answers_in_file_order(tmp_path):
  data = write_sentiment_tsv(tmp_path / "data", n_train=16, n_dev=40, max_repeats=6)
  config = tiny_config(data, data__packing=False)
  splits, labels = experiment.load_data(config)
  task, model = experiment.build_model(config, labels)
  dev, values = splits["dev"], task.label_values(splits["dev"])
  assert task.packing_refusal(training=False)
  padded = lambda split: sum(int(np.prod(b["token_ids"].shape)) for b in pipeline.eval_dataset(
      split, task.label_values(split), task, batch_size=8))
  assert padded(dev.subset(experiment._shortest_first(dev))) < padded(dev)
  in_file_order = experiment.predict_logits(
      model, pipeline.eval_dataset(dev, values, task, batch_size=8))
  got_values, logits = experiment.evaluate_split(task, model, dev, batch_size=8)
  np.testing.assert_array_equal(got_values, values)
  np.testing.assert_allclose(logits, in_file_order, atol=1e-5)


def test_tagging_packs_training_batches_with_the_same_loss_and_gradients():
  task, model, batch, packed = _model_and_batch(ner_config())
  assert int(tf.reduce_sum(tf.cast(packed["label"] >= 0, tf.int32))) == \
      int(tf.reduce_sum(tf.cast(batch["label"] >= 0, tf.int32)))
  features = {k: batch[k] for k in experiment.MODEL_INPUTS}

  def token_loss(labels, logits):
    return tf.reduce_sum(task.training_losses(labels, logits)) / tf.reduce_sum(
        task.loss_counts(labels))
  with tf.GradientTape(persistent=True) as tape:
    plain = token_loss(batch["label"], model(features, training=False))
    by_rows = token_loss(packed["label"], task.packed_logits(model, packed, training=False))
  np.testing.assert_allclose(by_rows.numpy(), plain.numpy(), rtol=1e-5)
  _assert_same_gradients(tape, by_rows, plain, model)
  assert task.packing_refusal() == "" and task.packing_refusal(training=False) == ""
  sentence = experiment.build_model(ner_config(task__loss_average="sentence"),
                                    task.label_vocabulary)[0]
  assert "loss_average='sentence'" in sentence.packing_refusal()


@pytest.mark.parametrize("long_text,max_seq_length", [("truncate", 32), ("windows", 14)])
def test_tagging_evaluates_and_serves_packed_as_unpacked(long_text, max_seq_length):
  """Evaluation and serving pack tagging's sentences and read each word's logits back at
  its unpacked row and position: the same logits, report and served entities."""
  keys = {"data__max_seq_length": max_seq_length, "data__long_text": long_text}
  packed_config, plain_config = ner_config(**keys), ner_config(data__packing=False, **keys)
  splits, labels = experiment.load_data(plain_config)
  task, model = experiment.build_model(packed_config, labels)
  plain_task = experiment.build_model(plain_config, labels, task.encoder)[0]
  assert task.packing_refusal(training=False) == "" and plain_task.packing_refusal(False)
  head = model.get_layer("logits").kernel
  head.assign(tf.random.stateless_normal(head.shape, seed=[3, 4]))
  dev = splits["dev"]
  rows = [sum(b["token_ids"].shape[0] for b in pipeline.eval_dataset(
      dev, task.label_values(dev), task, batch_size=8, packing=packing)) for packing in (1, 0)]
  # (a sentence's windows are full rows but for its last, so they rarely share a row)
  assert rows[0] < rows[1] if long_text == "truncate" else rows[1] > len(dev)
  values, packed = experiment.evaluate_split(task, model, dev, batch_size=8)
  _, plain = experiment.evaluate_split(plain_task, model, dev, batch_size=8)
  real = experiment._concatenate([b["padding_mask"].numpy()[..., None] for b in
                                   pipeline.eval_dataset(dev, values, task, batch_size=8)])
  assert packed.shape == plain.shape and np.abs(plain).max() > 1e-1
  np.testing.assert_allclose(packed * real, plain * real, atol=1e-5)  # padding: unread
  assert task.report(values, packed) == plain_task.report(values, plain)
  texts = tf.constant([" ".join(words) for words in dev.tokens[:8]] + ["", "Kyoto"])
  served, served_plain = task.serve_text(model, texts), plain_task.serve_text(model, texts)
  for key in ("word_tag", "entity_type", "entity_start", "entity_end", "entity_count"):
    np.testing.assert_array_equal(served[key].numpy(), served_plain[key].numpy(), key)
  np.testing.assert_allclose(served["entity_score"], served_plain["entity_score"], atol=1e-5)


@pytest.mark.parametrize("task_name", ["setfit", "zero_shot"])
def test_sentence_embedding_tasks_evaluate_packed_as_unpacked(tmp_path, task_name):
  """SetFit and zero-shot (which does not train) pack in evaluation and serving; their
  logits, and SetFit's head's embeddings, equal the unpacked ones."""
  data = write_sentiment_tsv(tmp_path / "data", n_train=16, n_dev=24, max_repeats=6)
  keys = {"task__name": task_name, "data__max_seq_length": 16}
  if task_name == "zero_shot":
    keys["task__label_descriptions"] = "This text is {label}."
  packed_config, plain_config = tiny_config(data, **keys), tiny_config(
      data, data__packing=False, **keys)
  splits, labels = experiment.load_data(plain_config)
  task, model = experiment.build_model(packed_config, labels)
  plain_task = experiment.build_model(plain_config, labels, task.encoder)[0]
  assert bool(task.packing_refusal(training=True)) == (task_name == "zero_shot")
  assert not task.packing_refusal(training=False)
  head = model.get_layer("logits").kernel  # SetFit's is zeros until its head is fitted
  head.assign(tf.random.stateless_normal(head.shape, seed=[1, 2]))
  dev = splits["dev"]
  rows = [sum(b["token_ids"].shape[0] for b in pipeline.eval_dataset(
      dev, task.label_values(dev), task, batch_size=8, packing=packing)) for packing in (1, 0)]
  assert rows[0] < rows[1]
  models = [model, sentence_embedding.embedder(model)] if task_name == "setfit" else [model]
  for evaluated in models:
    _, packed = experiment.evaluate_split(task, evaluated, dev, batch_size=8)
    _, plain = experiment.evaluate_split(plain_task, evaluated, dev, batch_size=8)
    assert packed.shape == plain.shape and packed.shape[0] == len(dev)
    assert np.abs(plain).max() > 1e-2
    np.testing.assert_allclose(packed, plain, atol=1e-5)


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_setfit_packs_both_texts_of_its_pairs_with_the_same_loss_and_gradients(tmp_path,
                                                                               strategy):
  """A batch of pairs packs its first and second texts into the same rows; each pair's
  similarity and the loss gradients equal the unpacked batch's, and a packed run trains."""
  data = write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=8, max_repeats=2)
  config = tiny_config(data, task__name="setfit", task__pairs_per_example=4,
                       data__examples_per_class=6, distribution__strategy=strategy,
                       train__steps=2, train__eval_every=2)
  trainer = trainer_lib.Trainer(config, tmp_path / "run")
  task, model = trainer.task, trainer.model
  assert trainer.packing
  batch = next(iter(pipeline.train_dataset(trainer.splits["train"], trainer.train_label_values,
                                           task, batch_size=16, seed=0, shuffle_buffer=48,
                                           bucketing=False)))
  packed = task.pack(batch)
  texts = int(tf.reduce_sum(batch["padding_mask"]) + tf.reduce_sum(batch["padding_mask_b"]))
  assert int(tf.reduce_sum(packed["padding_mask"])) == texts
  assert packed["example_rows"].shape[0] == 32 and packed["token_ids"].shape[0] < 32
  with tf.GradientTape(persistent=True) as tape:
    plain = task.training_logits(model, batch, training=False)
    by_rows = task.training_logits(model, packed, training=False)
    plain_loss = tf.reduce_sum(task.training_losses(batch["label"], plain))
    packed_loss = tf.reduce_sum(task.training_losses(packed["label"], by_rows))
  assert plain.shape == [16] and np.ptp(plain.numpy()) > 1e-3
  np.testing.assert_allclose(by_rows.numpy(), plain.numpy(), atol=1e-5)
  _assert_same_gradients(tape, packed_loss, plain_loss, model)
  before = [v.numpy() for v in model.trainable_variables]
  trainer.train()
  changed = [not np.allclose(a, b.numpy()) for a, b in zip(before, model.trainable_variables)]
  assert np.mean(changed) > 0.85 and trainer.step == 2
