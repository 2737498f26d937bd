"""One trainer per run directory: an exclusive lock on WORKDIR/.lock.

The lock is fcntl.flock on an open file, which the kernel releases when its process ends
in any way (kill -9 included), so a lock file left by a dead process is detected as stale
and taken over. The file holds the holder's pid, host and start time, for the message
another process prints. Written by hand: no library on this stack locks a directory.
"""
import datetime
import fcntl
import json
import os
import pathlib
import socket

from absl import logging

from tf_finetune.errors import WorkdirError

LOCK_FILE = ".lock"


class WorkdirLock:

  def __init__(self, root):
    self.path = pathlib.Path(root) / LOCK_FILE
    self._file = None
    self._created = None  # the directories acquire made, removed again if left empty

  def acquire(self):
    root = self.path.parent
    missing = [p for p in [root, *root.parents] if not p.exists()]
    try:
      root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      what = "is a file, not a directory" if root.is_file() else \
          f"cannot be made a directory ({e.strerror})"
      raise WorkdirError(f"{root}: {what}; choose another --workdir") from None
    self._created = missing
    while True:
      try:
        f = open(self.path, "a+", encoding="utf-8")
      except OSError as e:
        raise WorkdirError(f"{self.path}: cannot be written ({e.strerror}); choose a --workdir "
                           "you can write to") from None
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        f.seek(0)
        holder = _describe(f.read())
        f.close()
        if f"pid {os.getpid()} on host {socket.gethostname()}," in holder:
          raise WorkdirError(f"{self.path.parent} is in use by another Trainer in this process; "
                             "let its train() finish, or call its close()") from None
        raise WorkdirError(f"{self.path.parent} is in use by another tf_finetune trainer "
                           f"({holder}); wait for it to finish or stop it, or choose another "
                           "--workdir") from None
      try:  # the holder may have released (and removed) the file while we opened it
        if os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
          break
      except FileNotFoundError:
        pass
      f.close()
    f.seek(0)
    previous = f.read()
    if previous.strip():
      logging.warning("%s: took over a stale lock of a process that is no longer running (%s)",
                      self.path, _describe(previous))
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": datetime.datetime.now().isoformat(timespec="seconds")}))
    f.flush()
    self._file = f
    return self

  def release(self):
    if self._file is None:
      return
    try:
      self.path.unlink()
    except FileNotFoundError:
      pass
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None
    for directory in self._created or []:  # a run that stopped before writing anything
      try:
        directory.rmdir()
      except OSError:
        break


def _describe(text):
  try:
    holder = json.loads(text)
    return f"pid {holder['pid']} on host {holder['host']}, since {holder['started']}"
  except (ValueError, KeyError, TypeError):
    return "holder unknown"
