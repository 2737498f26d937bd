"""Each fine-tuning technique on SST-2 at one reduced budget, as a table.

  python tools/bench_techniques.py                       # every technique below
  python tools/bench_techniques.py --techniques=full,lora_r8

Budget (the same for every row): all-MiniLM-L6-v2, the first --max_train_examples of
../shared/data/sst2/train.tsv (label-stratified sample, data.split_seed=0), --epochs,
batch 32, max 64 wordpieces, 10% warmup, the full 872-sentence dev set, fp32, seed 0.
Learning rates: 5e-5 for rows that train the whole encoder, 1e-3 for rows that train a
small part of it (bitfit, adapter, lora), as is usual for those methods. Each row runs in its own
process; prints dev accuracy of the best checkpoint, trainable and total parameters,
training examples/s and peak RSS.
"""
import benchlib
from absl import app
from absl import flags

# name -> config overrides on top of the budget.
TECHNIQUES = {
    "full": {},
    "freeze_bottom3": {"peft.method": "freeze", "peft.freeze_layers": 3},
    "bitfit": {"peft.method": "bitfit", "train.learning_rate": 1e-3},
    "adapter_64": {"peft.method": "adapter", "peft.adapter_size": 64,
                   "train.learning_rate": 1e-3},
    "lora_r8": {"peft.method": "lora", "peft.lora_rank": 8, "peft.lora_alpha": 16.0,
                "train.learning_rate": 1e-3},
    "grad_accum_4x8": {"train.grad_accum_steps": 4},
    "layer_decay_0.8": {"train.layer_decay": 0.8},
    "label_smoothing_0.1": {"task.label_smoothing": 0.1},
    "fgm_eps1": {"adversarial.method": "fgm", "adversarial.epsilon": 1.0},
    "fgm_eps0.1": {"adversarial.method": "fgm", "adversarial.epsilon": 0.1},
    "pgd_eps1_3steps": {"adversarial.method": "pgd", "adversarial.epsilon": 1.0,
                        "adversarial.alpha": 0.3, "adversarial.steps": 3},
    "pgd_eps0.1_3steps": {"adversarial.method": "pgd", "adversarial.epsilon": 0.1,
                          "adversarial.alpha": 0.03, "adversarial.steps": 3},
    "eda_0.1": {"data.augment": "eda", "data.augment_probability": 0.1},
}

_TECHNIQUES = flags.DEFINE_list("techniques", list(TECHNIQUES), "Rows to run.")
_RUN = flags.DEFINE_string("run", None, "Internal: run one technique in this process.")
_MAX_TRAIN = flags.DEFINE_integer("max_train_examples", 8000, "Train examples.")
_EPOCHS = flags.DEFINE_float("epochs", 1.0, "Epochs.")


def run_one(name):
  from tf_finetune import peft
  trainer, _, _, result = benchlib.train_sst2_budget(
      f"techniques_{name}", TECHNIQUES[name], _MAX_TRAIN.value, _EPOCHS.value)
  trainable, total = peft.parameter_counts(trainer.model)
  return dict(result, technique=name, trainable=trainable, total=total)


def main(argv):
  if _RUN.value:
    benchlib.emit(run_one(_RUN.value))
    return
  print(f"SST-2, {_MAX_TRAIN.value} train examples, {_EPOCHS.value} epoch(s), batch 32, "
        "max 64 wordpieces, dev 872 sentences, all-MiniLM-L6-v2, 2-core CPU")
  print("| technique | dev accuracy | trainable / total parameters | examples/s | peak RSS MB |")
  print("|---|---|---|---|---|")
  for name in _TECHNIQUES.value:
    r = benchlib.run_side(__file__, [f"--run={name}", f"--max_train_examples={_MAX_TRAIN.value}",
                                     f"--epochs={_EPOCHS.value}", *argv[1:]])
    print(f"| {name} | {r['dev_accuracy']:.4f} (step {r['best_step']}/{r['steps']}) | "
          f"{r['trainable']:,} / {r['total']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
          f"{r['examples_per_sec']:.1f} | {r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
