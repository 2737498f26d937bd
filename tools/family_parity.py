"""How close tf_finetune reads each encoder family to transformers, on the references
tools/make_tiny_checkpoints.py wrote (no torch needed):

  python tools/family_parity.py [--checkpoints=tests/fixtures/tiny_checkpoints]

Per family: the in-graph tokenizer's ids (texts, pairs, words split for tagging) against
tokenizer.json's, and the largest absolute difference of the last hidden state from raw
text against transformers'. tests/test_families.py asserts the same within 1e-4.
"""
import json
import pathlib

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from tf_finetune import checkpoints
from tf_finetune import families
from tf_finetune import text_encoder

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoints", "tests/fixtures/tiny_checkpoints",
                    "Directory of <model_type>/ checkpoints with reference.json/.npz.")


def main(argv):
  del argv
  print("| model_type | keras-hub backbone | tokenizer | ids equal | first pieces equal | "
        "max abs diff, last hidden state |")
  print("|---|---|---|---|---|---|")
  for directory in sorted(pathlib.Path(FLAGS.checkpoints).iterdir()):
    reference = json.loads((directory / "reference.json").read_text(encoding="utf-8"))
    hidden = np.load(directory / "reference.npz")
    spec = checkpoints.read_tokenizer_spec(directory)
    encoder = text_encoder.TextEncoder(spec, 512)
    backbone = checkpoints.load_backbone(directory)
    same_ids, worst = 0, 0.0
    for i, case in enumerate(reference["cases"]):
      pair = tf.constant([case["text_pair"]]) if "text_pair" in case else None
      features = encoder.pad(encoder(tf.constant([case["text"]]), pair))
      ids = features["token_ids"][0].numpy().tolist()
      same_ids += ids == case["input_ids"] and (
          "token_type_ids" not in case
          or features["segment_ids"][0].numpy().tolist() == case["token_type_ids"])
      if ids == case["input_ids"]:
        out = families.encode(backbone, features)["sequence_output"].numpy()[0]
        worst = max(worst, float(np.abs(out - hidden[f"case_{i}"]).max()))
    same_words = 0
    for case in reference["word_cases"]:
      features = encoder.encode_words(tf.ragged.constant([case["words"]]))
      same_words += (features["token_ids"][0].numpy().tolist() == case["input_ids"] and
                     features["word_positions"][0].numpy().tolist() ==
                     case["first_piece_positions"])
    print(f"| {directory.name} | {type(backbone).__name__} | {spec.describe()} | "
          f"{same_ids}/{len(reference['cases'])} | {same_words}/{len(reference['word_cases'])}"
          f" | {worst:.1e} |")


if __name__ == "__main__":
  app.run(main)
