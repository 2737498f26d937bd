"""Parameter-efficient fine-tuning: what trains, LoRA merged for export, trained weights alone."""
import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from tf_finetune import experiment
from tf_finetune.errors import ConfigError
from tf_finetune.errors import WorkdirError
from tf_finetune.evaluation import evaluator
from tf_finetune.export import serving
from tf_finetune import peft
from tf_finetune.training import trainer as trainer_lib


def _trainable_paths(sentiment_dir, **peft_keys):
  # MiniLM's vocabulary (random weights): the shares of trainable weights below assume an
  # embedding of realistic size.
  config = tiny_config(sentiment_dir, model__checkpoint="all-MiniLM-L6-v2",
                       **{f"peft__{k}": v for k, v in peft_keys.items()})
  _, labels = experiment.load_data(config)
  _, model = experiment.build_model(config, labels)
  return [v.path for v in model.trainable_weights], peft.parameter_counts(model)


def test_each_method_trains_what_it_says(sentiment_dir):
  everything, (n_all, total) = _trainable_paths(sentiment_dir)
  assert n_all == total
  frozen, _ = _trainable_paths(sentiment_dir, method="freeze", freeze_layers=1)
  assert not any("embedding" in p or "transformer_layer_0/" in p for p in frozen)
  assert any("transformer_layer_1/" in p for p in frozen) and "logits/kernel" in frozen
  bitfit, (n_bitfit, _) = _trainable_paths(sentiment_dir, method="bitfit")
  assert all(p.endswith("/bias") for p in bitfit if not p.startswith("logits/"))
  assert "logits/kernel" in bitfit and n_bitfit < 0.01 * total
  lora, (n_lora, lora_total) = _trainable_paths(sentiment_dir, method="lora", lora_rank=4)
  backbone = [p for p in lora if not p.startswith("logits/")]
  assert backbone and all(p.split("/")[-2] in ("query", "value") and "lora_kernel" in p
                          for p in backbone)
  # 2 layers x (query, value) x factors A [32, 2 heads, 4] and B [4, 16 per head], plus the
  # head's 32 x 2 + 2 (Keras factors EinsumDense kernels [hidden, heads, head_dim] this way).
  assert n_lora == 2 * 2 * (32 * 2 * 4 + 4 * 16) + 66 and lora_total == total + 2 * 2 * 320
  with pytest.raises(ConfigError, match="peft.lora_targets"):
    _trainable_paths(sentiment_dir, method="lora", lora_targets="nonexistent")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  from tests.conftest import write_sentiment_tsv
  root = tmp_path_factory.mktemp("lora")
  data = write_sentiment_tsv(root / "data")
  workdir = root / "run"
  trainer = trainer_lib.Trainer(tiny_config(data, train__steps=6, peft__method="lora",
                                            model__checkpoint="all-MiniLM-L6-v2",
                                            peft__lora_rank=4), workdir)
  before = {v.path: v.numpy().copy() for v in trainer.model.weights}
  trainer.train()
  return workdir, before, {v.path: v.numpy() for v in trainer.model.weights}


def test_lora_trains_only_the_factors_and_the_head(lora_run):
  _, before, after = lora_run
  moved = {p for p in before if not np.array_equal(before[p], after[p])}
  assert moved and all("lora_kernel_b" in p or p.startswith("logits/") or "seed_generator" in p
                       or "lora_kernel_a" in p for p in moved), sorted(moved)
  assert any("lora_kernel_b" in p for p in moved)  # B starts at zero: it must have moved


def test_lora_exports_merged_with_the_same_logits(lora_run):
  workdir, _, _ = lora_run
  export = serving.export_saved_model(workdir)
  loaded = tf.saved_model.load(str(export))
  stored = tf.train.list_variables(str(export / "variables" / "variables"))
  assert any("_query_dense/_kernel" in name for name, _ in stored)
  assert not [name for name, _ in stored if "lora" in name]
  model = experiment.load_run(workdir).model
  # Same number of weights as the plain architecture: no LoRA factor went along.
  assert sum(int(np.prod(shape)) for name, shape in stored if shape) == \
      peft.parameter_counts(model)[1] - \
      sum(int(np.prod(v.shape)) for v in model.weights if peft.is_lora_variable(v))
  features = {"token_ids": tf.constant([[101, 1037, 6919, 2143, 102], [101, 2204, 102, 0, 0]]),
              "segment_ids": tf.zeros([2, 5], tf.int32),
              "padding_mask": tf.constant([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
  unmerged = model(features, training=False).numpy()
  served = loaded.signatures["token_ids"](**features)["logits"].numpy()
  np.testing.assert_allclose(served, unmerged, atol=1e-5)

  report = evaluator.evaluate_workdir(workdir)
  assert report["parameters"] == {"peft": "lora", "trainable": 1346, "total": 1012706}
  assert json.loads((workdir / "eval" / "report.json").read_text())["parameters"]["trainable"] == 1346


def test_trained_weights_alone_save_small_and_load_back(lora_run):
  workdir, _, _ = lora_run
  export = serving.export_peft(workdir)
  path = export / "trainable_weights.npz"
  run = experiment.load_run(workdir)
  config, labels, trained = run.config, run.labels, run.model
  assert path.stat().st_size < 0.05 * sum(v.numpy().nbytes for v in trained.weights)
  keras.utils.set_random_seed(config.train.seed)  # the run's base weights (random init here)
  _, fresh = experiment.build_model(config, labels)
  peft.load_trainable(fresh, path)
  features = {"token_ids": tf.constant([[101, 1037, 6919, 102]]),
              "segment_ids": tf.zeros([1, 4], tf.int32), "padding_mask": tf.ones([1, 4], tf.int32)}
  np.testing.assert_allclose(fresh(features, training=False), trained(features, training=False),
                             atol=1e-6)


@pytest.mark.parametrize("damage", ["a byte changed", "cut short", "another shape"])
def test_a_damaged_trained_weights_file_is_refused_and_loads_nothing(lora_run, tmp_path, damage):
  """peft.load_trainable ended in zipfile's or Keras' traceback on a damaged .npz, after
  assigning the weights read before the damage. Now the file is read and checked whole
  (the zip's CRC-32 of each array, each array's shape) before any weight is assigned."""
  import zipfile
  workdir, _, _ = lora_run
  path = tmp_path / "trainable_weights.npz"
  shutil.copy(serving.export_peft(workdir) / "trainable_weights.npz", path)
  content = path.read_bytes()
  if damage == "a byte changed":  # inside the first array's data: the zip's CRC-32 fails
    with zipfile.ZipFile(path) as archive:
      first = archive.infolist()[0]
    at = first.header_offset + 30 + len(first.filename) + first.file_size - 1
    path.write_bytes(content[:at] + bytes([content[at] ^ 0x01]) + content[at + 1:])
  elif damage == "cut short":
    path.write_bytes(content[: len(content) // 2])
  else:
    stored = dict(np.load(path))
    name = sorted(stored)[-1]
    stored[name] = np.zeros(stored[name].shape + (2,), stored[name].dtype)
    np.savez(path, **stored)
  run = experiment.load_run(workdir)
  _, fresh = experiment.build_model(run.config, run.labels)
  before = [v.numpy().copy() for v in fresh.trainable_weights]
  with pytest.raises(WorkdirError) as e:
    peft.load_trainable(fresh, path)
  assert str(e.value).startswith(f"{path}: "), e.value
  assert "\n" not in str(e.value)
  if damage == "another shape":
    assert f"{name} has shape " in str(e.value), e.value
  else:
    assert "cannot be read" in str(e.value) and "export the run again" in str(e.value), e.value
  assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, fresh.trainable_weights))


def test_adapters_start_as_identity_train_alone_and_survive_checkpoint_and_export(
    sentiment_dir, tmp_path):
  features = {"token_ids": tf.constant([[2, 43, 166, 16, 3]]),  # [CLS] ... [SEP], tiny vocabulary
              "segment_ids": tf.zeros([1, 5], tf.int32), "padding_mask": tf.ones([1, 5], tf.int32)}
  plain_config = tiny_config(sentiment_dir)
  config = tiny_config(sentiment_dir, peft__method="adapter", peft__adapter_size=4)
  _, labels = experiment.load_data(config)
  keras.utils.set_random_seed(3)
  _, plain = experiment.build_model(plain_config, labels)
  keras.utils.set_random_seed(3)
  _, adapted = experiment.build_model(config, labels)
  np.testing.assert_allclose(adapted(features), plain(features), atol=1e-6)
  paths = [v.path for v in adapted.trainable_weights]
  assert sum("adapter" in p for p in paths) == 2 * 2 * 4  # 2 layers x 2 adapters x 4 weights
  assert all("adapter" in p or "layer_norm" in p or p.startswith("logits/") for p in paths)

  workdir = tmp_path / "run"
  trainer = trainer_lib.Trainer(tiny_config(sentiment_dir, train__steps=6, peft__method="adapter",
                                            peft__adapter_size=4), workdir)
  frozen = {v.path: v.numpy().copy() for v in trainer.model.weights if not v.trainable}
  trainer.train()
  trained = trainer.model(features, training=False).numpy()
  assert all(np.array_equal(v.numpy(), frozen[v.path]) for v in trainer.model.weights
             if v.path in frozen)
  assert any("adapter/up" in v.path and np.abs(v.numpy()).max() > 0
             for v in trainer.model.weights)
  restored = experiment.load_run(workdir, "latest").model
  np.testing.assert_allclose(restored(features, training=False), trained, atol=1e-6)
  export = serving.export_saved_model(workdir, checkpoint="latest")
  served = tf.saved_model.load(str(export)).signatures["token_ids"](**features)["logits"]
  np.testing.assert_allclose(served, trained, atol=1e-5)
  with pytest.raises(ConfigError, match="bottleneck adapters"):
    serving.export_hf(workdir)
