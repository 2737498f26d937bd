"""Run files written whole or not at all (a reader: another worker, TF Serving, a resumed
run, never sees half of one), and read back with one error naming a damaged one."""
import contextlib
import json
import os
import pathlib
import re

from tf_finetune.errors import WorkdirError

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


@contextlib.contextmanager
def replacing(path, stem=None):
  """Yields a temporary path beside `path` to write; renames it into place when the block
  ends without an error, else removes it (as a later start removes a killed writer's).
  The temporary file is `.STEM.tmp-PID`, STEM `path`'s name unless given; an OSError about
  it (a missing or unwritable folder, `path` a directory) names `path`, the file asked for."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{stem or path.name}.tmp-{os.getpid()}")
  try:
    yield tmp
    tmp.replace(path)
  except OSError as e:
    if e.filename != str(tmp):
      raise
    raise _naming(e, path) from None
  finally:
    if tmp.exists():
      tmp.unlink()


def writable_directory(path):
  """Makes directory `path` (and its parents) and writes and removes a file in it, so that
  a command refuses a folder it cannot write before its work, not after it; returns it."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  probe = path / f".write-check.tmp-{os.getpid()}"  # what stale_temporaries would remove
  try:
    probe.write_bytes(b"")
  except OSError as e:
    raise _naming(e, path) from None
  finally:
    probe.unlink(missing_ok=True)
  return path


def _naming(error, path):
  """The same OSError about `path` (the file or folder asked for, not a temporary)."""
  return type(error)(error.errno, error.strerror, str(path))


def write_bytes(path, data):
  """Writes `data` to a temporary file beside `path`, then renames it into place."""
  with replacing(path) as tmp:
    tmp.write_bytes(data)


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


def read_json(path, kind, what, error=WorkdirError):
  """A run file's (or a checkpoint's) JSON, which must be a `kind` (dict or list); `error`
  if it is not."""
  try:
    data = json.loads(pathlib.Path(path).read_bytes().decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise error(f"{path}: cannot be read as JSON ({e}); it should hold {what}; the file is "
                "damaged (truncated or overwritten)") from None
  if not isinstance(data, kind):
    raise error(f"{path}: holds a JSON {type(data).__name__}, not the {kind.__name__} of "
                f"{what}; the file is damaged")
  return data
