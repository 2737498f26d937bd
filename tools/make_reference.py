"""Writes tests/fixtures/minilm_reference.npz: transformers (PyTorch) outputs of
all-MiniLM-L6-v2 that tests/test_checkpoints.py compares our keras-hub encoder against.

How it was made (run from the repository root):
  pip install torch==2.13.0          # CPU build; transformers==5.23.0 from setup.py
  python tools/make_reference.py

It tokenizes SENTENCES with the checkpoint's own tokenizer.json (HF tokenizers, via
AutoTokenizer.from_pretrained(dir)), runs AutoModel in eval mode in float32 and saves
token_ids, segment_ids, padding_mask and last_hidden_state (and pooler_output) to the
fixture. The test needs neither torch nor transformers.
"""
import pathlib

import numpy as np
import torch
import transformers

from tf_finetune import checkpoints

SENTENCES = [
    "the film is a charming, funny and touching piece of work .",
    "Héllo wörld: naïve café owners in Zürich don't like rainy Mondays!",
    "A brother and sister in the US have been convicted of sending spam.",
    ("Is this a question?", "It is a pair of sentences, truncated to the same length."),
]
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "minilm_reference.npz"


def main():
  checkpoint_dir = checkpoints.resolve_checkpoint_dir(checkpoints.MINILM)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint_dir))
  model = transformers.AutoModel.from_pretrained(str(checkpoint_dir)).eval()
  firsts = [s if isinstance(s, str) else s[0] for s in SENTENCES]
  seconds = [None if isinstance(s, str) else s[1] for s in SENTENCES]
  rows = [tokenizer(a, b) for a, b in zip(firsts, seconds)]
  length = max(len(r["input_ids"]) for r in rows)
  def pad(key):
    return np.array([r[key] + [0] * (length - len(r[key])) for r in rows], np.int32)
  token_ids, segment_ids, padding_mask = pad("input_ids"), pad("token_type_ids"), pad("attention_mask")
  with torch.no_grad():
    out = model(input_ids=torch.tensor(token_ids, dtype=torch.long),
                token_type_ids=torch.tensor(segment_ids, dtype=torch.long),
                attention_mask=torch.tensor(padding_mask, dtype=torch.long))
  np.savez_compressed(
      OUT, token_ids=token_ids, segment_ids=segment_ids, padding_mask=padding_mask,
      last_hidden_state=out.last_hidden_state.numpy().astype(np.float32),
      pooler_output=out.pooler_output.numpy().astype(np.float32),
      first=np.array(firsts), second=np.array([s or "" for s in seconds]),
      versions=np.array([f"torch {torch.__version__}", f"transformers {transformers.__version__}"]))
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {token_ids.shape[0]} inputs of {length} tokens, "
        f"{torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
  main()
