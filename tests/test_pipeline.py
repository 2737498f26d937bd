import itertools

import numpy as np
import pytest

from tf_finetune import checkpoints
from tf_finetune import text_encoder
from tf_finetune.data import pipeline
from tf_finetune.data import labels as labels_lib
from tf_finetune.data import sources
from tf_finetune.tasks import classification


@pytest.fixture(scope="module")
def encoder():
  spec = checkpoints.read_tokenizer_spec(checkpoints.resolve_checkpoint_dir(checkpoints.MINILM))
  return text_encoder.TextEncoder(spec, 64)


@pytest.fixture(scope="module")
def task(encoder):
  from tf_finetune import config as config_lib
  return classification.ClassificationTask(
      config_lib.base_config(), labels_lib.LabelVocabulary(["0", "1", "2"]), encoder)


@pytest.fixture(scope="module")
def split():
  rng = np.random.default_rng(0)
  words = "the a film movie great bad plot acting long short very not quite".split()
  texts = [" ".join(rng.choice(words, size=rng.integers(1, 90))) for _ in range(200)]
  return sources.Split("train", texts, [str(i % 3) for i in range(200)],
                       [f"mem:{i}" for i in range(200)])


def _batches(dataset, n):
  return [{k: v.numpy() for k, v in b.items()} for b in itertools.islice(dataset, n)]


def test_buckets_pad_each_batch_only_to_its_longest(split, encoder, task):
  labels = np.arange(200) % 3
  stream = pipeline.train_dataset(split, labels, task, batch_size=8, seed=1,
                                  shuffle_buffer=200, bucketing=True)
  widths = set()
  for batch in _batches(stream, 40):
    lengths = batch["padding_mask"].sum(1)
    assert batch["token_ids"].shape == (8, lengths.max())  # dynamic padding
    assert (batch["token_ids"][batch["padding_mask"] == 0] == encoder.pad_id).all()
    bucket = np.searchsorted(pipeline.bucket_boundaries(64), lengths, side="right")
    assert len(set(bucket)) == 1  # all from one length bucket
    widths.add(batch["token_ids"].shape[1])
  assert max(widths) == 64 and len(widths) > 3  # long texts truncated to max_seq_length


def test_stream_is_deterministic_and_skip_resumes_it(split, encoder, task):
  labels = np.arange(200) % 3
  make = lambda skip: pipeline.train_dataset(split, labels, task, batch_size=8, seed=3,
                                             shuffle_buffer=200, bucketing=True,
                                             skip_batches=skip)
  full = _batches(make(0), 35)  # crosses the epoch boundary (25 batches an epoch)
  resumed = _batches(make(20), 15)
  for a, b in zip(full[20:], resumed):
    np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_eval_keeps_every_example_in_order(split, encoder, task):
  labels = np.arange(200) % 3
  batches = _batches(pipeline.eval_dataset(split, labels, task, batch_size=64), 10)
  assert [len(b["label"]) for b in batches] == [64, 64, 64, 8]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels)


def test_static_shapes_for_tpu(split, encoder, task):
  labels = np.arange(200) % 3
  stream = pipeline.train_dataset(split, labels, task, batch_size=8, seed=1,
                                  shuffle_buffer=200, bucketing=False, static_shapes=True)
  allowed = {b - 1 for b in pipeline.bucket_boundaries(64)}
  for batch in _batches(stream, 30):
    assert batch["token_ids"].shape[0] == 8 and batch["token_ids"].shape[1] in allowed


def test_workers_read_disjoint_shards_that_cover_the_epoch(split, encoder, task):
  """Each of 2 input pipelines (one per worker) reads half the examples: within an epoch
  no example is seen twice and none is missed."""
  import tensorflow as tf
  ids = np.arange(200)  # the "label" of each example is its index
  seen = []
  for worker in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                         num_replicas_in_sync=2)
    stream = pipeline.train_dataset(split, ids, task, batch_size=4, seed=0,
                                    shuffle_buffer=200, bucketing=False, input_context=context)
    seen.append(np.concatenate([b["label"] for b in _batches(stream, 100 // 4)]))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(ids)


def test_static_shape_pipelines_for_tpu(split, encoder, task):
  """Train and eval streams with static_shapes (as under strategy=tpu): a fixed batch
  dimension in the element spec, and every batch padded to a bucket boundary."""
  labels = np.arange(200) % 3
  widths = {b - 1 for b in pipeline.bucket_boundaries(64)}
  train = pipeline.train_dataset(split, labels, task, batch_size=8, seed=1,
                                 shuffle_buffer=200, bucketing=False, static_shapes=True)
  assert train.element_spec["token_ids"].shape.as_list() == [8, None]
  seen = set()
  for batch in _batches(train, 40):
    assert batch["token_ids"].shape[0] == 8 and batch["token_ids"].shape[1] in widths
    assert batch["padding_mask"].sum(1).max() <= batch["token_ids"].shape[1]
    seen.add(batch["token_ids"].shape[1])
  assert len(seen) > 1  # bucketed, not all padded to max_seq_length

  static = pipeline.eval_dataset(split, labels, task, batch_size=64, static_shapes=True)
  assert static.element_spec["token_ids"].shape.as_list() == [64, None]
  dynamic = _batches(pipeline.eval_dataset(split, labels, task, batch_size=64), 10)
  static = _batches(static, 10)
  assert len(static) == len(dynamic) == 4  # 200 = 3 * 64 + 8: the last batch is filled up
  for s, d in zip(static, dynamic):
    rows, length = d["token_ids"].shape
    assert s["token_ids"].shape[0] == 64 and s["token_ids"].shape[1] in widths
    assert s["example_mask"].sum() == rows and (s["example_mask"][:rows] == 1).all()
    np.testing.assert_array_equal(s["token_ids"][:rows, :length], d["token_ids"])
    assert (s["token_ids"][:, length:] == encoder.pad_id).all()
    assert (s["padding_mask"][:, length:] == 0).all() and (s["padding_mask"][rows:] == 0).all()
