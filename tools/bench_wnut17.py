"""WNUT-17 NER: tf_finetune beside the HF PyTorch reference (AutoModelForTokenClassification).

  pip install -e ".[torch]"     # torch 2.13.0 CPU build + accelerate, for the PyTorch side
  python tools/bench_wnut17.py                    # configs/wnut17.py's hyperparameters, both
  python tools/bench_wnut17.py --epochs=1 --sides=tf    # a quick look
  python tools/bench_wnut17.py --sides=tf,torch,torch_bf16   # + HF with bf16=True

Same checkpoint (all-MiniLM-L6-v2), data (../shared/data/wnut17 train/dev), tag set,
alignment (a word's tag on its first wordpiece, other pieces ignored: HF's run_ner with
label_all_tokens=False), hyperparameters (AdamW, weight decay 0.01 off biases and
LayerNorm, 10% linear warmup then linear decay, clip 1.0, dropout 0.1, max 128
wordpieces) and metric: both sides' dev predictions go, per word, through the same
tf_finetune.tasks.metrics.entity_report (seqeval strict IOB2, plus conlleval's F1). Both
sides average the loss over the step's labelled words (tf_finetune's default
task.loss_average=token, HF's convention); --loss_average=sentence runs the tf side with
each sentence's mean first. Each side runs in its own process; prints dev entity F1 /
precision / recall, training examples/s, wall time and peak RSS.
Precision: the tf side runs what `train.precision=auto` picks (mixed_bfloat16 where the CPU
computes bfloat16 natively, else float32; printed); `torch` is float32 and `torch_bf16` the
Trainer's `bf16=True` (several times slower than float32 on a CPU without bfloat16 units).
"""
import time

import benchlib
from absl import app
from absl import flags

TORCH_SIDES = benchlib.TORCH_SIDES
_RUN = flags.DEFINE_enum("run", None, ["tf", *TORCH_SIDES],
                         "Internal: run one side in this process.")
_SIDES = flags.DEFINE_list("sides", ["tf", "torch"], "Sides to run.")
_EPOCHS = flags.DEFINE_float("epochs", None, "Epochs (default: configs/wnut17.py's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_LOSS_AVERAGE = flags.DEFINE_enum(
    "loss_average", None, ["sentence", "token"],
    "tf side's task.loss_average (default: configs/wnut17.py's); HF averages over tokens.")

def _config():
  overrides = {"train.seed": _SEED.value,
               "train.adam_epsilon": 1e-8,  # HF's default
               "train.eval_every": 10**9,  # one evaluation, at the end, as on the PyTorch side
               "train.log_every": 50}
  if _EPOCHS.value:
    overrides["train.epochs"] = _EPOCHS.value
  if _LOSS_AVERAGE.value:
    overrides["task.loss_average"] = _LOSS_AVERAGE.value
  return benchlib.load_config("wnut17", overrides)


def run_tf():
  from tf_finetune.training import trainer as trainer_lib
  c = _config()
  start = time.time()
  t = trainer_lib.Trainer(c, benchlib.scratch_dir("bench_wnut17_tf_"))
  train_start = time.time()
  t.train()
  train_time = time.time() - train_start
  report = t.evaluate_dev()
  return {"side": "tf", "precision": t.precision, "report": report, "steps": t.total_steps,
          "examples_per_sec": t.total_steps * c.train.batch_size / train_time,
          "wall_s": time.time() - start, "peak_rss_mb": benchlib.peak_rss_mb()}


def run_torch(side):
  import torch
  import transformers
  from tf_finetune import checkpoints
  from tf_finetune import experiment
  from tf_finetune.tasks import metrics
  c = _config()
  start = time.time()
  splits, labels = experiment.load_data(c)
  tags = labels.labels
  directory = str(checkpoints.resolve_checkpoint_dir(c.model.checkpoint))
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  transformers.set_seed(_SEED.value)
  model = transformers.AutoModelForTokenClassification.from_pretrained(
      directory, num_labels=len(tags), id2label=dict(enumerate(tags)),
      label2id={t: i for i, t in enumerate(tags)})

  def data(split):
    """First-wordpiece labels, -100 elsewhere (HF run_ner, label_all_tokens=False)."""
    encodings = tokenizer(split.tokens, is_split_into_words=True, truncation=True,
                          max_length=c.data.max_seq_length)
    labels = []
    for i, sentence_tags in enumerate(split.tags):
      row, previous = [], None
      for w in encodings.word_ids(i):
        row.append(-100 if w is None or w == previous else tags.index(sentence_tags[w]))
        previous = w
      labels.append(row)
    dataset = benchlib.torch_dataset(encodings, labels)
    dataset.word_ids = [encodings.word_ids(i) for i in range(len(split))]
    return dataset

  train_data, dev_data = data(splits["train"]), data(splits["dev"])
  args = transformers.TrainingArguments(
      output_dir=benchlib.scratch_dir("bench_wnut17_torch_"), num_train_epochs=c.train.epochs,
      per_device_train_batch_size=c.train.batch_size, per_device_eval_batch_size=64,
      learning_rate=c.train.learning_rate, weight_decay=c.train.weight_decay,
      warmup_steps=c.train.warmup_fraction, lr_scheduler_type="linear",
      max_grad_norm=c.train.max_grad_norm, adam_epsilon=1e-8,
      train_sampling_strategy="group_by_length", seed=_SEED.value, save_strategy="no",
      eval_strategy="no", report_to=[], logging_steps=50, use_cpu=True,
      bf16=TORCH_SIDES[side])
  trainer = transformers.Trainer(
      model=model, args=args, train_dataset=train_data,
      data_collator=transformers.DataCollatorForTokenClassification(tokenizer))
  train_start = time.time()
  result = trainer.train()
  train_time = time.time() - train_start
  model.eval()
  predicted = []
  with torch.no_grad():
    for i in range(len(dev_data)):
      item = {k: torch.tensor([v]) for k, v in dev_data[i].items() if k != "labels"}
      pieces = model(**item).logits[0].argmax(-1).numpy()
      first = {}
      for k, w in enumerate(dev_data.word_ids[i]):
        if w is not None:
          first.setdefault(w, k)
      words = len(splits["dev"].tokens[i])
      predicted.append([tags[pieces[first[w]]] if w in first else "O" for w in range(words)])
  report = metrics.entity_report(splits["dev"].tags, predicted)
  steps = result.global_step
  return {"side": side, "precision": "bf16" if TORCH_SIDES[side] else "float32",
          "report": report, "steps": steps,
          "examples_per_sec": steps * c.train.batch_size / train_time,
          "wall_s": time.time() - start, "peak_rss_mb": benchlib.peak_rss_mb(),
          "torch_threads": torch.get_num_threads()}


def main(argv):
  if _RUN.value:
    result = run_tf() if _RUN.value == "tf" else run_torch(_RUN.value)
    benchlib.emit(result)
    return
  flag_args = [f"--seed={_SEED.value}"] + ([f"--epochs={_EPOCHS.value}"] if _EPOCHS.value else [])
  flag_args += [f"--loss_average={_LOSS_AVERAGE.value}"] if _LOSS_AVERAGE.value else []
  c = _config()
  print(f"seed {c.train.seed}, {c.train.epochs:g} epochs; tf side: task.loss_average="
        f"{c.task.loss_average}", flush=True)
  for side in _SIDES.value:
    result = benchlib.run_side(__file__, [f"--run={side}", *flag_args, *argv[1:]])
    r = result["report"]
    print(f"{side} ({result['precision']}): dev entity F1 {r['entity_f1']:.4f} (P {r['entity_precision']:.4f}, "
          f"R {r['entity_recall']:.4f}; conlleval F1 {r['entity_f1_conlleval']:.4f}) | "
          f"{result['examples_per_sec']:.1f} train examples/s | {result['steps']} steps | "
          f"wall {result['wall_s']:.0f}s | peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    print("       per type F1: " + ", ".join(f"{k} {v['f1']:.3f} ({v['support']})"
                                              for k, v in r["per_class"].items()), flush=True)


if __name__ == "__main__":
  app.run(main)
