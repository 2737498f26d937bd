"""Errors that entry points report as one line, without a traceback."""


class UserError(Exception):
  """A problem in what the user gave us (config, data, checkpoint, workdir)."""


class ConfigError(UserError):
  """A config key or value is wrong."""


class DataError(UserError):
  """An input file is malformed; the message names file, line and problem."""


class CheckpointError(UserError):
  """A model checkpoint cannot be found or converted."""


class WorkdirError(UserError):
  """The run directory is not in a state this command can use."""


class TrainingError(UserError):
  """Training cannot go on (a non-finite loss or gradient); the message says what to change."""


class Interrupted(Exception):
  """The run stopped on a signal after saving its state: one line, then `exit_code`."""

  def __init__(self, message, exit_code):
    super().__init__(message)
    self.exit_code = exit_code


# What the OS (or TensorFlow, quoting it) says when storage refuses a file, and what to do.
STORAGE_FAILURES = {"No space left on device": "free space",
                    "Disk quota exceeded": "free space within the quota",
                    "Read-only file system": "use a writable directory",
                    "Permission denied": "fix its permissions",
                    "Operation not permitted": "fix its permissions or use a writable directory"}


def storage_failure(error):
  """(file, reason) if `error`, the OS's or TensorFlow's (whose message reads
  "{{function_node ...}} PATH; No space left on device [Op:SaveV2]"), says storage refused
  a file; else None."""
  if isinstance(error, OSError) and error.strerror:
    text, path = error.strerror, error.filename
  else:
    text, path = str(error), None
  reason = next((r for r in STORAGE_FAILURES if r in text), None)
  if reason is None:
    return None
  if path is None and "; " in text:
    path = text.split("; ", 1)[0].rsplit("}} ", 1)[-1].strip() or None
  return path, reason
