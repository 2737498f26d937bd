"""Files written whole or not at all: a reader (another worker, TF Serving, a resumed run)
never sees half of one."""
import os
import pathlib


def write_text(path, text):
  """Writes `text` to a temporary file beside `path`, then renames it into place."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(path)
