"""Files written whole or not at all: a reader (another worker, TF Serving, a resumed run)
never sees half of one."""
import os
import pathlib
import re

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


def write_bytes(path, data):
  """Writes `data` to a temporary file beside `path`, then renames it into place."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(path, text):
  write_bytes(path, text.encode("utf-8"))


def pid_alive(pid):
  """Is process `pid` running on this host?"""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def stale_temporaries(root):
  """Temporary files of write_bytes under `root` whose writing process is gone."""
  root = pathlib.Path(root)
  if not root.is_dir():
    return []
  found = []
  for path in root.rglob(".*.tmp-*"):
    match = _TEMPORARY.match(path.name)
    if match and path.is_file() and not pid_alive(int(match.group(1))):
      found.append(path)
  return sorted(found)
