"""The Task interface: what a kind of problem adds to the shared loop, data and export."""
import abc


class Task(abc.ABC):
  """A task owns its head, loss, label encoding, prediction decoding and report.

  The trainer calls only these methods, so adding a task never touches the loop.
  """

  def __init__(self, config, label_vocabulary):
    self.config = config
    self.label_vocabulary = label_vocabulary

  @abc.abstractmethod
  def build_model(self, backbone):
    """A keras.Model from BERT inputs (token_ids, segment_ids, padding_mask) to logits."""

  @abc.abstractmethod
  def label_values(self, split):
    """Numeric labels for a Split (raises DataError for labels the task cannot take)."""

  @abc.abstractmethod
  def build_losses(self, labels, logits):
    """Per-example losses, shape [batch]."""

  @abc.abstractmethod
  def validation_step_outputs(self, logits):
    """Decoded predictions (numpy) from a split's logits."""

  @abc.abstractmethod
  def report(self, split, label_values, logits):
    """A JSON-ready dict of metrics for a split."""
