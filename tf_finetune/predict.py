"""Predict with an exported SavedModel: classification, multi-label or regression.

  python -m tf_finetune.predict --model=runs/bbc/export/bbc/1 "first text" "second text"
  python -m tf_finetune.predict --model=EXPORT_DIR --input=texts.txt --output_format=jsonl
  cat texts.txt | python -m tf_finetune.predict --model=EXPORT_DIR

One text per argument or per input line (for sentence-pair models: text<TAB>pair). Prints,
as TSV (default) or JSON lines, the text and: label and probability (classification), the
predicted labels (multi-label, at the thresholds tuned on dev), the score (regression), or
the entities (tagging): in TSV `type[start:end]=surface (score)` joined by "; ", in JSON
a list of {type, start, end, text, score} with character offsets into the text.
"""
import json
import sys

from absl import app
from absl import flags

_MODEL = flags.DEFINE_string("model", None, "Exported SavedModel directory.", required=True)
_INPUT = flags.DEFINE_string("input", None, "File with one text per line ('-': stdin).")
_FORMAT = flags.DEFINE_enum("output_format", "tsv", ["tsv", "jsonl"], "Output format.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Texts per call.")


def read_texts(argv):
  if len(argv) > 1:
    return argv[1:]
  if _INPUT.value and _INPUT.value != "-":
    with open(_INPUT.value, encoding="utf-8") as f:
      return [line.rstrip("\n") for line in f if line.strip()]
  return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def main(argv):
  import tensorflow as tf
  import tensorflow_text  # noqa: F401  (registers the tokenizer ops the SavedModel uses)
  try:
    model = tf.saved_model.load(_MODEL.value)
  except (OSError, ValueError) as e:
    sys.exit(f"error: {_MODEL.value}: cannot load a SavedModel ({str(e).splitlines()[0]})")
  serve = model.signatures["serving_default"]
  has_pairs = "text_pair" in serve.structured_input_signature[1]
  texts = read_texts(argv)
  for start in range(0, len(texts), _BATCH.value):
    batch = texts[start:start + _BATCH.value]
    if has_pairs:
      pairs = [t.split("\t", 1) + [""] * (1 - t.count("\t")) for t in batch]
      out = serve(text=tf.constant([p[0] for p in pairs]), text_pair=tf.constant([p[1] for p in pairs]))
    else:
      out = serve(text=tf.constant(batch))
    for text, fields in zip(batch, _fields(out)):
      if _FORMAT.value == "jsonl":
        print(json.dumps({"text": text, **fields}, ensure_ascii=False))
      else:
        print("\t".join([text] + [str(v) for v in fields.values()]))


def _entities(out):
  count = out["entity_count"].numpy()
  columns = {k: out[f"entity_{k}"].numpy() for k in ("type", "start", "end", "text", "score")}
  for i, n in enumerate(count):
    yield [{"type": columns["type"][i, j].decode("utf-8"), "start": int(columns["start"][i, j]),
            "end": int(columns["end"][i, j]), "text": columns["text"][i, j].decode("utf-8"),
            "score": round(float(columns["score"][i, j]), 6)} for j in range(n)]


def _fields(out):
  """Per example, the task's outputs worth printing, by the signature's output names."""
  if "entity_type" in out:
    if _FORMAT.value == "jsonl":
      return [{"entities": e} for e in _entities(out)]
    return [{"entities": "; ".join(f"{x['type']}[{x['start']}:{x['end']}]={x['text']} "
                                   f"({x['score']:.4f})" for x in e)} for e in _entities(out)]
  if "label" in out:
    labels = [x.decode("utf-8") for x in out["label"].numpy()]
    probabilities = out["probabilities"].numpy().max(axis=-1)
    return [{"label": l, "probability": round(float(p), 6)} for l, p in zip(labels, probabilities)]
  if "labels" in out:
    return [{"labels": x.decode("utf-8")} for x in out["labels"].numpy()]
  return [{"score": round(float(x), 6)} for x in out["score"].numpy()]


if __name__ == "__main__":
  app.run(main)
