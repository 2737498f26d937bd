"""What the absl entry points share: flag parsing, one-line errors and a quiet console."""
import logging
import os
import pathlib
import re
import sys
import traceback

from absl import app
from absl import flags
from absl import logging as absl_logging

import tf_finetune
from tf_finetune.data import sources
from tf_finetune.errors import STORAGE_FAILURES, Interrupted, UserError, storage_failure


def parse_flags(argv):
  """absl's parser, except that an unknown --config.KEY, and a --config file that is missing,
  does not parse, raises, has no get_config(), returns no ConfigDict or sets a key
  tf_finetune does not have (config.check_known_keys), are one line, not a traceback."""
  config_file = _config_file(argv) if "config" in flags.FLAGS else None
  if config_file and not pathlib.Path(config_file).is_file():
    sys.exit(f"error: --config={config_file}: no such file (a config file such as "
             "configs/default.py)")
  try:
    remaining = flags.FLAGS(argv)
    if config_file:
      from tf_finetune import config as config_lib
      config_lib.check_known_keys(flags.FLAGS["config"].value, config_file)
    return remaining
  except UserError as e:
    sys.exit(f"error: {e}")
  except SyntaxError as e:
    sys.exit(f"error: {e.filename}:{e.lineno}: the config file does not parse: {e.msg}")
  except Exception as e:  # noqa: BLE001 (the config file's own code may raise anything)
    raised = _raised_by_config_file(e, config_file)
    if raised is not None:
      line, error = raised
      sys.exit(f"error: {config_file}:{line}: the config file raised "
               f"{type(error).__name__}: {error}")
    if isinstance(e, AttributeError) and "get_config" in str(e):
      sys.exit(f"error: {config_file}: defines no get_config() (a config file returns its "
               "ConfigDict from get_config(), as configs/default.py does)")
    if isinstance(e, (AttributeError, KeyError)):
      sys.exit(_unknown_config_key(argv, e))
    if isinstance(e, flags.Error):
      sys.exit(f"error: {e}")
    raise


def _raised_by_config_file(error, config_file):
  """(line, exception) when `error`, or the one it was raised from (absl wraps a ValueError
  of the flag's parser in an IllegalFlagValueError), went through the config file's code:
  the last line of the file in its traceback. Else None."""
  if not config_file:
    return None
  path = os.path.realpath(config_file)
  while error is not None:
    lines = [line for frame, line in traceback.walk_tb(error.__traceback__)
             if os.path.realpath(frame.f_code.co_filename) == path]
    if lines:
      return lines[-1], error
    error = error.__cause__ or error.__context__
  return None


def _config_file(argv):
  """The path of --config=PATH[:ARGUMENT] or --config PATH, if given."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":", 1)[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def _unknown_config_key(argv, e):
  bad = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  match = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(e))
  detail = (f"did you mean {match.group(1)} instead of {match.group(2)}?" if match
            else str(e.args[0] if e.args else e))
  return (f"error: unknown config key among {', '.join(bad)} ({detail}); "
          "see configs/default.py and tf_finetune/config.py for the keys")


def import_tensorflow_quietly():
  """Imports TensorFlow and finds its devices with file descriptor 2 sent to /dev/null.

  TensorFlow 2.21 prints its start-up lines (oneDNN, "Could not find cuda drivers", once per
  shared library, so twice) before its C++ logging is initialized, where
  TF_CPP_MIN_LOG_LEVEL does not reach them, and an "E0000 ... failed call to cuInit" on a
  machine without a GPU. A user reads "E" as an error. Nothing else runs meanwhile, and a
  failed import still raises (its traceback is printed after stderr is back). With
  TF_CPP_MIN_LOG_LEVEL set by the user, nothing is hidden; with it at 0, TensorFlow's
  Python INFO lines (a "Sharding callback duration" at every checkpoint) show too.
  """
  level = tf_finetune.USER_TF_LOG_LEVEL
  if level != "0":
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    absl_logging.get_absl_logger().addFilter(_drop_tensorflow_info)
  if level is not None or "tensorflow" in sys.modules:
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import tensorflow as tf
    tf.config.list_physical_devices()
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def guard(main):
  """main where a UserError, a file the disk refused (full, over quota, read-only), or a
  path that cannot be what it is asked to be (a file where a directory is needed, a parent
  that is missing) exits with `error: <message>` (status 1), a signal that stopped training
  after a save with its one line (status 128 + signal), and Ctrl-C elsewhere with
  `interrupted` (status 130): never a traceback."""
  def guarded(argv):
    try:
      main(argv)
    except UserError as e:
      sys.exit(f"error: {e}")
    except Interrupted as e:
      print(e, file=sys.stderr)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      sys.exit(130)
    except (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
      if e.filename is None:
        raise
      # mkdir(exist_ok=True) raises FileExistsError only where the path is not a directory.
      what = ("a file is there, where a directory is needed"
              if isinstance(e, FileExistsError) else e.strerror)
      sys.exit(f"error: {e.filename}: {what}")
    except Exception as e:  # noqa: BLE001 (only a file the disk refused becomes one line)
      failure = storage_failure(e)
      if failure is None:
        raise
      path, reason = failure
      sys.exit(f"error: {path or 'a file'}: {reason}; {STORAGE_FAILURES[reason]} and run the "
               "same command again")
  return guarded


def _drop_tensorflow_info(record):
  """TensorFlow's own INFO lines through absl logging (the checkpoint saver's "Sharding
  callback duration" at every save); its warnings and errors pass."""
  return record.levelno >= logging.WARNING or \
      f"{os.sep}tensorflow{os.sep}" not in (record.pathname or "")


def run(main):
  """app.run(guard(main)) for entry points that take no positional arguments."""
  def no_arguments(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    main(argv)
  app.run(guard(no_arguments), flags_parser=parse_flags)


def _input_name(input_path):
  return input_path if input_path and input_path != "-" else "standard input"


def text_place(arguments, input_path, number):
  """Where read_texts' text `number` (from 1) came from, for messages."""
  return f"argument {number}" if arguments else f"{_input_name(input_path)}:{number}"


def check_pair_lines(texts, arguments, input_path, verb):
  """A sentence-pair model's line is text<TAB>pair, one tab (blank lines aside): a line
  with none would be read with an empty pair, one with two with a tab in its pair."""
  for number, text in enumerate(texts, start=1):
    tabs = text.count("\t")
    if text.strip() and tabs != 1:
      raise UserError(f"{text_place(arguments, input_path, number)}: a sentence-pair model "
                      f"takes text<TAB>pair, one tab; this line holds {tabs}; nothing was "
                      f"{verb}ed")


def read_texts(arguments, input_path, errors="strict", verb="predict"):
  """The texts, one per argument or per line of input_path (None or "-": standard input;
  a gzip, bzip2 or xz file is read as the text it holds); blank lines kept, as "".
  errors: what bytes that are not UTF-8 do: strict (stop, naming the line) or replace
  (U+FFFD, counted on stderr)."""
  if arguments:
    return list(arguments)
  name = _input_name(input_path)
  if name == input_path:
    try:
      data = sources.read_data_file(name)
    except OSError as e:
      raise UserError(f"--input={name}: {e.strerror}") from None
  else:
    data = sys.stdin.buffer.read()
  if not data:
    raise UserError(f"no text to {verb}: {name} is empty")
  lines = data.split(b"\n")
  if lines[-1] == b"":
    lines.pop()
  texts, replaced = [], 0
  for number, line in enumerate(lines, start=1):
    line = line[:-1] if line.endswith(b"\r") else line
    try:
      texts.append(line.decode("utf-8"))
    except UnicodeDecodeError as e:
      if errors == "strict":
        raise UserError(f"{text_place([], input_path, number)}: bytes "
                        f"{line[e.start:e.end]!r} are not valid UTF-8; "
                        f"nothing was {verb}ed (--errors=replace reads them as U+FFFD)") from None
      texts.append(line.decode("utf-8", errors="replace"))
      replaced += 1
  if replaced:
    print(f"{name}: {replaced} line(s) had bytes that are not UTF-8, read as U+FFFD "
          "(--errors=replace)", file=sys.stderr)
  return texts
