"""Config defaults and validation.

`base_config()` is the embedded default (all-MiniLM-L6-v2 on BBC News); configs/*.py start
from it and change what they need. `validate()` runs before any heavy work and raises a
ConfigError whose one-line message names the key.
"""
import difflib
import math
import os
import pathlib
import re

import ml_collections

from tf_finetune.errors import ConfigError

SOURCES = ("bbc_news", "tsv", "csv", "jsonl", "label_first", "conll", "tfds")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
POOLINGS = ("pooler", "cls", "mean")
TAG_SCHEMES = ("iob2", "iob1", "bioes")  # data.tag_scheme (data/sources.read_conll)
LONG_TEXT = ("truncate", "head_tail", "windows")  # data.long_text (text_encoder.TextEncoder)
# Metrics each task reports at every evaluation; the first is train.best_metric=auto.
TASK_METRICS = {
    "classification": ("accuracy", "macro_f1", "loss"),
    "multilabel": ("micro_f1", "macro_f1", "loss"),
    "regression": ("pearson", "spearman", "loss"),
    "tagging": ("entity_f1", "entity_precision", "entity_recall", "loss"),
    "zero_shot": ("accuracy", "macro_f1", "loss"),
    "setfit": ("accuracy", "macro_f1", "loss"),
}
# Tasks with one label per example from a label vocabulary (label spellings checked,
# splits carved label-stratified, metrics by group as classification's).
SINGLE_LABEL = ("classification", "zero_shot", "setfit")
# Keys whose default differs from what tf_finetune did before the key was added: a run
# directory made before it (its config.json without the key) is read with this value.
VALUES_BEFORE_THE_KEY = {("task", "head_c"): 1.0}
TASKS = tuple(TASK_METRICS)
CLASS_WEIGHTS = ("none", "balanced")
PEFT_METHODS = ("none", "freeze", "bitfit", "adapter", "lora")

REPO_DIR = pathlib.Path(__file__).resolve().parent.parent
# Small labelled files written for this project and installed with it (smoke fallbacks).
EXAMPLES_DIR = pathlib.Path(__file__).resolve().parent / "data" / "examples"


def shared_data_dir():
  """../shared/data beside the checkout (CI and development machines), or None."""
  path = pathlib.Path(os.environ.get("TF_FINETUNE_SHARED_DATA", REPO_DIR.parent / "shared" / "data"))
  return path if path.is_dir() else None


def base_config():
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.checkpoint = "all-MiniLM-L6-v2"  # a local HF-format dir or a known offline name
  c.model.random_init = False  # architecture from config.json (+ overrides), fresh weights
  c.model.num_layers = 0  # > 0 overrides config.json; only with random_init
  c.model.hidden_dim = 0
  c.model.num_heads = 0
  c.model.intermediate_dim = 0
  c.model.dropout = 0.1
  c.model.pooling = "pooler"  # pooler (HF BertForSequenceClassification), cls or mean

  c.task = ml_collections.ConfigDict()
  # classification, multilabel, regression, tagging (NER), zero_shot (tasks/zero_shot.py) or
  # setfit (few-shot: contrastive pairs, then a logistic-regression head; tasks/setfit.py)
  c.task.name = "classification"
  c.task.class_weights = "none"  # classification: none, or balanced (n / (labels * count))
  c.task.label_smoothing = 0.0  # classification: the training loss's targets (reports: plain)
  # tagging: token (the mean over every labelled word of the optimizer step, as HF's token
  # classification; +0.5 entity F1 on WNUT-17, tools/bench_wnut17.py) or sentence (each
  # sentence's mean over its words, then the mean over sentences). Other tasks have one loss
  # term per example and average over examples.
  c.task.loss_average = "token"
  c.task.window_pooling = "mean"  # data.long_text=windows: mean or max of the windows' logits
  # zero_shot: each label's description, a template holding {label} or a JSON file
  # {label: text}; logits are similarity_scale times the cosine similarity to each.
  c.task.label_descriptions = "This text is about {label}."
  c.task.similarity_scale = 20.0
  # setfit: contrastive pairs per train example, half of one label and half of two
  # (SetFit's num_iterations=20 makes 40).
  c.task.pairs_per_example = 40
  # setfit: the logistic-regression head's C, scikit-learn's inverse of the L2 penalty's
  # strength (SetFit's head keeps scikit-learn's 1.0; README, "Few-shot, SetFit-style", for
  # the measurements this default was chosen on).
  c.task.head_c = 100.0
  # setfit: WiSE-FT's weight-space ensemble (Wortsman et al. 2022): the encoder that is
  # evaluated, kept as the best and exported is start + alpha * (trained - start), the
  # head fitted on it; 1.0 is the trained encoder itself, SetFit's (README, "Few-shot,
  # SetFit-style", for what other values do).
  c.task.wise_ft_alpha = 1.0

  c.data = ml_collections.ConfigDict()
  c.data.source = "bbc_news"
  c.data.dir = ""
  c.data.train_file = ""
  c.data.dev_file = ""
  c.data.test_file = ""
  c.data.text_column = "text"
  c.data.text_pair_column = ""
  c.data.label_column = "label"
  c.data.delimiter = ""  # default: tab for tsv, comma for csv
  c.data.has_header = True
  c.data.encoding = "utf-8"  # of the data files (a leading UTF-8 byte-order mark is dropped)
  # A text that is empty, only whitespace or holds a control character (NUL...): error
  # (stop with file:line) or skip (leave the row out, counted in the log).
  c.data.bad_text = "error"
  # Replace e-mail addresses, phone numbers, URLs, IP addresses, payment card numbers and
  # IBANs with [EMAIL], [PHONE], ... (data/pii.py) in every text before tokenization: in
  # training, evaluation, reports, predictions.tsv and inside the exported serving graph.
  c.data.mask_pii = False
  c.data.multilabel_separator = ","  # task.name=multilabel: labels in one cell, joined by this
  # data.source=label_first: with ":", TREC's "DESC:manner" becomes "DESC" (coarse labels).
  c.data.coarse_label_separator = ""
  # data.source=conll: iob2 (B- begins an entity), iob1 (I- does, as in CoNLL-2003's first
  # release) or bioes (B-, I-, E- ends an entity, S- is one of one word); the last two are
  # converted to IOB2 on reading.
  c.data.tag_scheme = "iob2"
  c.data.tfds_name = ""
  c.data.tfds_data_dir = ""
  c.data.tfds_train_split = "train"
  c.data.tfds_dev_split = ""
  c.data.tfds_test_split = ""
  c.data.dev_fraction = 0.1  # carved from train, stratified, when there is no dev split
  c.data.test_fraction = 0.1  # bbc_news only
  c.data.split_seed = 0
  c.data.max_seq_length = 128
  c.data.max_train_examples = 0  # > 0: use only the first N train examples (logged)
  # > 0 (few-shot): train on this many examples of each label, drawn with data.split_seed
  # (after max_train_examples); WORKDIR/train_sample.tsv lists them.
  c.data.examples_per_class = 0
  # A text longer than max_seq_length: truncate (keep its first wordpieces), head_tail (its
  # first quarter and last three quarters of the budget) or windows (overlapping windows of
  # max_seq_length, window_stride wordpieces apart (0: half a window), at most max_windows
  # (0: no cap) per text; training sees each window with its text's label, evaluation,
  # reports and serving pool the windows' logits per text (task.window_pooling)).
  c.data.long_text = "truncate"
  c.data.window_stride = 0
  c.data.max_windows = 0
  c.data.shuffle_buffer = 10_000
  c.data.bucketing = True
  # Lay each batch's examples end to end in rows of max_seq_length (data/packing.py): the same
  # examples and the same function per example on fewer padded tokens, in training,
  # evaluation and serving. Applies where it is exact (Task.packing_refusal says where not);
  # length bucketing is then moot and skipped.
  c.data.packing = True
  # eda: random deletion, swap and insertion of training words (data/augment.py), each
  # touching about data.augment_probability of an example's words; train split only.
  c.data.augment = "none"
  c.data.augment_probability = 0.1
  # Pad every batch to a bucket boundary with a fixed batch size, so a step sees only a few
  # fixed shapes (what XLA on TPU needs). Always on under distribution.strategy=tpu.
  c.data.static_shapes = False

  c.train = ml_collections.ConfigDict()
  c.train.steps = 0  # total optimizer steps; > 0 overrides epochs
  c.train.epochs = 3.0
  c.train.batch_size = 16  # global batch size: examples per optimizer step
  # > 1: each step sums the gradients of this many micro-batches of batch_size / it.
  c.train.grad_accum_steps = 1
  c.train.eval_batch_size = 64
  c.train.learning_rate = 1e-4
  c.train.weight_decay = 0.01
  c.train.warmup_fraction = 0.1
  c.train.max_grad_norm = 1.0  # 0 disables clipping
  # < 1: layer-wise learning-rate decay; transformer layer i of L learns at
  # learning_rate * layer_decay ** (L - i), the embeddings at layer_decay ** (L + 1).
  c.train.layer_decay = 1.0
  # > 0: the head's peak rate (every weight outside the encoder: the classifier, and the
  # pooler of families whose HF head holds it); the encoder keeps learning_rate. 0: the same.
  c.train.head_learning_rate = 0.0
  # > 0: stop when dev best_metric has not improved for this many evaluations in a row.
  c.train.early_stopping_patience = 0
  # A step whose loss or gradient norm is not finite is never applied; the run stops at the
  # first one, or, with N > 0, skips up to N of them (counted in the log and TensorBoard).
  c.train.skip_nonfinite_steps = 0
  # > 0: a run that diverges anyway (a non-finite step past skip_nonfinite_steps) goes back
  # to its last checkpoint and leaves out the batches it had trained on since, up to N times
  # (PaLM's remedy for loss spikes); 0: it stops. With N > 0 a run saves ckpt-0 first.
  c.train.divergence_rollbacks = 0
  # > 0: a run diverges too when the moving average of its training loss (exponential, over
  # about 10 steps) rises past this many times the loss of its first step (the weights it
  # started from), finite as it may be; handled as a non-finite step past
  # skip_nonfinite_steps (a rollback, or the run stops). 0: only non-finite steps.
  c.train.divergence_loss_ratio = 10.0
  c.train.adam_epsilon = 1e-6
  # auto: mixed_bfloat16 where the machine computes bfloat16 natively (TPU, GPU of compute
  # capability 8.0+, CPU with AMX or AVX512_BF16; distribute.native_bfloat16), else float32.
  c.train.precision = "auto"
  c.train.seed = 0
  c.train.log_every = 10
  c.train.eval_every = 0  # 0: once per epoch
  c.train.checkpoint_every = 0  # 0: at every evaluation
  c.train.keep_checkpoints = 2
  c.train.best_metric = "auto"  # one of the task's metrics (auto: the first: accuracy, micro_f1, pearson, entity_f1)
  c.train.eval_splits = "dev,test"  # evaluated with the best checkpoint at the end

  c.peft = ml_collections.ConfigDict()
  c.peft.method = "none"  # none, freeze, bitfit, adapter or lora (training/peft.py)
  c.peft.freeze_layers = 0  # freeze: the embeddings and this many bottom layers
  c.peft.adapter_size = 64  # adapter: bottleneck units
  c.peft.lora_rank = 8
  c.peft.lora_alpha = 16.0  # LoRA's update is scaled by alpha / rank
  c.peft.lora_targets = "query,value"  # attention projections: query, key, value, attention_output

  c.distill = ml_collections.ConfigDict()
  c.distill.teacher_workdir = ""  # a finished classification run: distill it into this model
  c.distill.student_layers = ""  # e.g. "0,2,4": the teacher layers the student starts from
  c.distill.temperature = 2.0
  c.distill.alpha = 0.5  # weight of the soft (teacher) loss; 1 - alpha on the labels

  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.method = "none"  # none, fgm or pgd, on the word embeddings (training/adversarial.py)
  # The perturbation's L2 norm per example (pgd: its bound). At 1.0 MiniLM stops learning
  # SST-2 (tools/bench_techniques.py); 0.1 helps there.
  c.adversarial.epsilon = 0.1
  c.adversarial.alpha = 0.03  # pgd: the size of each ascent step
  c.adversarial.steps = 3  # pgd: ascent steps

  # Differentially private fine-tuning (training/privacy.py): each optimizer step trains on a
  # Poisson sample of the train split (each example with probability batch_size / N, the
  # sample cut to a random subset of a capacity where it overflows), each example's gradient
  # clipped to l2_norm_clip, Gaussian noise of noise_multiplier * l2_norm_clip added once to
  # the sum. Epsilon at `delta` (0: 1 / (2N)) comes from dp-accounting's PLD accountant for
  # that sampling; target_epsilon > 0 solves for the noise_multiplier instead.
  c.privacy = ml_collections.ConfigDict()
  c.privacy.method = "none"  # none or dp_sgd
  c.privacy.noise_multiplier = 1.0
  c.privacy.l2_norm_clip = 1.0
  # > 0: the head (every weight outside the encoder) clipped to this and the encoder to
  # sqrt(l2_norm_clip^2 - head_l2_norm_clip^2), apart; the same noise and epsilon.
  c.privacy.head_l2_norm_clip = 0.0
  c.privacy.delta = 0.0
  c.privacy.target_epsilon = 0.0
  # How per-example gradients are computed: a while_loop over the examples in the graph
  # (default: on CPU the faster, one example's gradient in memory at a time) or vectorized
  # (tape.jacobian with pfor: every example's gradient at once).
  c.privacy.per_example = "while_loop"

  c.distribution = ml_collections.ConfigDict()
  c.distribution.strategy = "default"
  c.distribution.num_cpu_devices = 0  # > 1 splits the CPU into logical devices (tests, benches)
  c.distribution.tpu = ""  # "local", a TPU name or a grpc:// address
  # multi_worker: how long a worker waits for every other of TF_CONFIG's cluster to answer
  # before it stops naming the missing ones (rendezvous.py); 0: no limit.
  c.distribution.cluster_wait_seconds = 900.0
  return c


def load_module(path):
  """A config file (or configs/common.py) as a module, loaded by its path."""
  import importlib.util
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"{path}: config file not found")
  spec = importlib.util.spec_from_file_location(f"tf_finetune_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def common():
  """configs/common.py: the config pieces several configs, tests and tools share."""
  return load_module(REPO_DIR / "configs" / "common.py")


def override(config, overrides):
  """Sets {"train.steps": 10, ...} on a ConfigDict and validates it: the one way to change a
  config in code, as `--config.train.steps=10` does on the command line."""
  for key, value in (overrides or {}).items():
    section, _, name = key.partition(".")
    if section not in config or name not in config[section]:
      raise ConfigError(f"config.{key}: unknown config key; see tf_finetune/config.py")
    try:
      config[section][name] = value
    except TypeError as e:
      raise ConfigError(f"config.{key}={value!r}: {e}") from None
  return validate(config)


def load(path, overrides=None):
  """A config file's get_config() with overrides such as {"train.steps": 10}, validated:
  what `--config=FILE --config.train.steps=10` gives, for notebooks, scripts and tools."""
  config = load_module(path).get_config()
  check_known_keys(config, path)
  return override(config, overrides)


def resolved_best_metric(config):
  if config.train.best_metric != "auto":
    return config.train.best_metric
  return TASK_METRICS[config.task.name][0]


def packing_refusal(config, training=True):
  """Why data.packing does not apply to this run's training (or evaluation) ("" when it
  does)."""
  if not config.data.packing:
    return "data.packing=False"
  for condition, reason in [
      (uses_static_shapes(config), "static shapes (TPU or data.static_shapes)"),
      (training and bool(config.distill.teacher_workdir),
       "distillation (the teacher reads unpacked rows)"),
      (training and config.adversarial.method != "none", "adversarial training"),
      (config.peft.method == "adapter", "peft.method='adapter'"),
      (training and config.privacy.method != "none",
       "privacy.method (each example's gradient is its own)")]:
    if condition:
      return reason
  return ""


def total_steps(config, num_examples):
  """Optimizer steps of a run: train.steps, or train.epochs over num_examples."""
  t = config.train
  return t.steps or max(1, round(t.epochs * max(1, num_examples // t.batch_size)))


def uses_static_shapes(config):
  return config.data.static_shapes or config.distribution.strategy == "tpu"


def flatten(d, prefix=""):
  """{"train": {"steps": 3}} -> {"train.steps": 3}, for a config as a plain dict."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _check(condition, key, value, requirement):
  if not condition:
    raise ConfigError(f"config.{key}={value!r}: {requirement}")


def _check_choice(config, key, choices):
  section, name = key.split(".")
  value = config[section][name]
  _check(value in choices, key, value, f"must be one of {', '.join(choices)}")


def _refuse_switched_on(config, switches, reason):
  """Raises for the first (on, "section.key", why) that is on: the key, its value, the
  reason and, when given, why."""
  for on, key, why in switches:
    section, name = key.split(".")
    _check(not on, key, config[section][name], f"{reason}: {why}" if why else reason)


def check_known_keys(config, path=None):
  """Raises ConfigError for a value that is no ConfigDict, or a section or key base_config()
  lacks: a ConfigDict takes a misspelt key (`c.train.learnig_rate = 1e-5`) as a new one that
  nothing reads, and the run would train with the default it was meant to replace. `path`:
  the config file, whose first line naming the key the message gives."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path or 'the config'}: get_config() returned "
                      f"{type(config).__name__}, not an ml_collections.ConfigDict (as "
                      "configs/default.py returns)")
  known = base_config()
  for section, values in config.items():
    if section not in known or not isinstance(values, ml_collections.ConfigDict):
      _refuse_unknown(section, section, list(known), "section", path)
    for name in values:
      if name not in known[section]:
        _refuse_unknown(f"{section}.{name}", name, list(known[section]), "key", path)


def _refuse_unknown(key, name, known_names, what, path):
  where = f"{path}: " if path else ""
  if path:
    lines = pathlib.Path(path).read_text(errors="replace").splitlines()
    line = next((i for i, text in enumerate(lines, 1)
                 if re.search(rf"\b{re.escape(name)}\b", text)), None)
    where = f"{path}:{line}: " if line else where
  close = difflib.get_close_matches(name, known_names, n=1)
  prefix = key[:-len(name)]
  hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
  raise ConfigError(f"{where}config.{key}: unknown config {what}{hint}; see "
                    "tf_finetune/config.py for the keys")


def validate(config, files=True):
  """Raises ConfigError on the first bad value. files=False leaves out the checks that the
  folders it names exist (a finished run's data may have moved since)."""
  check_known_keys(config)
  for key, value in flatten(config.to_dict()).items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"config.{key}={value!r}: must be a finite number")
  for key, choices in (("data.source", SOURCES), ("distribution.strategy", STRATEGIES),
                       ("train.precision", PRECISIONS), ("model.pooling", POOLINGS),
                       ("task.name", TASKS), ("task.class_weights", CLASS_WEIGHTS),
                       ("peft.method", PEFT_METHODS), ("data.tag_scheme", TAG_SCHEMES)):
    _check_choice(config, key, choices)
  _check(config.train.best_metric in ("auto",) + TASK_METRICS[config.task.name],
         "train.best_metric", config.train.best_metric,
         f"must be auto or one of {', '.join(TASK_METRICS[config.task.name])} for "
         f"task.name={config.task.name!r}")
  _check(config.task.class_weights == "none" or config.task.name == "classification",
         "task.class_weights", config.task.class_weights, "applies to task.name='classification'")
  t, d = config.train, config.data
  _check(t.batch_size > 0, "train.batch_size", t.batch_size, "must be > 0")
  _check(t.grad_accum_steps >= 1, "train.grad_accum_steps", t.grad_accum_steps, "must be >= 1")
  _check(t.batch_size % t.grad_accum_steps == 0, "train.batch_size", t.batch_size,
         f"must be divisible by train.grad_accum_steps={t.grad_accum_steps}")
  _check(0 < t.layer_decay <= 1, "train.layer_decay", t.layer_decay, "must be in (0, 1]")
  _check(t.head_learning_rate >= 0, "train.head_learning_rate", t.head_learning_rate,
         "must be >= 0 (0: train.learning_rate)")
  _check(t.skip_nonfinite_steps >= 0, "train.skip_nonfinite_steps", t.skip_nonfinite_steps,
         "must be >= 0 (0: stop at the first non-finite step)")
  _check(t.divergence_rollbacks >= 0, "train.divergence_rollbacks", t.divergence_rollbacks,
         "must be >= 0 (0: stop when the run diverges)")
  _check(t.divergence_loss_ratio == 0 or t.divergence_loss_ratio > 1,
         "train.divergence_loss_ratio", t.divergence_loss_ratio, "must be 0 (no check) or above 1")
  _check(t.early_stopping_patience >= 0, "train.early_stopping_patience",
         t.early_stopping_patience, "must be >= 0 (0: off)")
  _check(0 <= config.task.label_smoothing < 1, "task.label_smoothing",
         config.task.label_smoothing, "must be in [0, 1)")
  _check(config.task.label_smoothing == 0 or config.task.name == "classification",
         "task.label_smoothing", config.task.label_smoothing,
         "applies to task.name='classification'")
  _check(config.task.loss_average in ("sentence", "token"), "task.loss_average",
         config.task.loss_average, "must be sentence or token")
  _check(t.eval_batch_size > 0, "train.eval_batch_size", t.eval_batch_size, "must be > 0")
  _check(t.steps >= 0, "train.steps", t.steps, "must be >= 0 (0: use train.epochs)")
  _check(t.steps > 0 or t.epochs > 0, "train.epochs", t.epochs, "must be > 0 when train.steps is 0")
  _check(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "must be > 0")
  _check(0 <= t.warmup_fraction < 1, "train.warmup_fraction", t.warmup_fraction, "must be in [0, 1)")
  _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
  _check(t.max_grad_norm >= 0, "train.max_grad_norm", t.max_grad_norm, "must be >= 0")
  _check(t.log_every > 0, "train.log_every", t.log_every, "must be > 0")
  _check(t.eval_every >= 0, "train.eval_every", t.eval_every, "must be >= 0 (0: once per epoch)")
  _check(t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every,
         "must be >= 0 (0: at every evaluation)")
  _check(t.adam_epsilon > 0, "train.adam_epsilon", t.adam_epsilon, "must be > 0")
  for key, seed in (("train.seed", t.seed), ("data.split_seed", d.split_seed)):
    _check(0 <= seed < 2**32, key, seed, "must be in [0, 2**32 - 1]")
  _check(d.max_train_examples >= 0, "data.max_train_examples", d.max_train_examples,
         "must be >= 0 (0: all)")
  _check(d.shuffle_buffer >= 0, "data.shuffle_buffer", d.shuffle_buffer,
         "must be >= 0 (0: no shuffling)")
  _check(config.distribution.num_cpu_devices >= 0, "distribution.num_cpu_devices",
         config.distribution.num_cpu_devices, "must be >= 0")
  _check(config.distribution.cluster_wait_seconds >= 0, "distribution.cluster_wait_seconds",
         config.distribution.cluster_wait_seconds, "must be >= 0 (0: no limit)")
  _check(t.keep_checkpoints > 0, "train.keep_checkpoints", t.keep_checkpoints, "must be > 0")
  for split in t.eval_splits.split(","):
    _check(split in ("dev", "test"), "train.eval_splits", t.eval_splits, "lists dev and/or test")
  _check(len(d.delimiter) <= 1 and d.delimiter not in ('"', "\r", "\n"), "data.delimiter",
         d.delimiter, "must be one character other than a quote or a line break (empty: tab "
         "for tsv, comma for csv)")
  _check(d.bad_text in ("error", "skip"), "data.bad_text", d.bad_text, "must be error or skip")
  _check(d.tag_scheme == "iob2" or d.source == "conll", "data.tag_scheme", d.tag_scheme,
         f"reads tags, which data.source={d.source!r} has none of (it is for conll)")
  if d.source in ("tsv", "csv", "jsonl", "tfds"):  # the sources that read named columns
    columns = [("data.text_column", d.text_column), ("data.label_column", d.label_column)]
    columns += [("data.text_pair_column", d.text_pair_column)] if d.text_pair_column else []
    for i, (key, column) in enumerate(columns):
      for other_key, other in columns[:i]:
        _check(column != other, key, column, f"is also {other_key}: one column would be read "
               "as both (a label read as the text is learnt from the text)")
  # Before the keys bounded by it (data.window_stride).
  _check(8 <= d.max_seq_length <= 512, "data.max_seq_length", d.max_seq_length, "must be in [8, 512]")
  _check_choice(config, "data.long_text", LONG_TEXT)
  _check(config.task.window_pooling in ("mean", "max"), "task.window_pooling",
         config.task.window_pooling, "must be mean or max")
  _check(0 <= d.window_stride <= d.max_seq_length - 2, "data.window_stride", d.window_stride,
         f"must be in [0, data.max_seq_length - 2 = {d.max_seq_length - 2}] (0: half a window)")
  _check(d.max_windows >= 0, "data.max_windows", d.max_windows, "must be >= 0 (0: no cap)")
  if d.long_text != "truncate":
    _check(not d.text_pair_column, "data.long_text", d.long_text,
           "applies to single texts; sentence pairs are truncated round-robin")
    _check(d.long_text == "windows" or config.task.name != "tagging", "data.long_text",
           d.long_text, "for task.name='tagging' is truncate or windows (head_tail would "
           "leave the middle words without a prediction)")
  _check(d.augment in ("none", "eda"), "data.augment", d.augment, "must be none or eda")
  _check(d.augment == "none" or config.task.name != "tagging", "data.augment", d.augment,
         "does not apply to task.name='tagging' (the tags belong to the words)")
  _check(0 < d.augment_probability < 1, "data.augment_probability", d.augment_probability,
         "must be in (0, 1)")
  _check(0 < d.dev_fraction < 1, "data.dev_fraction", d.dev_fraction, "must be in (0, 1)")
  _check(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "must be in (0, 1)")
  if config.task.name == "multilabel":
    _check(d.multilabel_separator, "data.multilabel_separator", d.multilabel_separator,
           "is required for task.name='multilabel'")
  _check((d.source == "conll") == (config.task.name == "tagging"), "data.source", d.source,
         "task.name='tagging' reads data.source='conll' (word and tag per line), and only it")
  if d.source in ("tsv", "csv", "jsonl", "label_first", "conll"):
    _check(d.dir, "data.dir", d.dir, f"is required for data.source={d.source!r}")
    _check(d.train_file, "data.train_file", d.train_file, "is required for file sources")
    _check(not files or pathlib.Path(d.dir).expanduser().is_dir(), "data.dir", d.dir,
           "is not a directory")
  if d.source == "tfds":
    _check(d.tfds_name, "data.tfds_name", d.tfds_name, "is required for data.source='tfds'")
  if config.distribution.strategy == "tpu":
    _check(config.distribution.tpu, "distribution.tpu", "", "names the TPU ('local', a name or grpc://)")
  ds = config.distill
  if ds.teacher_workdir:
    _check(config.task.name == "classification", "distill.teacher_workdir", ds.teacher_workdir,
           "applies to task.name='classification'")
    _check(not files or (pathlib.Path(ds.teacher_workdir).expanduser() / "checkpoints" /
                         "best.json").is_file(), "distill.teacher_workdir", ds.teacher_workdir,
           "is not a tf_finetune run directory with a best checkpoint")
  _check(not ds.student_layers or ds.teacher_workdir, "distill.student_layers",
         ds.student_layers, "needs distill.teacher_workdir")
  _check(all(x.strip().isdigit() for x in ds.student_layers.split(",")) or not
         ds.student_layers, "distill.student_layers", ds.student_layers,
         "lists teacher layer indices, e.g. 0,2,4")
  _check(ds.temperature > 0, "distill.temperature", ds.temperature, "must be > 0")
  _check(0 <= ds.alpha <= 1, "distill.alpha", ds.alpha, "must be in [0, 1]")
  a = config.adversarial
  _check(a.method in ("none", "fgm", "pgd"), "adversarial.method", a.method,
         "must be none, fgm or pgd")
  _check(a.epsilon > 0, "adversarial.epsilon", a.epsilon, "must be > 0")
  _check(a.alpha > 0, "adversarial.alpha", a.alpha, "must be > 0")
  _check(a.steps >= 1, "adversarial.steps", a.steps, "must be >= 1")
  _check(d.examples_per_class >= 0, "data.examples_per_class", d.examples_per_class,
         "must be >= 0 (0: every train example)")
  _check(not d.examples_per_class or config.task.name in SINGLE_LABEL,
         "data.examples_per_class", d.examples_per_class,
         f"applies to one label per example ({', '.join(SINGLE_LABEL)})")
  _check(config.task.similarity_scale > 0, "task.similarity_scale",
         config.task.similarity_scale, "must be > 0")
  if config.task.name == "zero_shot":
    _refuse_switched_on(config, [
        (config.peft.method != "none", "peft.method", ""),
        (a.method != "none", "adversarial.method", ""),
        (config.privacy.method != "none", "privacy.method", ""),
        (bool(config.distill.teacher_workdir), "distill.teacher_workdir", ""),
        (d.augment != "none", "data.augment", "")],
        "does not apply to task.name='zero_shot', which trains nothing")
  if config.task.name == "setfit":
    _check(config.task.head_c > 0, "task.head_c", config.task.head_c,
           "must be > 0 (the inverse of the head's L2 penalty)")
    _check(0 < config.task.wise_ft_alpha <= 1, "task.wise_ft_alpha",
           config.task.wise_ft_alpha, "must be in (0, 1] (the trained weights' share; 1: "
           "the trained encoder alone)")
    _check(config.task.pairs_per_example >= 2 and config.task.pairs_per_example % 2 == 0,
           "task.pairs_per_example", config.task.pairs_per_example,
           "must be even and >= 2 (half of them of the example's own label)")
    _refuse_switched_on(config, [
        (a.method != "none", "adversarial.method", "its pairs' loss reads two texts"),
        (config.privacy.method != "none", "privacy.method", "not built for pairs"),
        (bool(config.distill.teacher_workdir), "distill.teacher_workdir",
         "the teacher has no pair loss"),
        (d.augment != "none", "data.augment", "pairs are drawn once from the texts"),
        (d.long_text == "windows", "data.long_text",
         "a text is one embedding (truncate or head_tail)")],
        "does not apply to task.name='setfit'")
  pr = config.privacy
  _check(pr.method in ("none", "dp_sgd"), "privacy.method", pr.method, "must be none or dp_sgd")
  _check(pr.noise_multiplier >= 0, "privacy.noise_multiplier", pr.noise_multiplier, "must be >= 0")
  _check(pr.l2_norm_clip > 0, "privacy.l2_norm_clip", pr.l2_norm_clip, "must be > 0")
  _check(0 <= pr.head_l2_norm_clip < pr.l2_norm_clip, "privacy.head_l2_norm_clip",
         pr.head_l2_norm_clip, f"must be in [0, privacy.l2_norm_clip={pr.l2_norm_clip:g}) "
         "(0: one clip for the whole gradient)")
  _check(not pr.head_l2_norm_clip or pr.method == "dp_sgd", "privacy.head_l2_norm_clip",
         pr.head_l2_norm_clip, "applies to privacy.method='dp_sgd'")
  _check(0 <= pr.delta < 1, "privacy.delta", pr.delta, "must be in [0, 1) (0: 1 / (2N))")
  _check(pr.target_epsilon >= 0, "privacy.target_epsilon", pr.target_epsilon,
         "must be >= 0 (0: use privacy.noise_multiplier)")
  _check(pr.per_example in ("while_loop", "vectorized"), "privacy.per_example", pr.per_example,
         "must be while_loop or vectorized")
  if pr.method == "dp_sgd":
    for condition, what in [
        (a.method != "none", "adversarial training (its perturbation reads the whole batch)"),
        (bool(ds.teacher_workdir), "distillation (the teacher would need its own guarantee)"),
        (d.long_text == "windows", "data.long_text='windows' (a document would be several "
         "examples, so the guarantee would cover a window, not a document)"),
        (uses_static_shapes(config), "static shapes (TPU or data.static_shapes: the "
         "per-example loop reads each example at its own length)"),
        (t.divergence_rollbacks > 0, "train.divergence_rollbacks (the steps a rollback undoes "
         "saw the data too, and whether to roll back depends on it: the accounting would "
         "miss them)")]:
      _check(not condition, "privacy.method", pr.method, f"cannot be made private with {what}")
  p = config.peft
  _check(p.freeze_layers >= 0, "peft.freeze_layers", p.freeze_layers, "must be >= 0")
  _check(p.freeze_layers == 0 or p.method == "freeze", "peft.freeze_layers", p.freeze_layers,
         "applies to peft.method='freeze'")
  _check(p.lora_rank > 0, "peft.lora_rank", p.lora_rank, "must be > 0")
  _check(p.adapter_size > 0, "peft.adapter_size", p.adapter_size, "must be > 0")
  _check(p.lora_alpha > 0, "peft.lora_alpha", p.lora_alpha, "must be > 0")
  m = config.model
  for key in ("num_layers", "hidden_dim", "num_heads", "intermediate_dim"):
    _check(m[key] >= 0, f"model.{key}", m[key], "must be >= 0")
    _check(m.random_init or m[key] == 0, f"model.{key}", m[key],
           "only applies with model.random_init=True (a pretrained checkpoint fixes the architecture)")
  _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "must be in [0, 1)")
  if m.hidden_dim and m.num_heads:
    _check(m.hidden_dim % m.num_heads == 0, "model.hidden_dim", m.hidden_dim,
           f"must be divisible by model.num_heads={m.num_heads}")
  return config
