"""Real multi-label and regression data built from WNUT-17's entity annotations.

  python tools/make_wnut17_derived.py [--wnut17_dir=../shared/data/wnut17] \
      [--out_dir=runs/wnut17_derived]

No multi-label or regression text data set installs offline, so this derives two from the
human annotations of WNUT-17 (3,394 train and 1,009 dev tweets), one TSV row per tweet
(its words joined by spaces):
  multilabel/{train,dev}.tsv  label: the entity types the tweet mentions, comma-joined
                              (person, location, corporation, product, creative-work,
                              group; empty for a tweet with none)
  regression/{train,dev}.tsv  label: how many entity mentions the tweet has
Entities are read from the BIO tags the seqeval way (strict IOB2). Prints the label
statistics of each file. Used by configs/wnut17_types.py and configs/wnut17_count.py.
"""
import collections
import pathlib

from absl import app
from absl import flags

from tf_finetune import config as config_lib
from tf_finetune.data import sources

_SHARED = config_lib.shared_data_dir()
_WNUT17_DIR = flags.DEFINE_string("wnut17_dir", str(_SHARED / "wnut17") if _SHARED else None,
                                  "Folder with train.conll and dev.conll.")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/wnut17_derived", "Where to write the TSVs.")


def _tsv_text(words):
  # TSV without quoting: a tab inside a word would shift columns (WNUT-17 has none).
  return " ".join(w.replace("\t", " ") for w in words)


def main(argv):
  del argv
  out = pathlib.Path(_OUT_DIR.value)
  for task in ("multilabel", "regression"):
    (out / task).mkdir(parents=True, exist_ok=True)
  for name in ("train", "dev"):
    split = sources.read_conll(pathlib.Path(_WNUT17_DIR.value) / f"{name}.conll", name)
    types_rows, count_rows = ["sentence\tlabel"], ["sentence\tlabel"]
    type_counts, mention_counts = collections.Counter(), collections.Counter()
    for words, tags in zip(split.tokens, split.tags):
      entities = sources.bio_entities(tags)
      types = sorted({kind for kind, _, _ in entities})
      types_rows.append(f"{_tsv_text(words)}\t{','.join(types)}")
      count_rows.append(f"{_tsv_text(words)}\t{len(entities)}")
      type_counts.update(types or ["(none)"])
      mention_counts[len(entities)] += 1
    (out / "multilabel" / f"{name}.tsv").write_text("\n".join(types_rows) + "\n")
    (out / "regression" / f"{name}.tsv").write_text("\n".join(count_rows) + "\n")
    print(f"{name}: {len(split)} tweets; types: "
          + ", ".join(f"{k} {v}" for k, v in type_counts.most_common())
          + "; mentions per tweet: " + ", ".join(f"{k}: {v}" for k, v in sorted(mention_counts.items())))
  print(f"wrote {out / 'multilabel'} and {out / 'regression'}")


if __name__ == "__main__":
  app.run(main)
