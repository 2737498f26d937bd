"""Shared fixtures: a tiny random-weight BERT config on small data written here."""
import pathlib
import random

import tf_finetune  # noqa: F401,E402  (Keras backend and TensorFlow's log level first)
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices for the whole session, so MirroredStrategy tests have two
# replicas; this must happen before anything initializes TensorFlow's devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from tf_finetune import config as config_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = config_lib.shared_data_dir()

POSITIVE = ["a wonderful, moving film", "great acting and a clever plot", "i loved every minute",
            "charming and funny", "a delight from start to finish", "superb direction"]
NEGATIVE = ["a dull, tedious mess", "the plot makes no sense", "i wanted my money back",
            "boring and far too long", "badly acted throughout", "a waste of a good cast"]


def requires_shared(*parts):
  """Skips unless ../shared/data/<parts> exists (CI and development machines only)."""
  path = SHARED.joinpath(*parts) if SHARED else None
  return pytest.mark.skipif(path is None or not path.exists(),
                            reason=f"../shared/data/{'/'.join(parts)} is absent on this machine")


def write_sentiment_tsv(directory, n_train=48, n_dev=16, seed=0, max_repeats=1):
  """Small two-label TSV data set made of fixed phrases, with a header; each text is its
  phrase said 1 to max_repeats times (for examples of several lengths)."""
  rng = random.Random(seed)
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
    lines = ["sentence\tlabel"]
    for i in range(n):
      label = i % 2
      words = " and ".join([rng.choice(POSITIVE if label else NEGATIVE)] *
                           rng.randint(1, max_repeats))
      lines.append(f"{words} {rng.choice(['.', '!', ', really .'])}\t{label}")
    (directory / name).write_text("\n".join(lines) + "\n")
  return directory


def write_pair_tsv(directory, verbs):
  """Sentence pairs "the film <verb> long" / "it is (not) long", labelled by "not", 24 in
  train.tsv and the first 8 again in dev.tsv; columns premise, hypothesis, label."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True)
  rows = ["premise\thypothesis\tlabel"] + [
      f"the film {w} long\tit {'is' if i % 2 else 'is not'} long\t{i % 2}"
      for i, w in enumerate(list(verbs) * (24 // len(verbs)))]
  (directory / "train.tsv").write_text("\n".join(rows) + "\n")
  (directory / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")
  return directory


_TINY_CHECKPOINT = []


def tiny_checkpoint_dir():
  """An HF-format directory (config.json + vocab.txt, no weights) of a 2-layer, hidden-32
  BERT with a tiny vocabulary: the special tokens, every ASCII letter, digit and
  punctuation mark alone and as a ## continuation, and the words of the tests' own data
  (keras-hub's tests use vocabularies of about ten tokens). Written once per process; no
  checkpoint package needed."""
  if not _TINY_CHECKPOINT:
    import json
    import string
    import tempfile
    words = set()
    for phrase in POSITIVE + NEGATIVE:
      words.update(phrase.replace(",", " ").split())
    for path in config_lib.EXAMPLES_DIR.glob("*.conll"):
      words.update(line.split()[0].lower() for line in path.read_text().splitlines()
                   if line.strip() and line.split()[0].isalpha() and line.split()[0].isascii())
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocabulary = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars +
                  [f"##{c}" for c in chars] + sorted(words - set(chars)))
    directory = pathlib.Path(tempfile.mkdtemp(prefix="tiny_bert_"))
    (directory / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    (directory / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(vocabulary), "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu"}))
    _TINY_CHECKPOINT.append(directory)
  return _TINY_CHECKPOINT[0]


def tiny_model_config():
  """configs/smoke.py's model (2 layers, hidden 32) with the tiny vocabulary, dropout off
  and float32 (not `auto`, which is bfloat16 on some machines) for exact comparisons."""
  c = config_lib.common().tiny_model(config_lib.base_config(), tiny_checkpoint_dir())
  c.model.dropout = 0.0
  c.train.precision = "float32"
  return c


def override(c, keys):
  """Keyword arguments {"train__steps": 3} (Python names cannot hold a dot) through
  config_lib.override({"train.steps": 3}), the one override idiom; validates."""
  return config_lib.override(c, {k.replace("__", "."): v for k, v in keys.items()})


def tiny_config(data_dir, **train):
  """The tiny model on a TSV folder of two-label sentences."""
  c = tiny_model_config()
  c.data.source = "tsv"
  c.data.dir = str(data_dir)
  c.data.train_file, c.data.dev_file = "train.tsv", "dev.tsv"
  c.data.text_column = "sentence"
  c.data.max_seq_length = 32
  c.train.steps, c.train.batch_size, c.train.learning_rate = 6, 8, 1e-3
  c.train.eval_every, c.train.log_every = 3, 1
  c.train.eval_splits = "dev"
  return override(c, train)


@pytest.fixture
def sentiment_dir(tmp_path):
  return write_sentiment_tsv(tmp_path / "data")


def check_run_directory(run, last_step):
  """The run-directory contract (README.md, "The run directory") after a finished run:
  exactly the documented entries, one TensorBoard writer each for train and eval."""
  assert sorted(p.name for p in run.iterdir()) == [
      "checkpoints", "config.json", "data_digest.json", "eval", "labels.json", "model_digest.json",
      "tensorboard"]
  for name in ("checkpoints/best.json", f"checkpoints/ckpt-{last_step}.index",
               "eval/report.json", "eval/report.txt", "eval/confusion_matrix.png",
               "eval/predictions.tsv"):
    assert (run / name).is_file(), name
  for sub in ("train", "eval"):
    assert len(list((run / "tensorboard" / sub).glob("events.out.tfevents.*"))) == 1, sub
  assert not list(run.rglob(".*.tmp-*")), "a temporary file was left behind"


def dev_logits(workdir, checkpoint="best"):
  """(dev Split, its label values, logits of `checkpoint`, label names) of a run, computed
  the way the evaluator does."""
  from tf_finetune import experiment
  run = experiment.load_run(workdir, checkpoint)
  splits, _ = experiment.load_data(run.config, run.labels)
  values, logits = experiment.evaluate_split(run.task, run.model, splits["dev"], batch_size=64)
  return splits["dev"], values, logits, run.labels.labels


def assert_no_texts_give_no_rows(signature, **other_inputs):
  """A request of no texts (every string input of `signature` empty unless given) gets
  outputs of no rows, not an error."""
  inputs = {name: tf.constant([], tf.string) for name in signature.structured_input_signature[1]}
  out = signature(**{**inputs, **other_inputs})
  assert out and all(value.shape[0] == 0 for value in out.values()), {
      name: value.shape for name, value in out.items()}
