"""PII masking (data/pii.py): precision and recall per type on the annotated test corpora, the
misses and false alarms, and masking speed on BBC News.

  python tools/bench_pii.py

tests/fixtures/pii_corpus.txt was written beside the patterns; pii_heldout.txt was written
after they were frozen and never used to change them. A span counts as found when the
masker replaced exactly that text with that type.
"""
import time

import tensorflow as tf
from absl import app

from benchlib import REPO
from tf_finetune.data import pii
from tf_finetune.data import sources


def _lines(name):
  path = REPO / "tests" / "fixtures" / name
  return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def main(argv):
  del argv
  for name in ("pii_corpus.txt", "pii_heldout.txt"):
    lines = _lines(name)
    scores = pii.precision_recall(lines)
    print(f"{name}: {len(lines)} lines")
    print("| type | expected | found | precision | recall |")
    print("|---|---|---|---|---|")
    for kind, s in scores.items():
      print(f"| {kind} | {s['expected']} | {s['found']} | {s['precision']:.3f} | "
            f"{s['recall']:.3f} |")
    parsed = [pii.parse_annotated(line) for line in lines]
    found = pii.matches(tf.constant([text for text, _ in parsed]))
    for i, (text, spans) in enumerate(parsed):
      got = sorted((kind, m.decode("utf-8")) for kind in pii.TYPES
                   for m in found[kind][i].numpy())
      if got != sorted(spans):
        print(f"  differs: {text!r}: expected {sorted(spans)}, masked {got}")
  texts = sources.read_bbc_news().texts
  pii.mask_strings(texts[:64])  # trace
  start = time.perf_counter()
  _, counts = pii.mask_strings(texts)
  seconds = time.perf_counter() - start
  characters = sum(len(t) for t in texts)
  print(f"BBC News: {len(texts)} articles ({characters / 1e6:.1f} M characters) masked in "
        f"{seconds:.1f} s ({len(texts) / seconds:.0f} texts/s); replaced: {counts}")


if __name__ == "__main__":
  app.run(main)
