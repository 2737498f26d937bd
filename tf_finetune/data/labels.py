"""The label vocabulary: inferred from train, saved as labels.json, reused on resume and export."""
import json

from tf_finetune import atomic
from tf_finetune.errors import DataError, WorkdirError


def _sort_key(label):
  # "2" before "10" when every label is an integer; otherwise plain string order.
  return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


class LabelVocabulary:
  """Maps label strings to contiguous ids, in a stable order."""

  def __init__(self, labels):
    self.labels = list(labels)
    self._ids = {label: i for i, label in enumerate(self.labels)}

  @classmethod
  def from_train(cls, train_labels):
    return cls(sorted(set(train_labels), key=_sort_key))

  @classmethod
  def load(cls, path):
    """labels.json; a damaged one (not a list of distinct strings) is one WorkdirError."""
    labels = atomic.read_json(path, list, "the label vocabulary")
    if not labels or not all(isinstance(x, str) for x in labels) or len(set(labels)) < len(labels):
      raise WorkdirError(f"{path}: not a list of distinct label strings; the file is damaged")
    return cls(labels)

  def save(self, path):
    atomic.write_text(path, json.dumps(self.labels, indent=1, ensure_ascii=False) + "\n")

  def __len__(self):
    return len(self.labels)

  def __eq__(self, other):
    return isinstance(other, LabelVocabulary) and self.labels == other.labels

  def encode(self, split):
    """Label ids for a Split; a label not in the vocabulary stops with file:line."""
    ids = []
    for label, origin in zip(split.labels, split.origins):
      if label not in self._ids:
        raise DataError(f"{origin}: label {label!r} of the {split.name} split is not among the "
                        f"{len(self.labels)} labels seen in train {self.labels[:20]}")
      ids.append(self._ids[label])
    return ids
