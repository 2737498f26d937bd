"""How often our in-graph tokenizer gives the same ids as the checkpoint's own tokenizer.json.

  python tools/bench_tokenizer_parity.py [--checkpoint=all-MiniLM-L6-v2]

Compares tf_finetune.text_encoder.TextEncoder (keras-hub WordPiece + clean-text, in a
tf.function) with HF tokenizers on SST-2 dev, emotion val, RTE dev (pairs), WNUT-17 dev
sentences (from ../shared/data when present) and the BBC News articles, untruncated. Prints
the agreement per data set and classifies each mismatch by the characters involved.
"""
import collections
import csv
import sys
import unicodedata

from absl import app
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import checkpoints
from tf_finetune import config as config_lib
from tf_finetune import text_encoder
from tf_finetune.data import sources

_CHECKPOINT = flags.DEFINE_string("checkpoint", checkpoints.MINILM, "HF-format dir or known name.")


def _tsv_column(path, column, delimiter="\t"):
  with open(path, encoding="utf-8-sig") as f:
    rows = list(csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE))
  i = rows[0].index(column)
  return [r[i] for r in rows[1:]]


def _conll_sentences(path):
  sentences, words = [], []
  for line in open(path, encoding="utf-8-sig"):
    line = line.strip().lstrip("\ufeff")
    if not line:
      if words:
        sentences.append(" ".join(words))
      words = []
    else:
      words.append(line.split()[0])
  return sentences + ([" ".join(words)] if words else [])


def corpora():
  shared = config_lib.shared_data_dir()
  if shared:
    yield "sst2 dev", _tsv_column(shared / "sst2/dev.tsv", "sentence"), None
    yield "emotion val", _tsv_column(shared / "emotion/val.txt", "text", ";"), None
    yield "rte dev (pairs)", _tsv_column(shared / "rte/dev.tsv", "sentence1"), \
        _tsv_column(shared / "rte/dev.tsv", "sentence2")
    yield "wnut17 dev", _conll_sentences(shared / "wnut17/dev.conll"), None
  else:
    print("../shared/data is absent: BBC News only", file=sys.stderr)
  yield "bbc news (all)", sources.read_bbc_news().texts, None


def mismatch_kind(text):
  cats = collections.Counter(unicodedata.category(c) for c in text if ord(c) > 127)
  if not cats:
    return "ascii only"
  return "non-ascii: " + ",".join(sorted(cats))


def main(argv):
  del argv
  import tensorflow as tf
  import tokenizers
  directory = checkpoints.resolve_checkpoint_dir(_CHECKPOINT.value)
  encoder = text_encoder.TextEncoder(checkpoints.read_tokenizer_spec(directory), 100_000)
  hf = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
  hf.no_truncation()
  hf.no_padding()
  print(f"checkpoint: {directory}")
  print(f"{'data':<18}{'examples':>9}{'same ids':>10}{'agreement':>11}")
  for name, texts, pairs in corpora():
    kinds = collections.Counter()
    same = 0
    for start in range(0, len(texts), 512):
      chunk = texts[start:start + 512]
      pair_chunk = pairs[start:start + 512] if pairs else None
      ours = encoder(tf.constant(chunk), tf.constant(pair_chunk) if pairs else None)
      ours = ours["token_ids"].to_list()
      theirs = hf.encode_batch(list(zip(chunk, pair_chunk)) if pairs else chunk)
      for i, (a, b) in enumerate(zip(ours, theirs)):
        if a == b.ids:
          same += 1
        else:
          kinds[mismatch_kind(chunk[i] + (pair_chunk[i] if pairs else ""))] += 1
    print(f"{name:<18}{len(texts):>9}{same:>10}{same / len(texts):>10.2%}")
    for kind, n in kinds.most_common():
      print(f"{'':<4}mismatch, {kind}: {n}")


if __name__ == "__main__":
  app.run(main)
