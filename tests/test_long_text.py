"""Texts longer than max_seq_length: head_tail and overlapping windows (data.long_text)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (assert_no_texts_give_no_rows, tiny_checkpoint_dir, tiny_config,
                            write_sentiment_tsv)
from tests.test_tagging import ner_config
from tf_finetune import checkpoints
from tf_finetune import experiment
from tf_finetune import tasks
from tf_finetune import text_encoder
from tf_finetune.data import pipeline
from tf_finetune.errors import ConfigError
from tf_finetune.export import serving
from tf_finetune.tasks import tagging
from tf_finetune.training import trainer as trainer_lib

WORDS = "great film dull plot loved acting boring superb tedious charming".split()


def _encoder(max_seq_length=16, **kwargs):
  spec = checkpoints.read_tokenizer_spec(tiny_checkpoint_dir())
  return text_encoder.TextEncoder(spec, max_seq_length, **kwargs)


@pytest.mark.parametrize("stride", [1, 5, 14])
def test_windows_cover_every_wordpiece_with_the_configured_overlap(stride):
  encoder = _encoder(16, long_text="windows", window_stride=stride)
  lengths = list(range(0, 61))
  starts, ends, cut = encoder.window_spans(tf.constant(lengths))
  assert not cut.numpy().any()
  for length, s, e in zip(lengths, starts.to_list(), ends.to_list()):
    assert s[0] == 0 and e[-1] == length  # from the first wordpiece to the last
    covered = set()
    for a, b in zip(s, e):
      assert b - a == min(14, length)  # full windows (a short text: one window of it all)
      covered |= set(range(a, b))
    assert covered == set(range(length))  # no gap
    for (a0, b0), (a1, b1) in zip(zip(s, e), zip(s[1:], e[1:])):
      assert 0 < a1 - a0 <= stride and b0 - a1 >= 14 - stride  # overlap as configured

  texts = [" ".join(WORDS[i % 10] for i in range(n)) for n in (3, 14, 15, 40)]
  features = encoder.windows(tf.constant(texts))
  pieces = encoder.tokenize(tf.constant(texts)).to_list()
  windows = [row[1:-1] for row in features["token_ids"].to_list()]  # without [CLS], [SEP]
  assert all(row[0] == encoder.cls_id and row[-1] == encoder.sep_id
             for row in features["token_ids"].to_list())
  document = features["document"].numpy()
  assert features["windows_used"].numpy().tolist() == np.bincount(document).tolist()
  for i, text_pieces in enumerate(pieces):
    own = [w for w, d in zip(windows, document) if d == i]
    assert own[0] == text_pieces[:14] and own[-1] == text_pieces[-14:]
    assert len(own) == encoder.window_counts([texts[i]])[0]


def test_max_windows_caps_and_says_so():
  encoder = _encoder(16, long_text="windows", window_stride=7, max_windows=3)
  starts, ends, cut = encoder.window_spans(tf.constant([14, 28, 100]))
  assert starts.row_lengths().numpy().tolist() == [1, 3, 3]
  assert cut.numpy().tolist() == [False, False, True]
  assert ends.to_list()[1][-1] == 28 and ends.to_list()[2][-1] == 28  # the tail is unread


def test_head_tail_keeps_the_first_quarter_and_the_last_three_quarters():
  encoder = _encoder(18, long_text="head_tail")  # budget 16: 4 head + 12 tail
  text = " ".join(WORDS[i % 10] for i in range(40))
  pieces = encoder.tokenize(tf.constant([text])).to_list()[0]
  kept = encoder(tf.constant([text, "great film"]), with_truncation=True)
  assert kept["token_ids"].to_list()[0][1:-1] == pieces[:4] + pieces[-12:]
  assert kept["truncated"].numpy().tolist() == [True, False]
  short = encoder.tokenize(tf.constant(["great film"])).to_list()[0]
  assert kept["token_ids"].to_list()[1][1:-1] == short


def _long_data(tmp_path):
  return write_sentiment_tsv(tmp_path / "data", n_train=48, n_dev=16, max_repeats=6)


def test_pooling_one_window_equals_the_unwindowed_model(tmp_path):
  data = _long_data(tmp_path)
  windowed = tiny_config(data, data__long_text="windows", data__max_seq_length=64)
  plain = tiny_config(data, data__max_seq_length=64)
  splits, labels = experiment.load_data(plain)
  task_w, model = experiment.build_model(windowed, labels)
  task_t = tasks.get_task(plain, labels, experiment.build_encoder(plain))
  short = splits["dev"].subset([i for i, n in enumerate(task_t.example_lengths(splits["dev"]))
                                if n <= 64])
  assert len(short) >= 4
  assert (task_w.window_counts(short) == 1).all()
  _, by_windows = experiment.evaluate_split(task_w, model, short, batch_size=8)
  _, by_text = experiment.evaluate_split(task_t, model, short, batch_size=8)
  np.testing.assert_allclose(by_windows, by_text, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_a_long_texts_logits_pool_its_windows(tmp_path, pooling):
  config = tiny_config(_long_data(tmp_path), data__long_text="windows",
                       data__max_seq_length=16, task__window_pooling=pooling)
  splits, labels = experiment.load_data(config)
  task, model = experiment.build_model(config, labels)
  dev = splits["dev"]
  counts = task.window_counts(dev)
  assert counts.max() > 1
  _, pooled = experiment.evaluate_split(task, model, dev, batch_size=8)
  features = task.encoder.windows(tf.constant(dev.texts))
  per_window = model(task.encoder.pad(features), training=False).numpy()
  document = features["document"].numpy()
  for i in range(len(dev)):
    own = per_window[document == i]
    expected = own.mean(0) if pooling == "mean" else own.max(0)
    np.testing.assert_allclose(pooled[i], expected, atol=1e-5)


@pytest.fixture(scope="module")
def windowed_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("windows")
  data = write_sentiment_tsv(root / "data", n_train=48, n_dev=16, max_repeats=6)
  config = tiny_config(data, data__long_text="windows", data__max_seq_length=16,
                       data__window_stride=7, train__steps=6)
  trainer = trainer_lib.Trainer(config, root / "run")
  trainer.train()
  from tf_finetune.evaluation import evaluator
  report = evaluator.evaluate_workdir(root / "run")
  return root / "run", trainer, report


def test_training_sees_windows_and_reports_count_texts(windowed_run):
  run, trainer, report = windowed_run
  windows = trainer.num_train_examples
  assert windows > len(trainer.splits["train"])
  batch = next(iter(pipeline.train_dataset(
      trainer.splits["train"], trainer.train_label_values, trainer.task, batch_size=8, seed=0,
      shuffle_buffer=0, bucketing=False)))
  assert batch["token_ids"].shape[1] <= 16  # every example is one window
  assert report["splits"]["dev"]["num_examples"] == len(trainer.splits["dev"])
  rows = [line for line in (run / "eval" / "predictions.tsv").read_text().splitlines()[1:]]
  assert len(rows) == len(trainer.splits["dev"])  # one line per text, not per window


def test_the_export_pools_windows_as_evaluate_does(windowed_run):
  run, trainer, report = windowed_run
  model = tf.saved_model.load(str(serving.export_saved_model(run)))
  serve = model.signatures["serving_default"]
  dev = trainer.splits["dev"]
  out = serve(text=tf.constant(dev.texts))
  assert_no_texts_give_no_rows(serve)
  best = experiment.load_run(run, "best")  # what the export holds
  _, logits = experiment.evaluate_split(best.task, best.model, dev, batch_size=8)
  np.testing.assert_allclose(out["logits"].numpy(), logits, atol=1e-5)
  assert out["windows_used"].numpy().tolist() == trainer.task.window_counts(dev).tolist()
  card = (run / "export" / "run" / "1" / "README.md").read_text()
  assert "overlapping windows of 16 wordpieces, 7 apart" in card


def test_a_20000_word_text_is_served_in_bounded_windows(tmp_path):
  config = tiny_config(_long_data(tmp_path), data__long_text="windows",
                       data__max_seq_length=32, data__max_windows=4, train__steps=2)
  trainer_lib.Trainer(config, tmp_path / "run").train()
  model = tf.saved_model.load(str(serving.export_saved_model(tmp_path / "run")))
  huge = " ".join(WORDS[i % 10] for i in range(20_000))
  out = model.signatures["serving_default"](text=tf.constant([huge, "great film"]))
  assert out["windows_used"].numpy().tolist() == [4, 1]
  assert out["truncated"].numpy().tolist() == [True, False]
  assert np.isfinite(out["probabilities"].numpy()).all()


def test_windows_keep_static_shapes_and_replica_evaluation(tmp_path):
  config = tiny_config(_long_data(tmp_path), data__long_text="windows", data__max_seq_length=16,
                       data__static_shapes=True, distribution__strategy="mirrored",
                       distribution__num_cpu_devices=2)
  t = trainer_lib.Trainer(config, tmp_path / "run")
  widths = {b - 1 for b in pipeline.bucket_boundaries(16)}
  for batch in t._dataset_fn(tf.distribute.InputContext()).take(4):
    assert batch["token_ids"].shape[0] == 8 and batch["token_ids"].shape[1] in widths
  dev = t.splits["dev"]
  _, on_replicas = experiment.evaluate_split(t.task, t.model, dev, batch_size=8,
                                             static_shapes=True, strategy=t.strategy)
  _, plain = experiment.evaluate_split(t.task, t.model, dev, batch_size=8)
  np.testing.assert_allclose(on_replicas, plain, atol=1e-5)
  t.train()
  assert json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())["step"] > 0


def test_windows_are_refused_for_pairs_and_head_tail_for_tagging(tmp_path):
  with pytest.raises(ConfigError, match="data.long_text='windows': applies to single texts"):
    tiny_config(_long_data(tmp_path), data__long_text="windows", data__text_pair_column="x")
  with pytest.raises(ConfigError, match="data.long_text='head_tail': for task.name='tagging'"):
    ner_config(data__long_text="head_tail")


def test_tagging_windows_read_each_word_where_it_has_the_most_context():
  encoder = _encoder(10, long_text="windows", window_stride=3)  # windows of 8 pieces
  sentences = [[WORDS[(i * 7 + k) % 10] + ("s" * (k % 3)) for k in range(n)]
               for i, n in enumerate([0, 1, 5, 9, 17, 30])]
  out = encoder.encode_words(tf.ragged.constant(sentences, dtype=tf.string, ragged_rank=1))
  token_ids = out["token_ids"].to_list()
  counts = encoder.word_piece_counts(sentences)
  starts, ends, _ = encoder.window_spans(tf.constant([int(c.sum()) for c in counts]))
  window = 0
  for i, (words, c) in enumerate(zip(sentences, counts)):
    spans = list(zip(starts.to_list()[i], ends.to_list()[i]))
    pieces = encoder.tokenize(tf.constant(words)).to_list() if words else []
    rows, positions = out["word_rows"].to_list()[i], out["word_positions"].to_list()[i]
    for j, first in enumerate(np.cumsum(c) - c):
      assert positions[j] >= 0 and rows[j] >= window  # every word gets a prediction
      start, end = spans[rows[j] - window]
      assert start <= first < end and positions[j] == first - start + 1
      assert token_ids[rows[j]][positions[j]] == pieces[j][0]  # the word's first piece
      best = max(min(first - a, b - 1 - first) for a, b in spans if a <= first < b)
      assert min(first - start, end - 1 - first) == best
    window += len(spans)
  assert window == len(token_ids) and (np.array(out["windows_used"]) > 1).any()


@pytest.fixture(scope="module")
def ner_windows_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ner_windows") / "run"
  config = ner_config(data__long_text="windows", data__max_seq_length=10,
                      data__window_stride=4, train__steps=40, train__eval_every=20)
  trainer = trainer_lib.Trainer(config, workdir)
  trainer.train()
  from tf_finetune.evaluation import evaluator
  return workdir, trainer, evaluator.evaluate_workdir(workdir)


def test_tagging_windows_predict_every_word_in_evaluation_and_serving(ner_windows_run):
  workdir, trainer, report = ner_windows_run
  dev = trainer.splits["dev"]
  counts = trainer.encoder.word_piece_counts(dev.tokens)
  truncating = _encoder(10)
  assert tagging.words_without_piece(counts, truncating) > 0  # truncation would lose words
  assert report["splits"]["dev"]["words_without_prediction"] == 0
  assert trainer.num_train_examples > len(trainer.splits["train"])  # training sees windows

  served = tf.saved_model.load(str(serving.export_saved_model(workdir)))
  rows = [r.split("\t") for r in (workdir / "eval" / "predictions.tsv").read_text()
          .splitlines()[1:]]
  out = served.signatures["serving_default"](text=tf.constant([r[5] for r in rows]))
  for i, row in enumerate(rows):
    n = int(out["word_count"][i])
    assert [t.decode() for t in out["word_tag"][i, :n].numpy()] == row[3].split(), row[5]
  assert out["windows_used"].numpy().tolist() == trainer.task.window_counts(dev).tolist()
  assert not out["truncated"].numpy().any()
  card = (workdir / "export" / "run" / "1" / "README.md").read_text()
  assert "each word read from the window where it has the most context" in card


def test_tagging_windows_resume_to_the_same_weights_and_keep_static_shapes(tmp_path):
  kwargs = dict(data__long_text="windows", data__max_seq_length=10, train__steps=6,
                train__eval_every=3, model__dropout=0.1)
  config = ner_config(**kwargs)
  straight = trainer_lib.Trainer(config, tmp_path / "straight")
  straight.train()
  interrupted = trainer_lib.Trainer(config, tmp_path / "resumed")
  interrupted.train(until_step=3)
  resumed = trainer_lib.Trainer(config, tmp_path / "resumed")
  resumed.train()
  for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()):
    np.testing.assert_allclose(a, b, atol=1e-5)

  mirrored = trainer_lib.Trainer(
      ner_config(**kwargs, data__static_shapes=True, distribution__strategy="mirrored",
                 distribution__num_cpu_devices=2), tmp_path / "mirrored")
  widths = {b - 1 for b in pipeline.bucket_boundaries(10)}
  for batch in mirrored._dataset_fn(tf.distribute.InputContext()).take(3):
    assert batch["token_ids"].shape[1] in widths
  dev = mirrored.splits["dev"]
  values, on_replicas = experiment.evaluate_split(
      mirrored.task, mirrored.model, dev, batch_size=8, static_shapes=True,
      strategy=mirrored.strategy)
  _, plain = experiment.evaluate_split(mirrored.task, mirrored.model, dev, batch_size=8,
                                       label_values=values)
  assert [p.tolist() for p in mirrored.task.word_predictions(values, on_replicas)[0]] == \
      [p.tolist() for p in mirrored.task.word_predictions(values, plain)[0]]
  mirrored.close()


def test_tagging_windows_cap_leaves_the_tail_unread_and_says_so():
  encoder = _encoder(10, long_text="windows", window_stride=4, max_windows=2)  # 8 + 4 pieces
  words = [WORDS[k % 10] for k in range(20_000)]
  out = encoder.encode_words(tf.ragged.constant([words, ["great", "film"]], ragged_rank=1))
  assert out["windows_used"].numpy().tolist() == [2, 1]
  assert out["truncated"].numpy().tolist() == [True, False]
  positions = out["word_positions"].to_list()
  pieces = encoder.word_piece_counts([words])[0]
  read = int((np.cumsum(pieces) - pieces < 12).sum())  # words starting in the 12 pieces read
  assert all(p >= 0 for p in positions[0][:read]) and all(p < 0 for p in positions[0][read:])
  assert tagging.words_without_piece([pieces], encoder) == len(words) - read
  assert all(p >= 0 for p in positions[1])


def _repeated_rows(rows, times=4):
  """Rows of tests/test_tasks.py with each text said `times` times: longer than a window."""
  return [(" and ".join([text] * times), label) for text, label in rows]


@pytest.mark.parametrize("task_name", ["multilabel", "regression"])
def test_multilabel_and_regression_pool_windows_per_text_in_reports_and_serving(tmp_path,
                                                                                task_name):
  from tests import test_tasks
  from tf_finetune.evaluation import evaluator
  rows = {"multilabel": test_tasks.multilabel_rows,
          "regression": test_tasks.regression_rows}[task_name]
  data = test_tasks._write(tmp_path / "data", {"train.tsv": _repeated_rows(rows(32, 0)),
                                               "dev.tsv": _repeated_rows(rows(12, 1))})
  config = tiny_config(data, task__name=task_name, data__long_text="windows",
                       data__max_seq_length=16, data__window_stride=7, train__steps=4)
  trainer = trainer_lib.Trainer(config, tmp_path / "run")
  trainer.train()
  dev = trainer.splits["dev"]
  assert trainer.task.window_counts(dev).min() > 1
  report = evaluator.evaluate_workdir(tmp_path / "run")
  assert report["splits"]["dev"]["num_examples"] == len(dev)
  assert len((tmp_path / "run" / "eval" / "predictions.tsv").read_text().splitlines()) == \
      len(dev) + 1
  best = experiment.load_run(tmp_path / "run", "best")
  _, logits = experiment.evaluate_split(best.task, best.model, dev, batch_size=8)
  features = best.task.encoder.windows(tf.constant(dev.texts))
  per_window = best.model(best.task.encoder.pad(features), training=False).numpy()
  document = features["document"].numpy()
  for i in range(len(dev)):
    np.testing.assert_allclose(logits[i], per_window[document == i].mean(0), atol=1e-5)
  served = tf.saved_model.load(str(serving.export_saved_model(tmp_path / "run"))).signatures[
      "serving_default"](text=tf.constant(dev.texts))
  np.testing.assert_allclose(served["logits"].numpy(), logits, atol=1e-5)
  assert served["windows_used"].numpy().tolist() == best.task.window_counts(dev).tolist()


def test_the_run_log_counts_cut_texts_and_windows_per_text(tmp_path, caplog):
  data = _long_data(tmp_path)
  with caplog.at_level("INFO", logger="absl"):
    truncating = trainer_lib.Trainer(tiny_config(data, data__max_seq_length=16),
                                     tmp_path / "truncate")
  lengths = truncating.task.example_lengths(truncating.splits["train"])
  cut = int((lengths > 16).sum())
  assert 0 < cut < len(lengths)
  assert (f"train: {cut} of {len(lengths)} examples ({100 * cut / len(lengths):.1f}%) are "
          "longer than data.max_seq_length=16 and are cut (data.long_text=truncate)"
          in caplog.text)
  truncating.close()
  caplog.clear()
  with caplog.at_level("INFO", logger="absl"):
    windowed = trainer_lib.Trainer(
        tiny_config(data, data__max_seq_length=16, data__long_text="windows",
                    data__window_stride=7, data__max_windows=2), tmp_path / "windows")
  split = windowed.splits["train"]
  uncapped = _encoder(16, long_text="windows", window_stride=7)
  starts, _, _ = uncapped.window_spans(tf.constant(windowed.task.example_lengths(split) - 2))
  needed = starts.row_lengths().numpy()
  counts = windowed.task.window_counts(split)
  np.testing.assert_array_equal(counts, np.minimum(needed, 2))
  assert (f"train: {counts.sum()} windows of 16 wordpieces (data.window_stride=7): per example "
          f"median {int(np.median(counts))}, 95th pct {int(np.percentile(counts, 95))}, max "
          f"{counts.max()}" in caplog.text)
  over = int((needed > 2).sum())
  assert over > 0
  assert (f"train: {over} of {len(split)} examples ({100 * over / len(split):.1f}%) need more "
          "than data.max_windows=2 windows" in caplog.text)
  windowed.close()
