"""PII masking (data/pii.py, data.mask_pii): the patterns and checksums, and the same masking
in training data, reports and the exported serving graph."""
import logging
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import NEGATIVE, POSITIVE, REPO, dev_logits, tiny_config
from tests.test_tagging import NER_DATA, ner_config
from tf_finetune import experiment
from tf_finetune import text_encoder
from tf_finetune.data import pii
from tf_finetune.evaluation import evaluator
from tf_finetune.export import serving
from tf_finetune.training import trainer as trainer_lib

CORPUS = REPO / "tests" / "fixtures" / "pii_corpus.txt"


def _lines(path):
  return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def _masked(texts):
  return [s.decode("utf-8") for s in pii.mask(tf.constant(texts))[0].numpy()]


def test_precision_and_recall_per_type_on_the_corpus():
  scores = pii.precision_recall(_lines(CORPUS))
  for name, score in scores.items():
    assert score["expected"] >= 9, name  # every type has positives
    assert score["precision"] >= 0.95 and score["recall"] >= 0.95, (name, score)


def test_masked_corpus_is_the_text_with_each_span_replaced_and_nothing_else():
  lines = _lines(CORPUS)
  texts = [pii.parse_annotated(line)[0] for line in lines]
  expected = []
  for line in lines:
    for name in pii.TYPES:  # {TYPE:span} -> [TYPE]
      while "{" + name + ":" in line:
        start = line.index("{" + name + ":")
        line = line[:start] + f"[{name}]" + line[line.index("}", start) + 1:]
    expected.append(line)
  assert _masked(texts) == expected


def test_checksums_decide_cards_and_ibans():
  valid_card, valid_iban = "4526 0181 5908 3012", "DE89 3704 0044 0532 0130 00"
  out = _masked([f"pay {valid_card}", "pay 4526 0181 5908 3013",  # last digit off: no Luhn
                 "id 9999 9999 9999 9995",  # Luhn-valid, but no card issuer starts with 9
                 f"to {valid_iban}", "to DE89 3704 0044 0532 0130 01", "to de89370400440532013000"])
  assert out == ["pay [CARD]", "pay 4526 0181 5908 3013", "id 9999 9999 9999 9995",
                 "to [IBAN]", "to DE89 3704 0044 0532 0130 01", "to de89370400440532013000"]


def test_counts_per_type_and_empty_and_unicode_texts():
  masked, counts = pii.mask(tf.constant(["", "café ☕ a@b.io a@b.io +44 20 7946 0958", "none"]))
  assert [s.decode() for s in masked.numpy()] == ["", "café ☕ [EMAIL] [EMAIL] [PHONE]", "none"]
  assert dict(zip(pii.TYPES, counts.numpy()[1].tolist())) == {
      "URL": 0, "EMAIL": 2, "IBAN": 0, "IP": 0, "CARD": 0, "PHONE": 1}
  assert counts.numpy()[[0, 2]].sum() == 0


def _write_pii_data(directory):
  """The fixed phrases with an e-mail address or a phone number in most examples."""
  directory.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name, n in (("train.tsv", 48), ("dev.tsv", 16)):
    rows = ["sentence\tlabel"]
    for i in range(n):
      extra = [f"mail me at user{i}@example.com", f"call +1 415 555 {1000 + i}", "thanks"][i % 3]
      rows.append(f"{rng.choice(POSITIVE if i % 2 else NEGATIVE)} , {extra}\t{i % 2}")
    (directory / name).write_text("\n".join(rows) + "\n")
  return directory


@pytest.fixture(scope="module")
def pii_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("pii")
  workdir = root / "run"
  config = tiny_config(_write_pii_data(root / "data"), data__mask_pii=True)
  trainer_lib.Trainer(config, workdir).train()
  return workdir


def test_training_data_reports_and_served_text_are_masked(pii_run, caplog):
  with caplog.at_level(logging.INFO, logger="absl"):
    evaluator.evaluate_workdir(pii_run)
  assert "data.mask_pii: dev: replaced 6 EMAIL, 5 PHONE" in caplog.text
  predictions = (pii_run / "eval" / "predictions.tsv").read_text()
  assert "[EMAIL]" in predictions and "[PHONE]" in predictions
  assert "@example.com" not in predictions and "415 555" not in predictions
  dev, _, logits, _ = dev_logits(pii_run)
  assert all("@" not in text for text in dev.texts)
  exported = serving.export_saved_model(pii_run)
  assert "[EMAIL], [PHONE], [URL], [IP], [CARD], [IBAN]" in (exported / "README.md").read_text()
  serve = tf.saved_model.load(str(exported)).signatures["serving_default"]
  raw = ["a wonderful, moving film , mail me at jane.roe@example.org",
         "a dull, tedious mess , call +44 20 7946 0958"]
  masked = ["a wonderful, moving film , mail me at [EMAIL]", "a dull, tedious mess , call [PHONE]"]
  np.testing.assert_allclose(serve(text=tf.constant(raw))["logits"].numpy(),
                             serve(text=tf.constant(masked))["logits"].numpy(), atol=1e-6)
  served = serve(text=tf.constant(dev.texts))["logits"].numpy()
  np.testing.assert_allclose(served, logits, atol=1e-5)  # evaluate's logits, masked data


def test_an_unmasked_run_reads_the_addresses(tmp_path):
  """The control: without data.mask_pii, the same raw and placeholder texts differ."""
  data = _write_pii_data(tmp_path / "data")
  trainer_lib.Trainer(tiny_config(data, train__steps=3), tmp_path / "run").train()
  serve = tf.saved_model.load(str(serving.export_saved_model(tmp_path / "run"))).signatures[
      "serving_default"]
  raw = serve(text=tf.constant(["a dull film , mail me at jane.roe@example.org"]))["logits"]
  placeholder = serve(text=tf.constant(["a dull film , mail me at [EMAIL]"]))["logits"]
  assert not np.allclose(raw.numpy(), placeholder.numpy(), atol=1e-6)


def test_ner_words_of_one_address_become_one_word_in_training_and_serving(tmp_path):
  """A CoNLL file's tokens and served text split at punctuation both become one "[EMAIL]"
  word per address; served offsets stay the request's."""
  data = tmp_path / "data"
  shutil.copytree(NER_DATA, data)
  with open(data / "ner_train.conll", "a") as f:
    f.write("\nwrite\tO\nto\tO\nann@example.com\tB-person\n\ncall\tO\n+44\tO\n20\tO\n"
            "7946\tO\n0958\tO\nnow\tO\n")
  config = ner_config(data, data__mask_pii=True)
  splits, _ = experiment.load_data(config)
  tokens, tags = splits["train"].tokens, splits["train"].tags
  assert ["write", "to", "[EMAIL]"] in tokens and ["call", "[PHONE]", "now"] in tokens
  assert tags[tokens.index(["write", "to", "[EMAIL]"])] == ["O", "O", "B-person"]
  workdir = tmp_path / "run"
  trainer_lib.Trainer(config, workdir).train()
  serve = tf.saved_model.load(str(serving.export_saved_model(workdir))).signatures[
      "serving_default"]
  text = "Björk wrote to ann@example.com from Reykjavik"
  out = serve(text=tf.constant([text]))
  starts, ends = out["word_start"].numpy()[0], out["word_end"].numpy()[0]
  assert [text[a:b] for a, b in zip(starts, ends)] == text.split()  # 6 words, not 10
  assert out["word_count"].numpy().tolist() == [6]
  words = [["Björk", "wrote", "to", "ann@example.com", "from", "Reykjavik"]]
  masked, _, _ = pii.mask_sentences(words, [["O"] * 6])
  assert masked == [["Björk", "wrote", "to", "[EMAIL]", "from", "Reykjavik"]]


def test_merge_words_keeps_offsets_and_the_first_word_of_each_run():
  texts = tf.constant(["call +44 20 7946 0958 now, ok", "x a@b.io", "none", ""])
  words, starts, ends = text_encoder.split_words(texts)
  merged, new_starts, new_ends, keep = pii.merge_words(texts, words, starts, ends)
  assert merged.to_list() == [[b"call", b"[PHONE]", b"now", b",", b"ok"], [b"x", b"[EMAIL]"],
                              [b"none"], []]
  assert (new_starts.to_list()[0][1], new_ends.to_list()[0][1]) == (5, 21)
  assert keep.to_list()[1] == [True, True, False, False, False, False]
