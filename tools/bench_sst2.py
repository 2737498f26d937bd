"""Fine-tune all-MiniLM-L6-v2 on SST-2 with tf_finetune and with the HF PyTorch Trainer.

  pip install -e ".[torch]"     # torch 2.13.0 CPU build + accelerate, for the PyTorch side
  python tools/bench_sst2.py                            # full train set, both, interleaved
  python tools/bench_sst2.py --max_train_examples=2000 --rounds=1   # a quick look

Same checkpoint, data (../shared/data/sst2), hyperparameters (1 epoch, batch 32, AdamW lr
5e-5, weight decay 0.01 off biases and LayerNorm, 10% linear warmup then linear decay,
clip 1.0, max 64 wordpieces, dynamic padding grouped by length, dropout 0.1, fp32) and
machine. Each run is its own process; rounds alternate tf, torch, tf, torch... Prints dev
accuracy of the final weights, training examples/s, wall time and peak RSS per run, then
the mean of each side and the ratios.
"""
import tempfile
import time

import benchlib
from absl import app
from absl import flags

_RUN = flags.DEFINE_enum("run", None, ["tf", "tf_bf16", "torch"],
                         "Internal: run one side in this process.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Interleaved rounds of (tf, torch).")
_SIDES = flags.DEFINE_list("sides", ["tf", "torch"],
                          "Sides: tf, torch (both fp32), tf_bf16 (mixed_bfloat16).")
_MAX_TRAIN = flags.DEFINE_integer("max_train_examples", 0, "0: the whole train set.")
_EPOCHS = flags.DEFINE_float("epochs", 1.0, "Epochs.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate.")
_MAX_LEN = flags.DEFINE_integer("max_seq_length", 64, "Wordpieces per example.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")


def run_tf(precision):
  from tf_finetune.training import trainer as trainer_lib
  c = benchlib.load_config("sst2", {
      "data.max_seq_length": _MAX_LEN.value, "data.max_train_examples": _MAX_TRAIN.value,
      "train.epochs": _EPOCHS.value, "train.batch_size": _BATCH.value,
      "train.learning_rate": _LR.value, "train.adam_epsilon": 1e-8, "train.seed": _SEED.value,
      "train.precision": precision,
      "train.eval_every": 10**9,  # one evaluation, at the end, as on the PyTorch side
      "train.log_every": 100})
  workdir = tempfile.mkdtemp(prefix="bench_sst2_tf_")
  start = time.time()
  t = trainer_lib.Trainer(c, workdir)
  setup = time.time() - start
  train_start = time.time()
  t.train()  # ends with the evaluation of the final step
  wall = time.time() - start
  train_time = time.time() - train_start
  report = t.evaluate_dev()
  steps = t.total_steps
  return {"side": "tf" if precision == "float32" else "tf_bf16", "dev_accuracy": report["accuracy"], "train_examples": len(t.splits["train"]),
          "steps": steps, "examples_per_sec": steps * c.train.batch_size / train_time,
          "setup_s": setup, "wall_s": wall, "peak_rss_mb": benchlib.peak_rss_mb()}


def run_torch():
  import numpy as np
  import torch
  import transformers
  from tf_finetune import checkpoints
  from tf_finetune import config as config_lib
  from tf_finetune.data import sources
  start = time.time()
  shared = config_lib.shared_data_dir()
  read = lambda name: sources.read_delimited(shared / "sst2" / name, delimiter="\t",
                                             text_column="sentence", label_column="label")
  train, dev = read("train.tsv"), read("dev.tsv")
  if _MAX_TRAIN.value:
    train = train.subset(range(_MAX_TRAIN.value))
  directory = str(checkpoints.resolve_checkpoint_dir(checkpoints.MINILM))
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  transformers.set_seed(_SEED.value)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2)

  def data(split):
    return benchlib.torch_dataset(
        tokenizer(split.texts, truncation=True, max_length=_MAX_LEN.value),
        [int(x) for x in split.labels])

  train_data, dev_data = data(train), data(dev)
  args = transformers.TrainingArguments(
      output_dir=tempfile.mkdtemp(prefix="bench_sst2_torch_"), num_train_epochs=_EPOCHS.value,
      per_device_train_batch_size=_BATCH.value, per_device_eval_batch_size=64,
      learning_rate=_LR.value, weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear",
      max_grad_norm=1.0, adam_epsilon=1e-8, train_sampling_strategy="group_by_length",
      seed=_SEED.value,
      save_strategy="no", eval_strategy="no", report_to=[], logging_steps=100, use_cpu=True)
  trainer = transformers.Trainer(
      model=model, args=args, train_dataset=train_data,
      data_collator=transformers.DataCollatorWithPadding(tokenizer))
  setup = time.time() - start
  train_start = time.time()
  result = trainer.train()
  train_time = time.time() - train_start
  # Trainer may reorder the eval set (length grouping); label_ids come back in its order.
  prediction = trainer.predict(dev_data)
  assert len(prediction.label_ids) == len(dev_data)
  accuracy = float(np.mean(np.argmax(prediction.predictions, -1) == prediction.label_ids))
  steps = result.global_step
  return {"side": "torch", "dev_accuracy": accuracy, "train_examples": len(train_data),
          "steps": steps, "examples_per_sec": steps * _BATCH.value / train_time,
          "setup_s": setup, "wall_s": time.time() - start, "peak_rss_mb": benchlib.peak_rss_mb(),
          "torch_threads": torch.get_num_threads()}


def main(argv):
  if _RUN.value:
    if _RUN.value == "torch":
      result = run_torch()
    else:
      result = run_tf("float32" if _RUN.value == "tf" else "mixed_bfloat16")
    benchlib.emit(result)
    return
  flag_args = [f"--max_train_examples={_MAX_TRAIN.value}", f"--epochs={_EPOCHS.value}",
               f"--batch_size={_BATCH.value}", f"--learning_rate={_LR.value}",
               f"--max_seq_length={_MAX_LEN.value}", f"--seed={_SEED.value}", *argv[1:]]
  results = []
  for round_ in range(_ROUNDS.value):
    for side in _SIDES.value:
      result = benchlib.run_side(__file__, [f"--run={side}", *flag_args])
      results.append(result)
      print(f"round {round_ + 1} {side:>5}: dev accuracy {result['dev_accuracy']:.4f} | "
            f"{result['examples_per_sec']:.1f} train examples/s | {result['steps']} steps | "
            f"wall {result['wall_s']:.0f}s | peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
  means = {}
  for side in _SIDES.value:
    rs = [r for r in results if r["side"] == side]
    means[side] = {k: sum(r[k] for r in rs) / len(rs)
                   for k in ("dev_accuracy", "examples_per_sec", "wall_s", "peak_rss_mb")}
    m = means[side]
    print(f"mean {side:>5}: dev accuracy {m['dev_accuracy']:.4f} | {m['examples_per_sec']:.1f} "
          f"examples/s | wall {m['wall_s']:.0f}s | peak RSS {m['peak_rss_mb']:.0f} MB")
  for side in ("tf", "tf_bf16"):
    if side in means and "torch" in means:
      ours, pt = means[side], means["torch"]
      print(f"{side} - torch dev accuracy: {100 * (ours['dev_accuracy'] - pt['dev_accuracy']):+.2f} "
            f"points; examples/s ratio {side}/torch: "
            f"{ours['examples_per_sec'] / pt['examples_per_sec']:.2f}; "
            f"peak RSS ratio: {ours['peak_rss_mb'] / pt['peak_rss_mb']:.2f}")


if __name__ == "__main__":
  app.run(main)
