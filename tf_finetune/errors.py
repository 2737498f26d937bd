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
