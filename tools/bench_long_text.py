"""Long documents on BBC News: truncation, head+tail and windows at one budget of steps.

  python tools/bench_long_text.py                          # 3 seeds, the default run's steps
  python tools/bench_long_text.py --seeds=0 --steps=100    # a quick look

BBC News articles have a median of 418 wordpieces; the default keeps the first 128. Each
setting trains all-MiniLM-L6-v2 on the default config's split for the same number of
optimizer steps (batch 16; by default the default run's 3 epochs of articles, 333 steps,
also for windows, whose own epoch counts windows), evaluates dev at the same 3 points and
reports the test accuracy of its best checkpoint (by dev accuracy), train examples/s
(windows count as examples; overall, and outside the dev evaluations, whose time is
given apart) and train time, in float32 without packing, as README's table was measured:
  truncate_128   the first 128 wordpieces (the default)
  head_tail_128  the first 31 and the last 95 wordpieces (Sun et al. 2019)
  windows_128    windows of 128, 64 apart, logits averaged per article, in evaluation too
  truncate_512   the first 512 wordpieces (about 4x the compute a step)
Each run is its own process; prints one line per run, then mean +- std per setting. Pick
a setting by dev accuracy; test accuracy is the held-out figure.
"""
import time

import benchlib
import numpy as np
from absl import app
from absl import flags

SETTINGS = {
    "truncate_128": {},
    "head_tail_128": {"data.long_text": "head_tail"},
    "windows_128": {"data.long_text": "windows", "data.window_stride": 64},
    "truncate_512": {"data.max_seq_length": 512},
}
# As README's table was measured: float32, no packing (articles fill 128-wordpiece rows).
MEASURED_AS = {"train.precision": "float32", "data.packing": False}

_SETTINGS = flags.DEFINE_list("settings", list(SETTINGS), "Settings to run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (train.seed).")
_STEPS = flags.DEFINE_integer("steps", 0, "Optimizer steps (0: the default config's 3 epochs).")
_RUN = flags.DEFINE_string("run", None, "Internal: SETTING:SEED in this process.")


def run_one(setting, seed):
  from tf_finetune.evaluation import evaluator
  from tf_finetune.training import trainer as trainer_lib
  from tf_finetune import experiment
  overrides = dict(SETTINGS[setting], **MEASURED_AS, **{"train.seed": seed,
                                                       "train.log_every": 50})
  config = benchlib.load_config("default", overrides)
  articles = len(experiment.load_data(config)[0]["train"])
  steps = _STEPS.value or round(config.train.epochs * (articles // config.train.batch_size))
  config = benchlib.load_config("default", dict(overrides, **{
      "train.steps": steps, "train.eval_every": max(1, steps // 3)}))
  workdir = benchlib.scratch_dir(f"bench_long_text_{setting}_{seed}_")
  trainer = trainer_lib.Trainer(config, workdir)
  evaluations = []  # seconds of each dev evaluation inside train()
  evaluate_dev = trainer.evaluate_dev

  def timed_evaluate_dev():
    start = time.time()
    report = evaluate_dev()
    evaluations.append(time.time() - start)
    return report
  trainer.evaluate_dev = timed_evaluate_dev
  start = time.time()
  trainer.train()
  train_time = time.time() - start
  step_time = train_time - sum(evaluations)
  report = evaluator.evaluate_workdir(workdir)
  return {"setting": setting, "seed": seed, "steps": trainer.step,
          "test_accuracy": report["splits"]["test"]["accuracy"],
          "dev_accuracy": report["splits"]["dev"]["accuracy"],
          "train_s": train_time, "evaluations": len(evaluations),
          "eval_s": sum(evaluations) / max(1, len(evaluations)),
          "examples_per_sec": trainer.step * config.train.batch_size / train_time,
          "step_examples_per_sec": trainer.step * config.train.batch_size / step_time,
          "peak_rss_mb": benchlib.peak_rss_mb()}


def main(argv):
  if _RUN.value:
    setting, seed = _RUN.value.split(":")
    benchlib.emit(run_one(setting, int(seed)))
    return
  results = {}
  for seed in _SEEDS.value:
    for setting in _SETTINGS.value:
      r = benchlib.run_side(__file__, [f"--run={setting}:{seed}", f"--steps={_STEPS.value}",
                                       *argv[1:]])
      results.setdefault(setting, []).append(r)
      print(f"{setting} seed {seed}: test accuracy {r['test_accuracy']:.4f} (dev "
            f"{r['dev_accuracy']:.4f}) | {r['steps']} steps | {r['examples_per_sec']:.1f} "
            f"train examples/s ({r['step_examples_per_sec']:.1f} outside the "
            f"{r['evaluations']} dev evaluations of {r['eval_s']:.0f}s each) | train "
            f"{r['train_s']:.0f}s | peak RSS {r['peak_rss_mb']:.0f} MB",
            flush=True)
  print("| setting | dev accuracy (mean +- std) | test accuracy (mean +- std) | seeds | "
        "train examples/s (outside dev evaluations) | one dev evaluation | train time |")
  print("|---|---|---|---|---|---|---|")
  for setting, rs in results.items():
    dev, test = (np.array([r[f"{split}_accuracy"] for r in rs]) for split in ("dev", "test"))
    print(f"| {setting} | {dev.mean():.4f} +- {dev.std():.4f} | "
          f"{test.mean():.4f} +- {test.std():.4f} | {len(rs)} | "
          f"{np.mean([r['examples_per_sec'] for r in rs]):.1f} "
          f"({np.mean([r['step_examples_per_sec'] for r in rs]):.1f}) | "
          f"{np.mean([r['eval_s'] for r in rs]):.0f}s | "
          f"{np.mean([r['train_s'] for r in rs]):.0f}s |")


if __name__ == "__main__":
  app.run(main)
