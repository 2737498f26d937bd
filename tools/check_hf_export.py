"""Exports a run with --format=hf and checks transformers (PyTorch) gives our logits.

  pip install -e ".[torch]"
  python tools/check_hf_export.py --workdir=runs/bbc [--checkpoint=best] [--limit=200]

Loads the export with AutoModelForSequenceClassification and AutoTokenizer, runs the first
--limit dev examples of the run through both it and our Keras model on the same token ids,
and prints the largest logit difference and the argmax agreement. Exits 1 above 1e-4.
"""
import numpy as np
from absl import app
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import experiment
from tf_finetune.export import serving

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a path.")
_LIMIT = flags.DEFINE_integer("limit", 200, "Dev examples to compare.")


def main(argv):
  del argv
  import torch
  import transformers
  path = serving.export_hf(_WORKDIR.value, _CHECKPOINT.value)
  run = experiment.load_run(_WORKDIR.value, _CHECKPOINT.value, merge_lora=True)
  config, labels, model = run.config, run.labels, run.model
  splits, _ = experiment.load_data(config, labels)
  texts = splits["dev"].texts[:_LIMIT.value]
  pairs = splits["dev"].text_pairs[:_LIMIT.value] if splits["dev"].text_pairs else None
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
  worst, agree = 0.0, 0
  for start in range(0, len(texts), 16):
    args = (texts[start:start + 16],) + ((pairs[start:start + 16],) if pairs else ())
    batch = tokenizer(*args, padding=True, truncation=True,
                      max_length=config.data.max_seq_length, return_tensors="pt")
    with torch.no_grad():
      theirs = hf_model(**batch).logits.numpy()
    ours = np.asarray(model({"token_ids": batch["input_ids"].numpy().astype(np.int32),
                             "segment_ids": batch["token_type_ids"].numpy().astype(np.int32),
                             "padding_mask": batch["attention_mask"].numpy().astype(np.int32)},
                            training=False))
    worst = max(worst, float(np.abs(ours - theirs).max()))
    agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
  print(f"export: {path}")
  print(f"{len(texts)} dev examples: max |logit difference| {worst:.2e}, "
        f"argmax agreement {agree}/{len(texts)}")
  raise SystemExit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
  app.run(main)
