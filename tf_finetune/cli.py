"""What the absl entry points share: flag parsing and one-line errors."""
import sys

from absl import app
from absl import flags

from tf_finetune.errors import UserError


def _parse_flags(argv):
  """absl's parser, except that an unknown --config.KEY is one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: unknown config key among {', '.join(bad)} ({e}); "
             "see configs/default.py and tf_finetune/config.py for the keys")
  except flags.Error as e:
    sys.exit(f"error: {e}")


def run(main):
  """app.run(main) where a UserError from main exits with `error: <message>` (status 1)."""
  def guarded(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
      main(argv)
    except UserError as e:
      sys.exit(f"error: {e}")
  app.run(guarded, flags_parser=_parse_flags)
