"""Progress lines of long work that is not training: evaluations and predictions."""
import time

from absl import logging

# The first line comes this many seconds into the work, and the next ones as often: work
# shorter than that (the dev set of most runs) logs nothing.
EVERY_SECONDS = 30.0


def format_duration(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressLog:
  """Logs `WHAT: N of TOTAL UNIT (P%) | R UNIT/s | ETA T` as counts are added, at most once
  every EVERY_SECONDS: lines, not a progress bar such as Keras's, which rewrites one terminal
  line, so that a log file keeps them as the trainer's step lines are kept. `total` may be
  a function, called once, when the first line is due (a count that costs work to make)."""

  def __init__(self, what, total, unit="examples", clock=time.monotonic):
    self.what, self.total, self.unit = what, total, unit
    self.every = EVERY_SECONDS
    self.clock = clock
    self.start = self.last = clock()
    self.done = 0

  def add(self, count):
    self.done += int(count)
    now = self.clock()
    if now - self.last < self.every or now == self.start:
      return
    self.last = now
    if callable(self.total):
      self.total = self.total()
    self.total = int(self.total)
    rate = self.done / (now - self.start)
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    logging.info("%s: %d of %d %s (%.0f%%) | %.1f %s/s | ETA %s", self.what, self.done,
                 self.total, self.unit, 100 * self.done / max(self.total, 1), rate, self.unit,
                 format_duration(eta) if eta != float("inf") else "unknown")
