"""Zero-shot classification (task.name=zero_shot): built, not trained; evaluated, exported and
served like classification, plus label texts at request time."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (NEGATIVE, POSITIVE, assert_no_texts_give_no_rows, dev_logits, override,
                            tiny_config)
from tf_finetune import experiment
from tf_finetune import tasks
from tf_finetune.errors import ConfigError
from tf_finetune.export import serving
from tf_finetune.training import trainer as trainer_lib

DESCRIPTIONS = {"0": "a dull, tedious mess", "1": "a wonderful, moving film"}


def _zero_shot_config(data_dir, **keys):
  descriptions = data_dir / "descriptions.json"
  descriptions.write_text(json.dumps(DESCRIPTIONS))
  return tiny_config(data_dir, task__name="zero_shot",
                     task__label_descriptions=str(descriptions), **keys)


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory):
  from tests.conftest import write_sentiment_tsv
  root = tmp_path_factory.mktemp("zero_shot")
  data = write_sentiment_tsv(root / "data", n_train=16, n_dev=24)
  workdir = root / "run"
  trainer_lib.Trainer(_zero_shot_config(data), workdir).train()
  return workdir


def _embed(run, texts):
  return run.task.embed(run.model, tf.constant(texts)).numpy()


def test_logits_are_scaled_cosine_similarity_to_the_descriptions(zero_shot_run):
  run = experiment.load_run(zero_shot_run)
  assert run.step == 0 and sorted(p.name for p in (zero_shot_run / "checkpoints").glob(
      "ckpt-*.index")) == ["ckpt-0.index"]
  dev, _, logits, labels = dev_logits(zero_shot_run)
  texts = _embed(run, dev.texts)
  descriptions = _embed(run, [DESCRIPTIONS[label] for label in labels])
  np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(logits, 20.0 * texts @ descriptions.T, atol=1e-4)


def test_a_second_run_finds_the_model_built(zero_shot_run, caplog):
  data = zero_shot_run.parent / "data"
  with caplog.at_level("INFO", logger="absl"):
    trainer_lib.Trainer(_zero_shot_config(data), zero_shot_run).train()
  assert "already built and evaluated" in caplog.text
  assert sorted(p.name for p in (zero_shot_run / "checkpoints").glob("ckpt-*.index")) == [
      "ckpt-0.index"]


def test_export_serves_evaluate_and_label_texts_given_per_request(zero_shot_run):
  dev, _, logits, labels = dev_logits(zero_shot_run)
  model = tf.saved_model.load(str(serving.export_saved_model(zero_shot_run)))
  assert set(model.signatures) == {"serving_default", "token_ids", "zero_shot"}
  served = model.signatures["serving_default"](text=tf.constant(dev.texts))
  np.testing.assert_allclose(served["logits"].numpy(), logits, atol=1e-5)
  label_texts = tf.constant([DESCRIPTIONS[label] for label in labels])
  asked = model.signatures["zero_shot"](text=tf.constant(dev.texts), label_text=label_texts)
  np.testing.assert_allclose(asked["logits"].numpy(), logits, atol=1e-5)
  np.testing.assert_array_equal(asked["label_id"].numpy(), served["label_id"].numpy())
  other = model.signatures["zero_shot"](
      text=tf.constant([POSITIVE[0], NEGATIVE[0]]),
      label_text=tf.constant([POSITIVE[0], NEGATIVE[0], "superb"]))
  assert [x.decode() for x in other["label"].numpy()] == [POSITIVE[0], NEGATIVE[0]]
  assert other["probabilities"].shape == (2, 3)
  assert_no_texts_give_no_rows(model.signatures["serving_default"])
  assert_no_texts_give_no_rows(model.signatures["zero_shot"], label_text=label_texts)
  with pytest.raises(tf.errors.InvalidArgumentError, match="label_text holds no candidate"):
    model.signatures["zero_shot"](text=tf.constant(["a text"]),
                                  label_text=tf.constant([], tf.string))


def test_descriptions_and_training_switches_are_checked(tmp_path, caplog):
  from tests.conftest import write_sentiment_tsv
  data = write_sentiment_tsv(tmp_path / "data")
  with pytest.raises(ConfigError, match="peft.method='lora': does not apply to "
                                        "task.name='zero_shot', which trains nothing"):
    _zero_shot_config(data, peft__method="lora")
  config = _zero_shot_config(data)
  (data / "descriptions.json").write_text(json.dumps({"0": "dull"}))
  splits, labels = experiment.load_data(config)
  with pytest.raises(ConfigError, match=r"descriptions\.json: no description \(a string\) for "
                                        r"label\(s\) 1"):
    experiment.build_model(config, labels)
  for content, message in [(json.dumps(["dull", "great"]).encode(), r"descriptions\.json: holds "
                            r"a JSON list, not an object of \{label: description\}"),
                           (b'\xff{"0": "dull"}', r"descriptions\.json: byte 0 is not UTF-8")]:
    (data / "descriptions.json").write_bytes(content)
    with pytest.raises(ConfigError, match=message):
      experiment.build_model(config, labels)
  (data / "descriptions.json").write_text(json.dumps({"0": "dull", "1": "great", "2": "meh"}))
  with caplog.at_level("WARNING", logger="absl"):
    experiment.build_model(config, labels)
  assert "descriptions.json: not used, the train data has no label '2' (its labels: '0', '1')" \
      in caplog.text
  config = override(config, {"task.label_descriptions": "no template, no file"})
  with pytest.raises(ConfigError, match="neither a template holding {label} nor a JSON file"):
    experiment.build_model(config, labels)
  for template, message in [
      ("About {label} in {langauge}.", r"names \{langauge\}; a template names only \{label\}"),
      ("About {label} }", r"Single '\}' encountered"),
      ("About {0}.", r"names \{0\}; a template names only \{label\}"),
      ("About {{label}}.", r"holds no \{label\}")]:
    config = override(config, {"task.label_descriptions": template})
    with pytest.raises(ConfigError, match=r"config\.task\.label_descriptions=.*: " + message):
      experiment.build_model(config, labels)
  zero_shot_task = tasks.get_task(override(
      config, {"task.label_descriptions": "{{{label}}} is {label!r}"}), labels, None)
  assert zero_shot_task.descriptions() == ["{0} is '0'", "{1} is '1'"]
