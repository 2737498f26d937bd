"""Integrated gradients (Sundararajan et al. 2017) over the input token embeddings.

A wordpiece's attribution is (e(x) - e(b)) . integral over a in [0, 1] of the gradient of the
explained output at e(b) + a (e(x) - e(b)), where e(x) are the text's token embeddings and
e(b) the baseline's: the same row with every wordpiece replaced by [PAD] ([CLS], [SEP],
positions and segments kept, as in Captum's BERT tutorial). The integral is Gauss-Legendre
quadrature (Captum's default method). Attributions sum to f(x) - f(b) up to the quadrature
error, which each explanation reports as its completeness gap; where the gap is over
`max_gap` of f(x) - f(b), the points are doubled (up to `max_steps`): a model that flips
sharply along the path needs many more points than one that changes smoothly. A word's
attribution is the sum of its wordpieces'.

The explained output is a logit: the chosen or predicted label's (classification; each
chosen or predicted label's for multi-label) or the score (regression).

Written here: Captum (PyTorch) and alibi (TF < 2.15) do not run on this stack; the
embedding hook is the one adversarial training uses (embedding_hook.py).
"""
import dataclasses
import html
import math

import numpy as np
import tensorflow as tf

from tf_finetune import config as config_lib
from tf_finetune import embedding_hook
from tf_finetune import peft
from tf_finetune.data import pii
from tf_finetune.errors import ConfigError

TASKS = config_lib.SINGLE_LABEL + ("multilabel", "regression")
DEFAULT_STEPS = 32  # tools/bench_explain.py: completeness gap on the SST-2 dev set
MAX_GAP = 0.05  # of |f(x) - f(b)|; or 1e-3 in logit units, when f(x) and f(b) nearly agree
MAX_STEPS = 512


@dataclasses.dataclass
class Explanation:
  text: str
  text_pair: str
  label: str  # the explained output: a label name, or "score"
  logit: float  # f(x)
  baseline_logit: float  # f(b)
  pieces: list  # [(wordpiece, attribution)] in the model's input row, [CLS]/[SEP] left out
  # [(word, segment (0 text, 1 pair), start, end, attribution or None when not read)], or
  # None when the words' wordpieces do not line up with the input row.
  words: list
  truncated: bool
  steps: int  # quadrature points used
  max_gap: float = MAX_GAP  # the completeness gap accepted (--max_gap)

  def converged(self):
    return abs(self.gap) <= max(self.max_gap * abs(self.logit - self.baseline_logit), 1e-3)

  @property
  def total(self):
    return float(sum(a for _, a in self.pieces))

  @property
  def gap(self):
    """Completeness gap: sum of attributions minus (f(x) - f(b))."""
    return self.total - (self.logit - self.baseline_logit)

  @property
  def relative_gap(self):
    delta = self.logit - self.baseline_logit
    return abs(self.gap) / abs(delta) if delta else float("inf") if self.gap else 0.0

  def to_json(self):
    """JSON-ready; a relative gap with nothing to divide by (f(x) = f(b)) is null."""
    relative = self.relative_gap if math.isfinite(self.relative_gap) else None
    return {"text": self.text, "text_pair": self.text_pair, "label": self.label,
            "logit": self.logit, "baseline_logit": self.baseline_logit,
            "sum_of_attributions": self.total, "completeness_gap": self.gap,
            "relative_completeness_gap": relative, "steps": self.steps,
            "max_gap": self.max_gap, "converged": self.converged(),
            "truncated": self.truncated,
            "wordpieces": [{"piece": p, "attribution": a} for p, a in self.pieces],
            "words": None if self.words is None else [
                {"word": w, "segment": g, "start": s, "end": e, "attribution": a}
                for w, g, s, e, a in self.words]}


def refusal(config):
  """Why a run cannot be explained here ("" when it can)."""
  if config.task.name not in TASKS:
    return (f"explanations are for task.name in {', '.join(TASKS)}; this run's task is "
            f"{config.task.name!r}")
  if config.data.long_text == "windows":
    return ("explanations read one model input; data.long_text='windows' pools several "
            "windows per text (explain a truncate or head_tail run)")
  return ""


class IntegratedGradients:
  """Explains a run's model (experiment.Run) on raw texts."""

  def __init__(self, run, steps=DEFAULT_STEPS, max_steps=MAX_STEPS, max_gap=MAX_GAP,
               batch_size=64):
    why = refusal(run.config)
    if why:
      raise ConfigError(why)
    if not 1 <= steps <= max_steps:
      raise ConfigError(f"--steps={steps}: integrated gradients needs 1 to "
                        f"--max_steps={max_steps} points")
    if not max_gap >= 0:
      raise ConfigError(f"--max_gap={max_gap}: must be >= 0 (a share of "
                        "|logit(text) - logit(baseline)|)")
    self.run = run
    self.encoder = run.encoder
    self.vocabulary = self.encoder.tokenizer.get_vocabulary()
    self.steps, self.max_steps, self.max_gap = steps, max_steps, max_gap
    self.batch_size = batch_size
    self.perturbation = embedding_hook.EmbeddingPerturbation(run.model)
    rows = tf.TensorSpec([None, None], tf.int32)
    hidden = peft.backbone(run.model).hidden_dim
    self._gradients = tf.function(self._gradients_of, input_signature=[
        {k: rows for k in ("token_ids", "segment_ids", "padding_mask")},
        tf.TensorSpec([None, None, hidden], tf.float32), tf.TensorSpec([], tf.int32)])

  def _gradients_of(self, features, delta, output):
    """Per row of `delta`: the gradient of logit `output` at the token embeddings plus delta,
    and that logit."""
    with tf.GradientTape() as tape:
      logits = self.perturbation.forward(tape, self.run.model, features, delta, training=False)
      embeddings = self.perturbation.output
      target = tf.cast(logits, tf.float32)[:, output]
      total = tf.reduce_sum(target)  # rows are independent: d total / d row = d target / d row
    return tape.gradient(total, embeddings), target

  def _embeddings(self, token_ids):
    layer = peft.backbone(self.run.model).token_embedding
    return tf.cast(layer(tf.constant(token_ids)[None]), tf.float32)[0]

  def outputs(self, logits):
    """The outputs to explain by default: the predicted label (classification), the labels
    at probability >= 0.5 or else the most probable (multi-label), the score (regression)."""
    task = self.run.config.task.name
    if task in config_lib.SINGLE_LABEL:
      return [int(np.argmax(logits))]
    if task == "multilabel":
      chosen = np.flatnonzero(logits >= 0)  # sigmoid(logit) >= 0.5
      return chosen.tolist() if len(chosen) else [int(np.argmax(logits))]
    return [0]

  def output_names(self):
    if self.run.config.task.name == "regression":
      return ["score"]
    return self.run.labels.labels

  def explain(self, text, text_pair=None, labels=None):
    """Explanations of `text` (and pair): one per explained output (labels: names, or None
    for the defaults of `outputs`)."""
    if self.run.config.data.mask_pii:  # the model read masked text; explain that text
      text = pii.mask_strings([text])[0][0]
      text_pair = None if text_pair is None else pii.mask_strings([text_pair])[0][0]
    pair = [text_pair] if text_pair is not None else None
    features = self.encoder(tf.constant([text]), None if pair is None else tf.constant(pair),
                            with_truncation=True)
    truncated = bool(features["truncated"].numpy()[0])
    padded = self.encoder.pad(features)
    token_ids = padded["token_ids"].numpy()[0]
    special = np.isin(token_ids, [self.encoder.cls_id, self.encoder.sep_id])
    baseline_ids = np.where(special, token_ids, self.encoder.pad_id)
    difference = self._embeddings(baseline_ids) - self._embeddings(token_ids)  # e(b) - e(x)
    names = self.output_names()
    if labels:
      unknown = [name for name in labels if name not in names]
      if unknown:
        raise ConfigError(f"--label={unknown[0]!r}: not an output of this run "
                          f"({', '.join(names)})")
      chosen = [names.index(name) for name in labels]
    else:
      logits = tf.cast(self.run.model(padded, training=False), tf.float32).numpy()[0]
      chosen = self.outputs(logits)
    words = self._words(text, text_pair, features)
    explanations = []
    for output in chosen:
      steps = self.steps
      while True:
        e = self._integrate(steps, padded, difference, output, names[output], text, text_pair,
                            token_ids, special, words, truncated)
        if e.converged() or steps >= self.max_steps:
          break
        steps = min(2 * steps, self.max_steps)
      explanations.append(e)
    return explanations

  def _integrate(self, steps, padded, difference, output, name, text, text_pair, token_ids,
                 special, words, truncated):
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2  # from [-1, 1] to [0, 1]
    # At a, the embeddings are e(x) + (1 - a) (e(b) - e(x)); a = 0 is the baseline.
    points = np.concatenate([alphas, [1.0, 0.0]]).astype(np.float32)
    gradients, values = [], []
    for start in range(0, len(points), self.batch_size):
      alphas = points[start:start + self.batch_size]
      batch = {k: tf.repeat(v, len(alphas), axis=0) for k, v in padded.items()}
      delta = (1.0 - alphas)[:, None, None] * difference[None]
      g, v = self._gradients(batch, delta, tf.constant(output))
      gradients.append(g.numpy())
      values.append(v.numpy())
    gradients, values = np.concatenate(gradients), np.concatenate(values)
    average = np.tensordot(weights, gradients[:steps], axes=1)  # [length, hidden]
    attributions = (-difference.numpy() * average).sum(-1)  # (e(x) - e(b)) . gradient
    pieces = [(self.vocabulary[i], float(a))
              for i, a, s in zip(token_ids, attributions, special) if not s]
    word_attributions = None
    if words is not None:
      word_attributions = [(w, g, s, e, float(attributions[rows].sum()) if rows else None)
                           for w, g, s, e, rows in words]
    return Explanation(text, text_pair, name, float(values[steps]), float(values[steps + 1]),
                       pieces, word_attributions, truncated, steps, self.max_gap)

  def _words(self, text, text_pair, features):
    """Per word of the text (then the pair): (word, segment, start, end, its wordpieces'
    positions in the model's input row), or None when the words' pieces do not line up with
    the row."""
    token_ids = features["token_ids"].numpy()[0]
    segment_ids = features["segment_ids"].numpy()[0]
    result = []
    for segment, string in enumerate([text] if text_pair is None else [text, text_pair]):
      words, starts, ends = self.encoder.split_words(tf.constant([string]))
      words = [w.decode("utf-8") for w in words.numpy()[0]]
      pieces = self.encoder.tokenize(tf.constant(words or [""])).numpy() if words else []
      flat = [i for p in pieces for i in p]
      positions = np.flatnonzero((segment_ids == segment) & ~np.isin(
          token_ids, [self.encoder.cls_id, self.encoder.sep_id]))
      kept = self._kept(len(flat), len(positions), text_pair is None)
      if [flat[k] for k in kept] != token_ids[positions].tolist():
        return None
      row_of_piece = dict(zip(kept, positions.tolist()))
      first = 0
      for word, start, end, word_pieces in zip(words, starts.numpy()[0], ends.numpy()[0],
                                               pieces):
        rows = [row_of_piece[k] for k in range(first, first + len(word_pieces))
                if k in row_of_piece]
        result.append((word, segment, int(start), int(end), rows))
        first += len(word_pieces)
    return result

  def _kept(self, pieces, kept, single):
    """Which of a segment's wordpieces the encoder kept, in order: all, the first `kept`,
    or head_tail's first quarter and last three quarters of the budget."""
    if kept >= pieces:
      return list(range(pieces))
    if single and self.encoder.long_text == "head_tail":
      head = (self.encoder.max_seq_length - 2) // 4
      return list(range(head)) + list(range(pieces - (kept - head), pieces))
    return list(range(kept))


def text_lines(explanation):
  """What `explain` prints for one explanation."""
  e = explanation
  lines = [f"{e.text!r}" + (f" / {e.text_pair!r}" if e.text_pair is not None else ""),
           f"  explained: {e.label} (logit {e.logit:.4f}, baseline {e.baseline_logit:.4f}); "
           f"sum of attributions {e.total:.4f}, completeness gap {e.gap:+.4f} "
           f"({100 * e.relative_gap:.2f}%, {e.steps} points)" +
           ("" if e.converged() else "; NOT CONVERGED at --max_steps, read with care") +
           ("; the text was cut to max_seq_length" if e.truncated else "")]
  if e.words is not None:
    lines.append("  words: " + "  ".join(
        f"{w} {a:+.4f}" if a is not None else f"{w} (not read)" for w, _, _, _, a in e.words))
  lines.append("  wordpieces: " + "  ".join(f"{p} {a:+.4f}" for p, a in e.pieces))
  return lines


def _color(attribution, scale):
  """Red for positive, blue for negative attributions, by their share of the largest."""
  strength = 0.0 if not scale else min(1.0, abs(attribution) / scale)
  rgb = (255, int(255 * (1 - strength)), int(255 * (1 - strength))) if attribution > 0 else \
      (int(255 * (1 - strength)), int(255 * (1 - strength)), 255)
  return "#%02x%02x%02x" % rgb


def html_page(explanations, title):
  """One page: each text with its words (or wordpieces) shaded by attribution."""
  parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em}span{padding:1px 2px;"
           "border-radius:3px}p.meta{color:#555;font-size:90%}</style>\n",
           f"<h1>{html.escape(title)}</h1><p>Integrated gradients; red raises the explained "
           "logit, blue lowers it. Hover a word for its attribution.</p>\n"]
  for e in explanations:
    scale = max([abs(a) for _, a in e.pieces] + [0.0])
    parts.append(f"<h2>{html.escape(e.label)}</h2><p class='meta'>logit {e.logit:.4f}, "
                 f"baseline {e.baseline_logit:.4f}, completeness gap {e.gap:+.4f} "
                 f"({100 * e.relative_gap:.2f}%)</p><p>")
    if e.words is not None:
      strings = [e.text] if e.text_pair is None else [e.text, e.text_pair]
      segment, cursor = 0, 0
      for word, word_segment, start, end, a in e.words:
        if word_segment != segment:
          parts.append(html.escape(strings[segment][cursor:]) + "</p><p>")
          segment, cursor = word_segment, 0
        parts.append(html.escape(strings[segment][cursor:start]))
        if a is None:
          parts.append(f"<span title='not read (cut)' style='color:#999'>"
                       f"{html.escape(strings[segment][start:end])}</span>")
        else:
          parts.append(f"<span title='{a:+.4f}' style='background:{_color(a, scale)}'>"
                       f"{html.escape(strings[segment][start:end])}</span>")
        cursor = end
      parts.append(html.escape(strings[segment][cursor:]))
    else:
      parts.extend(f"<span title='{a:+.4f}' style='background:{_color(a, scale)}'>"
                   f"{html.escape(p)}</span> " for p, a in e.pieces)
    parts.append("</p>\n")
  return "".join(parts) + "\n"
