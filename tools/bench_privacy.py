"""DP-SGD against non-private fine-tuning on SST-2 at one budget, as a table.

  python tools/bench_privacy.py                          # every row below
  python tools/bench_privacy.py --rows=full,dp8_full --max_train_examples=4000

Budget (every row): bench_techniques' SST-2 budget (all-MiniLM-L6-v2, the first
--max_train_examples of ../shared/data/sst2/train.tsv, --epochs, batch 32, max 64
wordpieces, full 872-sentence dev set, fp32, seed 0). Private rows: privacy.target_epsilon
8 or 3 at delta 1 / (2N), clip 1.0, the noise solved for the run's steps; learning rates
per row below (DP-SGD's clipped, noised gradients take a larger one). Prints dev accuracy
of the best checkpoint, the epsilon spent at it, training examples/s and peak RSS.
"""
import benchlib
from absl import app
from absl import flags

LORA = {"peft.method": "lora", "peft.lora_rank": 8, "peft.lora_alpha": 16.0}
ROWS = {
    "full": {},
    "dp8_full": {"privacy.method": "dp_sgd", "privacy.target_epsilon": 8.0,
                 "train.learning_rate": 5e-4},
    "dp3_full": {"privacy.method": "dp_sgd", "privacy.target_epsilon": 3.0,
                 "train.learning_rate": 5e-4},
    "lora": {**LORA, "train.learning_rate": 1e-3},
    "dp8_lora": {**LORA, "privacy.method": "dp_sgd", "privacy.target_epsilon": 8.0,
                 "train.learning_rate": 3e-3},
    "dp3_lora": {**LORA, "privacy.method": "dp_sgd", "privacy.target_epsilon": 3.0,
                 "train.learning_rate": 3e-3},
}

_ROWS = flags.DEFINE_list("rows", list(ROWS), "Rows to run.")
_RUN = flags.DEFINE_string("run", None, "Internal: run one row in this process.")
_MAX_TRAIN = flags.DEFINE_integer("max_train_examples", 8000, "Train examples.")
_EPOCHS = flags.DEFINE_float("epochs", 1.0, "Epochs.")


def run_one(name):
  trainer, _, _, result = benchlib.train_sst2_budget(
      f"privacy_{name}", ROWS[name], _MAX_TRAIN.value, _EPOCHS.value)
  result["row"] = name
  if trainer.dp_sgd is not None:
    spent = trainer.privacy_plan.report(trainer.best["step"])
    result.update(epsilon=spent["epsilon"], delta=spent["delta"],
                  noise_multiplier=spent["noise_multiplier"])
  return result


def main(argv):
  if _RUN.value:
    benchlib.emit(run_one(_RUN.value))
    return
  print(f"SST-2, {_MAX_TRAIN.value} train examples, {_EPOCHS.value} epoch(s), batch 32, "
        "max 64 wordpieces, dev 872 sentences, all-MiniLM-L6-v2, 2-core CPU")
  print("| row | dev accuracy | epsilon at best (delta) | noise multiplier | examples/s | "
        "peak RSS MB |")
  print("|---|---|---|---|---|---|")
  for name in _ROWS.value:
    r = benchlib.run_side(__file__, [f"--run={name}", f"--max_train_examples={_MAX_TRAIN.value}",
                                     f"--epochs={_EPOCHS.value}", *argv[1:]])
    privacy = (f"{r['epsilon']:.2f} ({r['delta']:.2g})", f"{r['noise_multiplier']:.3f}") \
        if "epsilon" in r else ("non-private", "-")
    print(f"| {name} | {r['dev_accuracy']:.4f} (step {r['best_step']}/{r['steps']}) | "
          f"{privacy[0]} | {privacy[1]} | {r['examples_per_sec']:.1f} | "
          f"{r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
