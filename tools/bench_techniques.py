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

TABLE = benchlib.Sst2BudgetTable(TECHNIQUES, "techniques")


def run_one(name):
  from tf_finetune import peft
  trainer, result = TABLE.train(name)
  trainable, total = peft.parameter_counts(trainer.model)
  return dict(result, trainable=trainable, total=total)


def main(argv):
  if TABLE.run.value:
    benchlib.emit(run_one(TABLE.run.value))
    return
  print(TABLE.header() + ", batch 32")
  print("| technique | dev accuracy | trainable / total parameters | examples/s | peak RSS MB |")
  print("|---|---|---|---|---|")
  for name, r in TABLE.results(__file__):
    print(f"| {name} | {r['dev_accuracy']:.4f} (step {r['best_step']}/{r['steps']}) | "
          f"{r['trainable']:,} / {r['total']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
          f"{r['examples_per_sec']:.1f} | {r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
