"""DP-SGD against non-private fine-tuning on SST-2 at one budget, as a table.

  python tools/bench_privacy.py                          # every row below
  python tools/bench_privacy.py \
      --rows=full,lora,head,dp8_full,dp3_full,dp8_lora,dp3_lora,dp8_head,dp3_head \
      --max_train_examples=16000 --epochs=1 --dp_batch_size=1024     # as README quotes it

Budget (every row): all-MiniLM-L6-v2, a label-stratified sample of --max_train_examples of
../shared/data/sst2/train.tsv (data.split_seed=0), --epochs, max 64 wordpieces, the full
872-sentence dev set, seed 0, mean pooling (--pooling; the checkpoint's own, and no
148k-parameter pooler for DP to noise). Non-private rows train at batch 32.
Private rows: Poisson sampling with an expected batch of --dp_batch_size (DP-SGD's signal
grows with the batch while its noise does not), privacy.target_epsilon 8 or 3 at delta
1 / (2N), clip --l2_norm_clip, the noise solved for the run's steps, dev evaluated at a
third of the steps; learning rates per row below, tried on dev (at --dp_batch_size=1024 a
private run makes only N / 1024 steps, so it needs a larger rate: 3e-3 left every private
row at chance). Prints dev accuracy of the best checkpoint, the epsilon spent
at it, training examples/s and peak RSS.
"""
import benchlib
from absl import app
from absl import flags

LORA = {"peft.method": "lora", "peft.lora_rank": 8, "peft.lora_alpha": 16.0}
HEAD = {"peft.method": "freeze", "peft.freeze_layers": 6}
FULL_PRIVATE = {"privacy.method": "dp_sgd", "train.learning_rate": 1e-4,
                "train.head_learning_rate": 3e-2, "privacy.head_l2_norm_clip": 0.9}
ROWS = {
    "full": {},
    # Every weight, the head (the classifier) at its own rate and clipped apart (README).
    "dp8_full": {**FULL_PRIVATE, "privacy.target_epsilon": 8.0},
    "dp3_full": {**FULL_PRIVATE, "privacy.target_epsilon": 3.0},
    "lora": {**LORA, "train.learning_rate": 1e-3},
    "dp8_lora": {**LORA, "privacy.method": "dp_sgd", "privacy.target_epsilon": 8.0,
                 "train.learning_rate": 1e-2},
    "dp3_lora": {**LORA, "privacy.method": "dp_sgd", "privacy.target_epsilon": 3.0,
                 "train.learning_rate": 1e-2},
    # Only the classifier on the frozen encoder's mean-pooled embedding (770 parameters).
    "head": {**HEAD, "train.learning_rate": 3e-3},
    "dp8_head": {**HEAD, "privacy.method": "dp_sgd", "privacy.target_epsilon": 8.0,
                 "train.learning_rate": 3e-2},
    "dp3_head": {**HEAD, "privacy.method": "dp_sgd", "privacy.target_epsilon": 3.0,
                 "train.learning_rate": 3e-2},
}

TABLE = benchlib.Sst2BudgetTable(ROWS, "rows")
_DP_BATCH = flags.DEFINE_integer("dp_batch_size", 1024, "Private rows: expected batch size.")
_CLIP = flags.DEFINE_float("l2_norm_clip", 1.0, "Private rows: per-example clip.")
_HEAD_CLIP = flags.DEFINE_float("head_l2_norm_clip", -1.0,
                                "Private rows: privacy.head_l2_norm_clip (-1: the row's own).")
_LR = flags.DEFINE_float("learning_rate", 0.0, "Every chosen row's learning rate (0: its own).")
_HEAD_LR = flags.DEFINE_float("head_learning_rate", -1.0,
                              "Every chosen row's train.head_learning_rate (-1: its own).")
_POOLING = flags.DEFINE_string("pooling", "mean", "model.pooling of every row.")


def run_one(name):
  if "privacy.method" in ROWS[name]:
    steps = round(TABLE.epochs.value * (TABLE.max_train.value // _DP_BATCH.value))
    ROWS[name] = dict(ROWS[name], **{"train.batch_size": _DP_BATCH.value,
                                     "privacy.l2_norm_clip": _CLIP.value,
                                     "train.eval_every": max(1, steps // 3)})
  ROWS[name] = dict(ROWS[name], **{"model.pooling": _POOLING.value})
  if _LR.value:
    ROWS[name] = dict(ROWS[name], **{"train.learning_rate": _LR.value})
  if _HEAD_LR.value >= 0:
    ROWS[name] = dict(ROWS[name], **{"train.head_learning_rate": _HEAD_LR.value})
  if _HEAD_CLIP.value >= 0 and "privacy.method" in ROWS[name]:
    ROWS[name] = dict(ROWS[name], **{"privacy.head_l2_norm_clip": _HEAD_CLIP.value})
  trainer, result = TABLE.train(name)
  if trainer.dp_sgd is not None:
    spent = trainer.privacy_plan.report(trainer.best["step"])
    result.update(epsilon=spent["epsilon"], delta=spent["delta"],
                  noise_multiplier=spent["noise_multiplier"], clip=spent["l2_norm_clip"],
                  head_clip=spent["head_l2_norm_clip"])
  return dict(result, batch_size=trainer.global_batch_size,
              learning_rate=trainer.config.train.learning_rate,
              head_learning_rate=trainer.config.train.head_learning_rate)


def main(argv):
  if TABLE.run.value:
    benchlib.emit(run_one(TABLE.run.value))
    return
  print(TABLE.header() + f", private rows: expected batch {_DP_BATCH.value}, clip "
        f"{_CLIP.value:g}")
  print("| row | batch | learning rate (head) | clip (head) | dev accuracy | "
        "epsilon at best (delta) | noise multiplier | examples/s | peak RSS MB |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, r in TABLE.results(__file__):
    privacy = (f"{r['epsilon']:.2f} ({r['delta']:.2g})", f"{r['noise_multiplier']:.3f}") \
        if "epsilon" in r else ("non-private", "-")
    head = f" ({r['head_learning_rate']:g})" if r["head_learning_rate"] else ""
    clip = "-" if "clip" not in r else f"{r['clip']:g}" + (
        f" ({r['head_clip']:g})" if r["head_clip"] else "")
    print(f"| {name} | {r['batch_size']} | {r['learning_rate']:g}{head} | {clip} | "
          f"{r['dev_accuracy']:.4f} (step {r['best_step']}/"
          f"{r['steps']}) | {privacy[0]} | {privacy[1]} | {r['examples_per_sec']:.1f} | "
          f"{r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
