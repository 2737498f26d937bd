"""Classify texts with an exported SavedModel.

  python -m tf_finetune.predict --model=runs/bbc/export/bbc/1 "first text" "second text"
  python -m tf_finetune.predict --model=EXPORT_DIR --input=texts.txt --output_format=jsonl
  cat texts.txt | python -m tf_finetune.predict --model=EXPORT_DIR

One text per argument or per input line (for sentence-pair models: text<TAB>pair). Prints
text, label and probability as TSV (default) or JSON lines.
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
    labels = [x.decode("utf-8") for x in out["label"].numpy()]
    probs = out["probabilities"].numpy().max(axis=-1)
    for text, label, prob in zip(batch, labels, probs):
      if _FORMAT.value == "jsonl":
        print(json.dumps({"text": text, "label": label, "probability": round(float(prob), 6)},
                         ensure_ascii=False))
      else:
        print(f"{text}\t{label}\t{prob:.6f}")


if __name__ == "__main__":
  app.run(main)
