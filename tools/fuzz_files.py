"""Damage the files tf_finetune reads at random and check that each read either works or stops
with tf_finetune's one-line error (a UserError), never another exception (a traceback).

  python tools/fuzz_files.py                          # all four, 3,000 / 3,000 / 200 / 300
  python tools/fuzz_files.py --targets=data --iterations=20000 --seed=1
  python tools/fuzz_files.py --targets=run --iterations=300

Targets:
  data        a small TSV, CSV, JSONL, label-first and CoNLL file, each mutated at the byte
              level (1-4 insertions, deletions or replacements from bytes that matter to the
              formats: delimiters, quotes, line breaks, NUL, invalid UTF-8, a byte-order
              mark, U+2028, "NaN", "B-" ...), read by the readers of data/sources.py and
              screened as training screens texts
  checkpoint  the tiny test checkpoints of every family (tests/fixtures/tiny_checkpoints):
              config.json, tokenizer.json or tokenizer_config.json with one field replaced
              by a value of another type, or deleted; read by checkpoints.read_hf_config and
              read_tokenizer_spec (what training, evaluation and export read first)
  run         a finished tiny run (trained here, 12 steps): its config.json, labels.json,
              checkpoints/best.json, data_digest.json or model_digest.json changed the same
              way, or one of its checkpoints' files (TensorFlow's `checkpoint` state files, ckpt-N.index and
              .data, of the training and the best checkpoints) damaged byte by byte or cut
              short; loaded as evaluate and export load it (experiment.load_run) and as a
              resume does (training.Trainer)
  export      that run's SavedModel (tf_finetune.export): one of its files (saved_model.pb,
              fingerprint.pb, variables/, assets.extra/) damaged at the byte level or cut
              short, loaded and asked for two predictions as `tf_finetune.predict` does
Prints, per target, the mutations tried, how many read and how many were refused (in all,
then by the damaged file: what still reads is damage no reader checks, or none that
matters), and each kind of other exception once with the damaged file's start and its
traceback; exits 1 when there is any. A crash of the process itself (a segmentation fault
in TensorFlow's C++ code) ends the tool at once: the damaged copy is then the runN or
exportN folder left in its scratch folder (/tmp/fuzz_TARGET_*). A mutation fuzzer written
here: the file formats are tf_finetune's readers' (hypothesis and atheris fuzz Python values
or coverage, not these files' damage).
"""
import collections
import copy
import json
import os
import pathlib
import random
import shutil
import sys
import tempfile
import traceback

from absl import app
from absl import flags
from absl import logging

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGETS = ("data", "checkpoint", "run", "export")
_TARGETS = flags.DEFINE_list("targets", list(TARGETS), f"Of {', '.join(TARGETS)}.")
DEFAULT_ITERATIONS = {"data": 3000, "checkpoint": 3000, "run": 200, "export": 300}
_ITERATIONS = flags.DEFINE_list("iterations", None,
                                "Mutations per target, in --targets order, or one for all "
                                f"(default: {DEFAULT_ITERATIONS}).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the mutations.")

DATA_FILES = {
    "tsv": b"sentence\tlabel\na fine film\t1\na dull mess\t0\nquite good\t1\n",
    "csv": b'text,label\n"a fine, film",pos\nbad,neg\n"quote ""x""",pos\n',
    "jsonl": b'{"text": "a fine film", "label": "pos"}\n{"text": "bad", "label": "neg"}\n',
    "label_first": b"DESC:manner How did serfdom develop ?\nENTY:cremat What films featured ?\n",
    "conll": b"Paris B-loc\nis O\n\nJohn B-person\nran O\n",
}
BYTES = [b"\t", b",", b"\n", b"\r", b'"', b"{", b"}", b":", b"\x00", b"\xff", b"\xef\xbb\xbf",
         b" ", b"\\", b"\xe2\x80\xa8", b"\x85", b"a", b"1", b"-", b"B-", b"I-", b"NaN", b"[", b"]"]
VALUES = [None, 0, -1, 1.5, "", "x", [], {}, True, [1, 2], {"a": 1}, 10**12, "[UNK]", "ckpt-6",
          "ckpt-99", float("nan")]


class Tally:
  """Mutations tried, read and refused (in all and by the damaged file's name), and one
  example of each other exception."""

  def __init__(self, target):
    self.target = target
    self.by_file = collections.defaultdict(collections.Counter)  # name -> {outcome: count}
    self.others = collections.Counter()
    self.examples = {}

  def attempt(self, read, damaged_file, name):
    """Runs read() on a copy whose file `name` (its name within the copy) is damaged."""
    from tf_finetune.errors import UserError
    try:
      read()
      self.by_file[name]["read"] += 1
    except UserError:
      self.by_file[name]["refused"] += 1
    except BaseException as e:  # noqa: BLE001 (what the fuzzer looks for)
      if isinstance(e, KeyboardInterrupt):
        raise
      frame = traceback.extract_tb(e.__traceback__)[-1]
      kind = (type(e).__name__, pathlib.Path(frame.filename).name, frame.lineno)
      self.others[kind] += 1
      self.by_file[name]["other"] += 1
      self.examples.setdefault(kind, (damaged_file, pathlib.Path(damaged_file).read_bytes(),
                                      traceback.format_exc()[-1500:]))

  def report(self):
    total = sum(self.by_file.values(), collections.Counter())
    print(f"{self.target}: {total.total()} mutations: {total['read']} read, {total['refused']} "
          f"refused in one line, {total['other']} other exceptions", flush=True)
    print("  by damaged file (read / refused / other): " + ", ".join(
        f"{name} {c['read']}/{c['refused']}/{c['other']}"
        for name, c in sorted(self.by_file.items())), flush=True)
    for kind, count in self.others.most_common():
      name, file, line = kind
      damaged_file, content, trace = self.examples[kind]
      print(f"  {count} x {name} at {file}:{line}; the first on {damaged_file}:\n"
            f"    {content[:300]!r}\n{trace}")
    return not self.others


def mutate_bytes(data, rng):
  data = bytearray(data)
  for _ in range(rng.randint(1, 4)):
    position, draw = rng.randint(0, len(data)), rng.random()
    if draw < 0.4:
      data[position:position] = rng.choice(BYTES)
    elif draw < 0.7 and len(data) > 1:
      del data[position:position + rng.randint(1, 3)]
    else:
      data[position:position + 1] = rng.choice(BYTES)
  return bytes(data)


def damage_bytes(content, rng):
  """mutate_bytes(content), or, one time in five, `content` cut short."""
  return mutate_bytes(content, rng) if rng.random() < 0.8 else \
      content[:rng.randint(0, len(content))]


def mutate_json(value, rng):
  """`value` with one field (at any depth) replaced by a value of VALUES, deleted, or, in a
  list, one appended; now and then the whole value replaced."""
  value = copy.deepcopy(value)

  def paths(node, prefix=()):
    if prefix:
      yield prefix
    if isinstance(node, dict):
      for key, child in node.items():
        yield from paths(child, prefix + (key,))
    elif isinstance(node, list):
      for i, child in enumerate(node[:5]):
        yield from paths(child, prefix + (i,))
  found = list(paths(value))
  if not found or rng.random() < 0.05:
    return rng.choice(VALUES)
  path = rng.choice(found)
  parent = value
  for key in path[:-1]:
    parent = parent[key]
  draw = rng.random()
  if draw < 0.3 and isinstance(parent, dict):
    del parent[path[-1]]
  elif draw < 0.4 and isinstance(parent, list):
    parent.append(rng.choice(VALUES))
  else:
    parent[path[-1]] = rng.choice(VALUES)
  return value


def fuzz_data(iterations, rng, scratch):
  from tf_finetune.data import sources
  readers = {
      "tsv": lambda p: sources.read_delimited(p, delimiter="\t", text_column="sentence",
                                              label_column="label"),
      "csv": lambda p: sources.read_delimited(p, delimiter=",", text_column="text",
                                              label_column="label"),
      "jsonl": lambda p: sources.read_jsonl(p, text_column="text", label_column="label"),
      "label_first": lambda p: sources.read_label_first(p, coarse_label_separator=":"),
      "conll": sources.read_conll}
  tally = Tally("data")
  for _ in range(iterations):
    kind = rng.choice(list(DATA_FILES))
    path = scratch / f"damaged.{kind}"
    path.write_bytes(mutate_bytes(DATA_FILES[kind], rng))

    def read(kind=kind, path=path):
      split = readers[kind](str(path))
      if isinstance(split, sources.Split):
        sources.screen_texts(split, "error")
    tally.attempt(read, path, kind)
  return tally


def fuzz_checkpoint(iterations, rng, scratch):
  from tf_finetune import checkpoints
  families = sorted(p for p in (REPO / "tests" / "fixtures" / "tiny_checkpoints").iterdir()
                    if p.is_dir())
  tally = Tally("checkpoint")
  for _ in range(iterations):
    family = rng.choice(families)
    directory = scratch / family.name
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(family, directory)
    name = rng.choice([n for n in ("config.json", "tokenizer.json", "tokenizer_config.json")
                       if (directory / n).is_file()])
    (directory / name).write_text(json.dumps(
        mutate_json(json.loads((directory / name).read_text()), rng)))
    tally.attempt(lambda d=directory: (checkpoints.read_hf_config(d),
                                       checkpoints.read_tokenizer_spec(d)), directory / name, name)
  return tally


def _finished_run(scratch):
  """A tiny run trained here (12 steps of the smoke config on a TSV written here); returns
  its directory and its config as saved."""
  from tf_finetune import config as config_lib
  from tf_finetune.training import trainer as trainer_lib
  data = scratch / "data"
  data.mkdir()
  for name, n in (("train.tsv", 48), ("dev.tsv", 16)):
    (data / name).write_text("sentence\tlabel\n" + "".join(
        f"{'a fine film' if i % 2 else 'a dull mess'} {i}\t{i % 2}\n" for i in range(n)))
  config = config_lib.load(str(REPO / "configs" / "smoke.py"), {
      "data.source": "tsv", "data.dir": str(data), "data.train_file": "train.tsv",
      "data.dev_file": "dev.tsv", "data.text_column": "sentence", "data.max_train_examples": 0})
  finished = scratch / "finished"
  trainer_lib.Trainer(config, finished).train()
  return finished, json.loads((finished / "config.json").read_text())


def fuzz_run(iterations, rng, scratch):
  import ml_collections
  from tf_finetune import experiment
  from tf_finetune.training import trainer as trainer_lib
  finished, saved_config = _finished_run(scratch)
  checkpoint_files = sorted(str(p.relative_to(finished)) for p in
                            (finished / "checkpoints").rglob("*")
                            if p.is_file() and p.suffix != ".json")
  tally = Tally("run")
  for i in range(iterations):
    workdir = scratch / f"run{i}"
    shutil.copytree(finished, workdir)
    if rng.random() < 0.7:
      name = rng.choice(["config.json", "labels.json", "checkpoints/best.json",
                         "data_digest.json", "model_digest.json"])
      (workdir / name).write_text(json.dumps(
          mutate_json(json.loads((workdir / name).read_text()), rng)))
    else:
      name = rng.choice(checkpoint_files)
      (workdir / name).write_bytes(damage_bytes((workdir / name).read_bytes(), rng))
    tally.attempt(lambda w=workdir: experiment.load_run(w), workdir / name, name)
    tally.attempt(lambda w=workdir: trainer_lib.Trainer(
        ml_collections.ConfigDict(copy.deepcopy(saved_config)), w).close(), workdir / name,
                  name)
    shutil.rmtree(workdir)
  return tally


def fuzz_export(iterations, rng, scratch):
  from tf_finetune import predict
  from tf_finetune.errors import UserError
  from tf_finetune.export import serving
  export = serving.export_saved_model(_finished_run(scratch)[0])
  files = sorted(p.relative_to(export) for p in export.rglob("*") if p.is_file())
  tally = Tally("export")
  for i in range(iterations):
    damaged = scratch / f"export{i}"
    shutil.copytree(export, damaged)
    name = rng.choice(files)
    path = damaged / name
    path.write_bytes(damage_bytes(path.read_bytes(), rng))

    def read(damaged=damaged):
      try:
        predict.Predictor([str(damaged)])(["a fine film", "a dull mess"])
      except SystemExit as e:  # predict's one-line refusal
        if str(e.code).startswith(f"error: {damaged}"):
          raise UserError(e.code) from None
        raise
    tally.attempt(read, path, str(name))
    shutil.rmtree(damaged)
  return tally


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.set_verbosity(logging.ERROR)  # the readers' warnings on damaged files
  unknown = sorted(set(_TARGETS.value) - set(TARGETS))
  if unknown:
    raise app.UsageError(f"--targets: {', '.join(unknown)}: not one of {', '.join(TARGETS)}")
  if _ITERATIONS.value is None:
    iterations = [DEFAULT_ITERATIONS[t] for t in _TARGETS.value]
  else:
    iterations = [int(n) for n in _ITERATIONS.value]
    if len(iterations) == 1:
      iterations *= len(_TARGETS.value)
    if len(iterations) != len(_TARGETS.value):
      raise app.UsageError(f"--iterations: {len(iterations)} counts for "
                           f"{len(_TARGETS.value)} --targets")
  rng = random.Random(_SEED.value)
  fuzzers = {"data": fuzz_data, "checkpoint": fuzz_checkpoint, "run": fuzz_run,
             "export": fuzz_export}
  clean = True
  for target, count in zip(_TARGETS.value, iterations):
    with tempfile.TemporaryDirectory(prefix=f"fuzz_{target}_") as scratch:
      clean &= fuzzers[target](count, rng, pathlib.Path(scratch)).report()
  sys.exit(0 if clean else 1)


if __name__ == "__main__":
  app.run(main)
