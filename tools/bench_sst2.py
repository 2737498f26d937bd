"""Fine-tune all-MiniLM-L6-v2 on SST-2 (or emotion) with tf_finetune and with the HF PyTorch
Trainer.

  pip install -e ".[torch]"     # torch 2.13.0 CPU build + accelerate, for the PyTorch side
  python tools/bench_sst2.py                            # full train set, interleaved
  python tools/bench_sst2.py --max_train_examples=2000 --rounds=1   # a quick look
  python tools/bench_sst2.py --dataset=emotion          # the same on emotion (6 labels)

Sides: `tf` is tf_finetune as a user gets it (configs/<dataset>.py's defaults:
train.precision=auto, data.packing on, oneDNN kernels on x86-64); `tf_fp32_unpacked` is
float32 with length buckets and no packing (what tf_finetune did before packing); `torch` and
`torch_bf16` are the HF Trainer in float32 and with bf16=True, both with group_by_length.
Same checkpoint, data (configs/<dataset>.py's files in ../shared/data, read the same way on
both sides), hyperparameters (1 epoch, batch 32, AdamW lr 5e-5, weight decay 0.01 off biases
and LayerNorm, 10% linear warmup then linear decay, clip 1.0, max 64 wordpieces, dropout 0.1)
and number of examples seen. Each run is its own process; rounds alternate the sides.
Prints per run dev accuracy of the final weights, train examples/s, real and padded
wordpieces per second, wall time and peak RSS; then per side the mean, and last
`speedup: X.XX (accuracy delta: +Y.YY points)`: `tf` against the faster Trainer side.

Which Trainer side is faster is measured, not assumed: when both are asked for (the default),
each first trains --trainer_probe_steps steps in its own process and only the faster one runs
the rounds (on a CPU without bfloat16 units, bf16=True is several times slower than float32
and a full epoch of it would take hours); --trainer_probe_steps=0 runs both in every round.
"""
import time

import benchlib
from absl import app
from absl import flags

TF_SIDES = {"tf": {}, "tf_fp32_unpacked": {"train.precision": "float32", "data.packing": False}}
TORCH_SIDES = benchlib.TORCH_SIDES

_RUN = flags.DEFINE_enum("run", None, [*TF_SIDES, *TORCH_SIDES],
                         "Internal: run one side in this process.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Interleaved rounds of the sides.")
_SIDES = flags.DEFINE_list("sides", ["tf", "torch", "torch_bf16"],
                           f"Sides, of {', '.join([*TF_SIDES, *TORCH_SIDES])}.")
_MAX_TRAIN = flags.DEFINE_integer("max_train_examples", 0, "0: the whole train set.")
_EPOCHS = flags.DEFINE_float("epochs", 1.0, "Epochs.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate.")
_MAX_LEN = flags.DEFINE_integer("max_seq_length", 64, "Wordpieces per example.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_DATASET = flags.DEFINE_enum("dataset", "sst2", ["sst2", "emotion"],
                             "configs/<dataset>.py: its data, on both sides.")
_TRAINER_PROBE_STEPS = flags.DEFINE_integer(
    "trainer_probe_steps", 40, "Steps each Trainer side trains to pick the faster one for "
    "the rounds; 0: every Trainer side runs every round.")
_PROBE = flags.DEFINE_integer("probe", 0, "Internal: train this many steps, report speed only.")


def run_tf(side):
  from tf_finetune.data import pipeline
  from tf_finetune.training import trainer as trainer_lib
  c = benchlib.load_config(_DATASET.value, dict(TF_SIDES[side], **{
      "data.max_seq_length": _MAX_LEN.value, "data.max_train_examples": _MAX_TRAIN.value,
      "train.epochs": _EPOCHS.value, "train.batch_size": _BATCH.value,
      "train.learning_rate": _LR.value, "train.adam_epsilon": 1e-8, "train.seed": _SEED.value,
      "train.eval_every": 10**9,  # one evaluation, at the end, as on the PyTorch side
      "train.log_every": 100}))
  workdir = benchlib.scratch_dir("bench_sst2_tf_")
  start = time.time()
  t = trainer_lib.Trainer(c, workdir)
  setup = time.time() - start
  train_start = time.time()
  t.train()  # ends with the evaluation of the final step
  wall = time.time() - start
  train_time = time.time() - train_start
  report = t.evaluate_dev()
  steps = t.total_steps
  # The wordpieces the steps were fed: the same deterministic stream, counted afterwards.
  stream = pipeline.train_dataset(
      t.splits["train"], t.train_label_values, t.task, batch_size=t.micro_batch_size,
      seed=c.train.seed, shuffle_buffer=c.data.shuffle_buffer, bucketing=c.data.bucketing,
      packing=t.packing)
  real = padded = 0
  for batch in stream.take(steps * t.accum_steps):
    real += int(batch["padding_mask"].numpy().sum())
    padded += int(batch["token_ids"].shape[0] * batch["token_ids"].shape[1])
  return {"side": side, "precision": t.precision, "packing": t.packing,
          "dev_accuracy": report["accuracy"], "train_examples": len(t.splits["train"]),
          "steps": steps, "examples_per_sec": steps * c.train.batch_size / train_time,
          "real_tokens_per_sec": real / train_time, "padded_tokens_per_sec": padded / train_time,
          "setup_s": setup, "wall_s": wall, "peak_rss_mb": benchlib.peak_rss_mb()}


def run_torch(side):
  import numpy as np
  import torch
  import transformers
  from tf_finetune import checkpoint_dirs  # TensorFlow-free, as config and sources are
  from tf_finetune.data import sources
  start = time.time()
  splits = sources.load_splits(benchlib.load_config(_DATASET.value).data)
  train, dev = splits["train"], splits["dev"]
  if _MAX_TRAIN.value:
    train = train.subset(range(_MAX_TRAIN.value))
  label_ids = {label: i for i, label in enumerate(sorted(set(train.labels) | set(dev.labels)))}
  directory = str(checkpoint_dirs.resolve_checkpoint_dir(checkpoint_dirs.MINILM))
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  transformers.set_seed(_SEED.value)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      directory, num_labels=len(label_ids))

  def data(split):
    return benchlib.torch_dataset(
        tokenizer(split.texts, truncation=True, max_length=_MAX_LEN.value),
        [label_ids[x] for x in split.labels])

  train_data, dev_data = data(train), data(dev)
  args = transformers.TrainingArguments(
      output_dir=benchlib.scratch_dir("bench_sst2_torch_"), num_train_epochs=_EPOCHS.value,
      per_device_train_batch_size=_BATCH.value, per_device_eval_batch_size=64,
      learning_rate=_LR.value, weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear",
      max_grad_norm=1.0, adam_epsilon=1e-8, train_sampling_strategy="group_by_length",
      max_steps=_PROBE.value or -1,
      seed=_SEED.value, bf16=TORCH_SIDES[side],
      save_strategy="no", eval_strategy="no", report_to=[], logging_steps=100, use_cpu=True)
  trainer = transformers.Trainer(
      model=model, args=args, train_dataset=train_data,
      data_collator=transformers.DataCollatorWithPadding(tokenizer))
  real = padded = 0
  if not _PROBE.value:  # the probe reports speed only
    for batch in trainer.get_train_dataloader():  # an epoch of length-grouped batches, drawn
      real += int(batch["attention_mask"].sum())  # as training draws them
      padded += int(batch["attention_mask"].numel())
  real, padded = real * _EPOCHS.value, padded * _EPOCHS.value
  transformers.set_seed(_SEED.value)
  setup = time.time() - start
  train_start = time.time()
  result = trainer.train()
  train_time = time.time() - train_start
  if _PROBE.value:
    return {"side": side, "examples_per_sec": result.global_step * _BATCH.value / train_time}
  # Trainer may reorder the eval set (length grouping); label_ids come back in its order.
  prediction = trainer.predict(dev_data)
  assert len(prediction.label_ids) == len(dev_data)
  accuracy = float(np.mean(np.argmax(prediction.predictions, -1) == prediction.label_ids))
  steps = result.global_step
  return {"side": side, "dev_accuracy": accuracy, "train_examples": len(train_data),
          "steps": steps, "examples_per_sec": steps * _BATCH.value / train_time,
          "real_tokens_per_sec": real / train_time, "padded_tokens_per_sec": padded / train_time,
          "setup_s": setup, "wall_s": time.time() - start, "peak_rss_mb": benchlib.peak_rss_mb(),
          "torch_threads": torch.get_num_threads()}


def main(argv):
  if _RUN.value:
    benchlib.emit(run_torch(_RUN.value) if _RUN.value in TORCH_SIDES else run_tf(_RUN.value))
    return
  flag_args = [f"--max_train_examples={_MAX_TRAIN.value}", f"--epochs={_EPOCHS.value}",
               f"--batch_size={_BATCH.value}", f"--learning_rate={_LR.value}",
               f"--max_seq_length={_MAX_LEN.value}", f"--seed={_SEED.value}",
               f"--dataset={_DATASET.value}", *argv[1:]]
  keys = ("dev_accuracy", "examples_per_sec", "real_tokens_per_sec", "padded_tokens_per_sec",
          "wall_s", "peak_rss_mb")

  def line(prefix, r):
    return (f"{prefix}: dev accuracy {r['dev_accuracy']:.4f} | {r['examples_per_sec']:.1f} "
            f"train examples/s | wordpieces/s {r['real_tokens_per_sec']:.0f} real, "
            f"{r['padded_tokens_per_sec']:.0f} padded | wall {r['wall_s']:.0f}s | peak RSS "
            f"{r['peak_rss_mb']:.0f} MB")

  sides = list(_SIDES.value)
  torch_sides = [s for s in sides if s in TORCH_SIDES]
  if len(torch_sides) > 1 and _TRAINER_PROBE_STEPS.value:
    probe = f"--probe={_TRAINER_PROBE_STEPS.value}"
    speeds = {s: benchlib.run_side(__file__, [f"--run={s}", probe, *flag_args])["examples_per_sec"]
              for s in torch_sides}
    fastest = max(torch_sides, key=speeds.get)
    sides = [s for s in sides if s not in TORCH_SIDES or s == fastest]
    print(f"Trainer probe ({_TRAINER_PROBE_STEPS.value} steps each, first step included): "
          + ", ".join(f"{s} {v:.1f} train examples/s" for s, v in speeds.items())
          + f": the rounds run {fastest}", flush=True)
  results = []
  for round_ in range(_ROUNDS.value):
    for side in sides:
      result = benchlib.run_side(__file__, [f"--run={side}", *flag_args])
      results.append(result)
      extra = (f" ({result['precision']}, packing {'on' if result['packing'] else 'off'})"
               if side in TF_SIDES else "")
      print(line(f"round {round_ + 1} {side}{extra}", result), flush=True)
  means = {}
  for side in sides:
    rs = [r for r in results if r["side"] == side]
    means[side] = {k: sum(r[k] for r in rs) / len(rs) for k in keys}
    print(line(f"mean {side}", means[side]))
  torch_sides = [s for s in sides if s in TORCH_SIDES]
  if "tf" in means and torch_sides:
    fastest = max(torch_sides, key=lambda s: means[s]["examples_per_sec"])
    ours, theirs = means["tf"], means[fastest]
    print(f"reference: {fastest}, the faster Trainer side here")
    print(f"peak RSS ratio tf/{fastest}: {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}")
    print(f"speedup: {ours['examples_per_sec'] / theirs['examples_per_sec']:.2f} (accuracy "
          f"delta: {100 * (ours['dev_accuracy'] - theirs['dev_accuracy']):+.2f} points)")


if __name__ == "__main__":
  app.run(main)
