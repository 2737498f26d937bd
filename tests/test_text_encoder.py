import csv

import numpy as np
import pytest
import tensorflow as tf
import tokenizers

from tests.conftest import SHARED, requires_shared
from tf_finetune import checkpoints
from tf_finetune import text_encoder

TRICKY = ["Héllo wörld café naïve", "Zero\u200bwidth and\u00a0non-breaking space",
          "中文字符 mixed with English", "emoji 😀 and ❤️ here", "tab\there  two  spaces",
          "control\x07char", "ÅNGSTRÖM façade coöperate", "don't stop-believing...!!",
          "a" * 150, "", "   ", "U.S.A. $7,500 £15.8m 3.14%"]


@pytest.fixture(scope="module")
def minilm():
  directory = checkpoints.resolve_checkpoint_dir(checkpoints.MINILM)
  hf = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
  hf.no_truncation()
  hf.no_padding()
  return checkpoints.read_tokenizer_spec(directory), hf


def _ours(spec, texts, pairs=None, max_len=512):
  encoder = text_encoder.TextEncoder(spec, max_len)
  out = encoder(tf.constant(texts), None if pairs is None else tf.constant(pairs))
  return out["token_ids"].to_list(), out["segment_ids"].to_list()


def test_spec_follows_tokenizer_json(minilm):
  spec, _ = minilm
  assert spec.lowercase and spec.strip_accents and len(spec.vocabulary) == 30522


def test_same_ids_as_hf_tokenizers_on_tricky_text(minilm):
  spec, hf = minilm
  ours, _ = _ours(spec, TRICKY)
  theirs = [e.ids for e in hf.encode_batch(TRICKY)]
  for text, a, b in zip(TRICKY, ours, theirs):
    assert a == b, text


def test_pairs_match_hf_including_truncation(minilm):
  spec, hf = minilm
  firsts = ["the first sentence is rather long and goes on and on for a while", "short"]
  seconds = ["a second one", "the second sentence here is the long one of this pair"]
  ids, segments = _ours(spec, firsts, seconds, max_len=16)
  hf.enable_truncation(16, strategy="longest_first")
  try:
    theirs = hf.encode_batch(list(zip(firsts, seconds)))
  finally:
    hf.no_truncation()
  assert ids == [e.ids for e in theirs]
  assert segments == [e.type_ids for e in theirs]


@requires_shared("sst2", "dev.tsv")
def test_sst2_dev_parity_at_least_99_5_percent(minilm):
  spec, hf = minilm
  with open(SHARED / "sst2" / "dev.tsv", encoding="utf-8") as f:
    texts = [row[0] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
  ours, _ = _ours(spec, texts)
  theirs = [e.ids for e in hf.encode_batch(texts)]
  agreement = np.mean([a == b for a, b in zip(ours, theirs)])
  assert len(texts) == 872 and agreement >= 0.995


def test_encoding_is_traced_once_for_every_pipeline_and_equals_the_untraced_one(minilm):
  spec, _ = minilm
  encoder = text_encoder.TextEncoder(spec, 8)
  texts, pairs = TRICKY[:8], TRICKY[4:]
  def through_pipeline(with_pairs):
    rows = tf.data.Dataset.from_tensor_slices((texts, pairs)).batch(3)
    encoded = rows.map(lambda a, b: encoder(a, b if with_pairs else None, with_truncation=True))
    return [{k: v.to_list() if hasattr(v, "to_list") else v.numpy().tolist()
             for k, v in batch.items()} for batch in encoded]
  for with_pairs in (False, True, False, True):
    got = through_pipeline(with_pairs)
    for i, batch in enumerate(got):
      reference = encoder._encode(tf.constant(texts[3 * i:3 * i + 3]), tf.constant(
          pairs[3 * i:3 * i + 3]) if with_pairs else None, with_truncation=True)
      assert batch["token_ids"] == reference["token_ids"].to_list()
      assert batch["segment_ids"] == reference["segment_ids"].to_list()
      assert batch["truncated"] == reference["truncated"].numpy().tolist()
  assert any(any(b["truncated"]) for b in got)  # max_seq_length 8 cuts some
  assert sorted(encoder._encode_functions) == ["texts1_truncation1", "texts2_truncation1"]
  for traced in encoder._encode_functions.values():
    assert traced.experimental_get_tracing_count() == 1


def test_padding_gives_mask_and_pad_ids(minilm):
  spec, _ = minilm
  encoder = text_encoder.TextEncoder(spec, 16)
  padded = encoder.pad(encoder(tf.constant(["hello", "hello world again"])))
  assert padded["padding_mask"].numpy().tolist()[0] == [1, 1, 1, 0, 0]
  assert padded["token_ids"].numpy()[0, 3:].tolist() == [0, 0]
