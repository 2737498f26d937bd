"""Few-shot and zero-shot on emotion and SST-2: SetFit-style, plain fine-tuning, zero-shot,
and setfit itself (PyTorch), on the same samples, as a table.

  python tools/bench_few_shot.py                                  # everything below
  python tools/bench_few_shot.py --datasets=sst2 --shots=8 --samples=2 --sides=setfit,plain
  python tools/bench_few_shot.py --datasets=emotion --shots=64 --first_sample=3 --samples=2
  python tools/bench_few_shot.py --datasets=trec --sides=setfit,setfit_torch --head_c=1,10
  python tools/bench_few_shot.py --datasets=sst2 --shots=64 --sides=setfit --wise_ft_alpha=0.85

Data: ../shared/data/emotion (6 labels, full 2,000-text val set as dev) and sst2 (full
872-sentence dev set); also trec (6 coarse labels; dev: 10% of the 5,452 questions, drawn
with each sample's data.split_seed, configs/trec.py), which no setting here was chosen on.
For each K in --shots and each sample s (data.split_seed=s, train.seed=s + --reseed), K train
texts per label are drawn once (tf_finetune's per-label sample; the PyTorch side trains on
the very same texts) and every side trains on them:
  setfit        task.name=setfit: 40 pairs per text (SetFit's num_iterations=20),
                CosineSimilarityLoss, batch 16, lr 2e-5, one pass, AdamW's epsilon 1e-8
                (not the configs' 1e-6: setfit trains with the HF Trainer's), then a logistic
                regression head with C=task.head_c (configs' default; setfit's is 1.0) on
                the trained encoder (task.wise_ft_alpha=1.0, the default and setfit's).
                --head_c=C1,C2 / --wise_ft_alpha=A1,A2: also the dev accuracy of heads with
                those C, or of the encoder mixed with those alpha, on the same trained
                encoder (each refitted and evaluated as the run's own evaluation does)
  plain         task.name=classification on the same texts for the same number of optimizer
                steps and batch, lr 1e-4 (the configs' rate for this checkpoint), mean pooling
  setfit_torch  setfit 1.x (PyTorch) with the same body, arguments and texts
                (pip install setfit; skipped with the reason when it does not import)
  zero_shot     task.name=zero_shot, no training (once per dataset): emotion "This text is
                about {label}.", SST-2 "This review is negative." / "... positive.", TREC
                "This question asks for an abbreviation." (a description, an entity, ...)
Every tf_finetune side reads 64 wordpieces; setfit is given max_length=64 too, but uses it
only for end-to-end head training: its body trains and predicts with the checkpoint's own 256
(sentence_bert_config.json). Texts over 64 wordpieces: SST-2 4 of 67,349 train, none of dev;
emotion 25 of 16,000 train, 2 of 2,000 dev. Every side evaluates dev once at the end (no
checkpoint picked on dev) and reports dev accuracy and wall time: the framework's import,
model load, training and the dev evaluation (tf_finetune's sides: what `python -m
tf_finetune.train` does, training and then the report of the best checkpoint,
eval/report.json). Each run is its own process. all-MiniLM-L6-v2, float32 on both sides.
"""
import json
import pathlib
import sys
import tempfile
import time

import benchlib
import numpy as np
from absl import app
from absl import flags

DATASETS = ("emotion", "sst2", "trec")
SIDES = ("setfit", "plain", "setfit_torch", "zero_shot")
DESCRIPTIONS = {
    "sst2": {"0": "This review is negative.", "1": "This review is positive."},
    "trec": {label: f"This question asks for {what}." for label, what in [
        ("ABBR", "an abbreviation"), ("DESC", "a description"), ("ENTY", "an entity"),
        ("HUM", "a person"), ("LOC", "a location"), ("NUM", "a number")]}}
# The SetFit-style side runs configs/setfit.py's recipe on each data set and setfit is given
# the same: pairs per text, batch, learning rate (and AdamW's epsilon, setfit's default).
RECIPE = benchlib.load_config("setfit")
PAIRS_PER_EXAMPLE = RECIPE.task.pairs_per_example
BATCH = RECIPE.train.batch_size

_DATASETS = flags.DEFINE_list("datasets", ["emotion", "sst2"], f"Data sets, of {DATASETS}.")
_SHOTS = flags.DEFINE_list("shots", ["8", "64"], "Train texts per label.")
_SAMPLES = flags.DEFINE_integer("samples", 5, "Samples per K: seeds first_sample.. on.")
_FIRST_SAMPLE = flags.DEFINE_integer(
    "first_sample", 0, "The first sample's seed: a cell too long for one sitting is run in "
    "parts (--first_sample=3 --samples=2 runs samples 3 and 4).")
_SIDES = flags.DEFINE_list("sides", list(SIDES), "Sides to run.")
_HEAD_C = flags.DEFINE_list("head_c", [], "setfit side: also the dev accuracy with heads "
                            "of these C (task.head_c) on the same trained encoder.")
_WISE_FT_ALPHA = flags.DEFINE_list(
    "wise_ft_alpha", [], "setfit side: also the dev accuracy of the trained encoder mixed "
    "with its start weights with these task.wise_ft_alpha (the head refitted on each).")
_RESEED = flags.DEFINE_integer(
    "reseed", 0, "Train with train.seed = sample + this (setfit: its seed), the sample drawn as "
    "always (data.split_seed = sample): how far a side moves with its training randomness "
    "alone, against a run without it.")
_RUN = flags.DEFINE_string("run", None, "Internal: DATASET:SIDE:K:SEED in this process.")


def config_for(dataset, side, shots, seed):
  overrides = {"data.max_seq_length": 64, "train.precision": "float32",
               "train.seed": seed + _RESEED.value, "data.split_seed": seed,
               "train.batch_size": BATCH, "train.eval_splits": "dev"}
  if side == "zero_shot":
    overrides["task.name"] = "zero_shot"
    if dataset in DESCRIPTIONS:
      with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(DESCRIPTIONS[dataset], f)
      overrides["task.label_descriptions"] = f.name
    return benchlib.load_config(dataset, overrides)
  steps = shots * num_labels(dataset) * PAIRS_PER_EXAMPLE // BATCH
  overrides.update({"data.examples_per_class": shots, "train.steps": steps,
                    "train.eval_every": steps, "train.best_metric": "accuracy"})
  if side == "plain":
    overrides.update({"task.name": "classification", "model.pooling": "mean",
                      "train.learning_rate": 1e-4})
  else:
    overrides.update({"task.name": "setfit", "task.pairs_per_example": PAIRS_PER_EXAMPLE,
                      "train.learning_rate": RECIPE.train.learning_rate,
                      "train.adam_epsilon": RECIPE.train.adam_epsilon})
  return benchlib.load_config(dataset, overrides)


def num_labels(dataset):
  return {"emotion": 6, "sst2": 2, "trec": 6}[dataset]


def run_tf(config):
  """What `python -m tf_finetune.train` does: train, then the report of the best checkpoint."""
  workdir = benchlib.scratch_dir("bench_few_shot_")
  start = time.time()
  from tf_finetune import train  # TensorFlow's import is timed, as PyTorch's is
  trainer = train.train_and_evaluate(config, workdir)
  seconds = time.time() - start
  report = json.loads((pathlib.Path(workdir) / "eval" / "report.json").read_text())
  result = {"dev_accuracy": report["splits"]["dev"]["accuracy"], "seconds": seconds,
            "steps": trainer.step}
  if config.task.name == "setfit" and (_HEAD_C.value or _WISE_FT_ALPHA.value):
    result["dev_accuracy_of"] = dev_accuracy_of_variants(
        trainer, [float(c) for c in _HEAD_C.value], [float(a) for a in _WISE_FT_ALPHA.value])
  return result


def dev_accuracy_of_variants(trainer, head_cs, alphas):
  """{variant: dev accuracy} of the run's trained encoder with the head refitted with
  another C ("head C=10") or mixed with its start weights with another task.wise_ft_alpha
  ("alpha=1"), evaluated as the run's evaluations are (after the timed work; the run
  evaluates once, at its last step, so the trainer's weights are the report's, mixed with
  the run's own alpha). "own" is the run's own C and alpha again: it should give the run's
  dev accuracy."""
  from tf_finetune import experiment
  task = trainer.task.config.task
  own_c, own_alpha = task.head_c, task.wise_ft_alpha
  _, untrained = experiment.build_model(trainer.config, trainer.labels, trainer.encoder)
  start = [v.numpy() for v in untrained.trainable_variables]  # the checkpoint's weights
  mixed = [v.numpy() for v in trainer.model.trainable_variables]
  trained = [s + (m - s) / own_alpha for s, m in zip(start, mixed)]

  def accuracy(c, alpha):
    task.head_c = c
    for variable, s, t in zip(trainer.model.trainable_variables, start, trained):
      variable.assign(s + alpha * (t - s))
    return float(trainer.evaluate_dev()["accuracy"])
  result = {f"head C={c:g}": accuracy(c, own_alpha) for c in head_cs}
  result.update({f"alpha={a:g}": accuracy(own_c, a) for a in alphas})
  result["own"] = accuracy(own_c, own_alpha)
  return result


def run_setfit_torch(config):
  """setfit's Trainer on the texts tf_finetune draws, with the same arguments. Its timed
  work imports no TensorFlow: the sample comes from tf_finetune's TensorFlow-free data and
  checkpoint modules (the same code the tf_finetune sides draw it with)."""
  start = time.time()
  try:
    import datasets
    import setfit
  except ImportError as e:
    return {"skipped": f"setfit does not import: {e}"}
  from tf_finetune import checkpoint_dirs
  from tf_finetune.data import sources
  splits = sources.load_splits(config.data)
  train, dev = sources.sample_train(splits["train"], config.data), splits["dev"]
  model = setfit.SetFitModel.from_pretrained(
      str(checkpoint_dirs.resolve_checkpoint_dir(config.model.checkpoint)))
  args = setfit.TrainingArguments(
      batch_size=BATCH, num_epochs=1, num_iterations=PAIRS_PER_EXAMPLE // 2,
      body_learning_rate=RECIPE.train.learning_rate, max_length=config.data.max_seq_length,
      seed=config.train.seed,
      report_to="none", output_dir=benchlib.scratch_dir("bench_setfit_"))  # not ./checkpoints
  trainer = setfit.Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict(
      {"text": train.texts, "label": train.labels}))
  trainer.train()
  predicted = model.predict(dev.texts, as_numpy=True)
  accuracy = float(np.mean(np.asarray(predicted).astype(str) == np.asarray(dev.labels)))
  seconds = time.time() - start
  if "tensorflow" in sys.modules:
    raise AssertionError("the PyTorch side imported TensorFlow in its timed work")
  return {"dev_accuracy": accuracy, "seconds": seconds}


def main(argv):
  if _RUN.value:
    dataset, side, shots, seed = _RUN.value.split(":")
    config = config_for(dataset, side, int(shots), int(seed))
    result = run_setfit_torch(config) if side == "setfit_torch" else run_tf(config)
    benchlib.emit(dict(result, peak_rss_mb=benchlib.peak_rss_mb()))
    return
  rows = {}
  for dataset in _DATASETS.value:
    runs = [("zero_shot", 0, 0)] if "zero_shot" in _SIDES.value else []
    runs += [(side, int(shots), seed) for shots in _SHOTS.value
             for seed in range(_FIRST_SAMPLE.value, _FIRST_SAMPLE.value + _SAMPLES.value)
             for side in _SIDES.value if side != "zero_shot"]
    for side, shots, seed in runs:
      r = benchlib.run_side(__file__, [f"--run={dataset}:{side}:{shots}:{seed}",
                                       f"--head_c={','.join(_HEAD_C.value)}",
                                       f"--wise_ft_alpha={','.join(_WISE_FT_ALPHA.value)}",
                                       f"--reseed={_RESEED.value}",
                                       *argv[1:]])
      if "skipped" in r:
        print(f"{dataset} {side}: skipped: {r['skipped']}", flush=True)
        continue
      rows.setdefault((dataset, shots, side), []).append(dict(r, seed=seed))
      variants = r.get("dev_accuracy_of", {})
      for variant, accuracy in variants.items():  # the same trained encoder, so the same time
        rows.setdefault((dataset, shots, f"{side} {variant}"), []).append(
            dict(r, dev_accuracy=accuracy, seed=seed))
      reseeded = f" (train.seed {seed + _RESEED.value})" if _RESEED.value else ""
      print(f"{dataset} K={shots} {side} sample {seed}{reseeded}: dev accuracy "
            f"{r['dev_accuracy']:.4f}"
            + "".join(f" ({variant}: {a:.4f})" for variant, a in variants.items())
            + f" | {r['seconds']:.0f}s | peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
  print("| data | K per label | side | dev accuracy mean +- std | samples | wall time mean |")
  print("|---|---|---|---|---|---|")
  for (dataset, shots, side), rs in rows.items():
    accuracy = np.array([r["dev_accuracy"] for r in rs])
    print(f"| {dataset} | {shots or '-'} | {side} | {accuracy.mean():.4f} +- "
          f"{accuracy.std():.4f} | {len(rs)} | {np.mean([r['seconds'] for r in rs]):.0f}s |")
  for line in paired_differences(rows):
    print(line)


def paired_differences(rows):
  """Lines comparing each SetFit-style row with setfit's on the same samples: the
  per-sample differences in points, their mean with a 95% t interval, and the count of
  samples ahead, level and under."""
  from scipy import stats
  lines = []
  for (dataset, shots, side), rs in rows.items():
    if not side.startswith("setfit") or side == "setfit_torch":
      continue
    theirs = {r["seed"]: r["dev_accuracy"] for r in rows.get((dataset, shots, "setfit_torch"), [])}
    paired = [(r["seed"], 100 * (r["dev_accuracy"] - theirs[r["seed"]]))
              for r in rs if r["seed"] in theirs]
    if not paired:
      continue
    seeds, points = zip(*paired)
    points = np.round(np.array(points), 6)  # accuracies are counts over the same dev set
    interval = ""
    if len(points) > 1:
      low, high = stats.t.interval(0.95, len(points) - 1, loc=points.mean(),
                                   scale=stats.sem(points))
      interval = f", 95% t interval {low:+.2f} to {high:+.2f}"
    lines.append(
        f"{dataset} K={shots} {side} minus setfit_torch, samples {', '.join(map(str, seeds))}: "
        + ", ".join(f"{p:+.2f}" for p in points) + f" points; mean {points.mean():+.2f}"
        + interval + f"; ahead on {np.sum(points > 0)}, level on {np.sum(points == 0)}, "
        f"under on {np.sum(points < 0)} of {len(points)}")
  return lines


if __name__ == "__main__":
  app.run(main)
