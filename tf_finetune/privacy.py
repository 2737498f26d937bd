"""DP-SGD's parameters and accounting (privacy.method=dp_sgd); the step is training/dp_sgd.py.

DP-SGD (Abadi et al. 2016) in the custom loop.

Per optimizer step: a Poisson sample of the train split (data/pipeline.py
poisson_train_dataset: each example in with probability q = train.batch_size / N, the
sample cut to a random subset of `capacity` where it overflows), each sampled example's
gradient clipped to L2 norm C = privacy.l2_norm_clip (or the head to
privacy.head_l2_norm_clip and the encoder to the rest of C, training/dp_sgd.py), the
clipped gradients summed (over micro-batches and replicas), Gaussian noise of standard
deviation sigma * C added once, the sum divided by the expected batch size q N, then the
optimizer step. Under mirrored and multi-worker strategies every replica draws the same
noise from a stateless generator seeded by (train.seed, step), after the all-reduce, so the
noise is added once, not once per replica.

Epsilon at delta comes from dp-accounting's PLD accountant composing `steps`
TruncatedSubsampledGaussianDpEvents: the sampling the pipeline does, truncation included.
The guarantee is example-level for the fine-tuning data: one train example (one text, or
one sentence pair) added or removed. It says nothing about the pretraining corpus.

Written here: tensorflow-privacy pins TF <= 2.15 and Keras 2 optimizers, jax-privacy needs
the JAX backend and Opacus is PyTorch; dp-accounting does the accounting.
"""
import dataclasses
import math

from absl import logging

from tf_finetune import config as config_lib
from tf_finetune.errors import ConfigError

ACCOUNTANT = ("PLD (dp-accounting, pessimistic, value discretization 1e-3), Poisson sampling "
              "truncated to the capacity (TruncatedSubsampledGaussianDpEvent)")
# dp-accounting's default 1e-4 gives the same epsilon to 4 decimals here, 5 to 13x slower.
DISCRETIZATION = 1e-3


def _accountant():
  from dp_accounting.pld import pld_privacy_accountant
  return pld_privacy_accountant.PLDAccountant(value_discretization_interval=DISCRETIZATION)


def capacity(batch_size):
  """Rows a step's sample may fill: the expected batch plus six standard deviations (a
  sample over it is cut, which the accountant counts), rounded up to a multiple of the
  batch size (so replicas and micro-batches split it evenly, as they split the batch)."""
  rows = batch_size + math.ceil(6 * math.sqrt(batch_size))
  return -(-rows // batch_size) * batch_size


def _event(noise_multiplier, sampling_rate, rows, num_examples, steps):
  import dp_accounting
  return dp_accounting.SelfComposedDpEvent(dp_accounting.TruncatedSubsampledGaussianDpEvent(
      num_examples, sampling_rate, rows, noise_multiplier), steps)


def epsilon(noise_multiplier, sampling_rate, rows, num_examples, steps, delta):
  """Epsilon after `steps` steps (inf without noise, 0 before any step)."""
  if steps <= 0:
    return 0.0
  if noise_multiplier <= 0:
    return math.inf
  accountant = _accountant()
  accountant.compose(_event(noise_multiplier, sampling_rate, rows, num_examples, steps))
  return float(accountant.get_epsilon(delta))


def calibrate_noise(target_epsilon, sampling_rate, rows, num_examples, steps, delta):
  """The smallest noise multiplier whose epsilon after `steps` is at most target_epsilon."""
  import dp_accounting
  from dp_accounting import mechanism_calibration
  return float(dp_accounting.calibrate_dp_mechanism(
      _accountant, lambda sigma: _event(sigma, sampling_rate, rows, num_examples, steps),
      target_epsilon, delta,
      bracket_interval=mechanism_calibration.LowerEndpointAndGuess(0.1, 1.0), tol=1e-3))


@dataclasses.dataclass
class Plan:
  """A run's privacy parameters; `report(steps)` is what the log and report.json give."""
  noise_multiplier: float
  l2_norm_clip: float
  delta: float
  sampling_rate: float
  capacity: int
  num_examples: int
  batch_size: int  # expected examples per step, q N
  head_l2_norm_clip: float = 0.0  # 0: one clip for the whole gradient

  def group_clips(self):
    """(head, encoder) clips where the head is clipped apart, else None. Their squares sum
    to C^2: an example's clipped gradient keeps norm <= C, the sensitivity the noise is for."""
    if not self.head_l2_norm_clip:
      return None
    return (self.head_l2_norm_clip,
            math.sqrt(self.l2_norm_clip ** 2 - self.head_l2_norm_clip ** 2))

  def report(self, steps):
    return {"epsilon": epsilon(self.noise_multiplier, self.sampling_rate, self.capacity,
                               self.num_examples, steps, self.delta),
            "delta": self.delta, "noise_multiplier": self.noise_multiplier,
            "l2_norm_clip": self.l2_norm_clip, "head_l2_norm_clip": self.head_l2_norm_clip,
            "steps": int(steps),
            "sampling_rate": self.sampling_rate, "capacity": self.capacity,
            "num_examples": self.num_examples, "accountant": ACCOUNTANT}


def clip_text(report):
  """The clipping of a privacy report, as report.txt and the model card say it."""
  head = report.get("head_l2_norm_clip")
  return f"clip {report['l2_norm_clip']:g}" + (f" (head {head:g} apart)" if head else "")


def plan(config, num_examples):
  """The Plan of a run: noise from privacy.noise_multiplier, or solved for
  privacy.target_epsilon after the run's total steps."""
  p, batch_size = config.privacy, config.train.batch_size
  if batch_size >= num_examples:
    raise ConfigError(f"config.train.batch_size={batch_size}: DP-SGD samples each step from "
                      f"the {num_examples} train examples; the batch must be smaller")
  rate = batch_size / num_examples
  rows = capacity(batch_size)
  delta = p.delta or 1 / (2 * num_examples)
  sigma = p.noise_multiplier
  if p.target_epsilon:
    sigma = calibrate_noise(p.target_epsilon, rate, rows, num_examples,
                            config_lib.total_steps(config, num_examples), delta)
  return Plan(sigma, p.l2_norm_clip, delta, rate, rows, num_examples, batch_size,
              p.head_l2_norm_clip)


def log_plan(privacy_plan, total_steps, target_epsilon=0.0):
  p = privacy_plan
  clips = p.group_clips()
  logging.info(
      "Privacy: DP-SGD, noise multiplier %.4f%s, clip %.3g%s, Poisson sampling rate %.5f "
      "(expected %d of %d examples a step, at most %d), delta %.3g: epsilon %.3f after the "
      "planned %d steps (%s)", p.noise_multiplier,
      f" (solved for epsilon {target_epsilon:g})" if target_epsilon else "", p.l2_norm_clip,
      f" (head {clips[0]:.3g}, encoder {clips[1]:.3g}, apart)" if clips else "",
      p.sampling_rate, p.batch_size, p.num_examples, p.capacity, p.delta,
      p.report(total_steps)["epsilon"], total_steps, ACCOUNTANT)
