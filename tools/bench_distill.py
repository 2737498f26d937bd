"""Distillation on SST-2: a 3-layer student from a fine-tuned 6-layer all-MiniLM-L6-v2.

  python tools/bench_distill.py
  python tools/bench_distill.py --teacher_workdir=runs/sst2     # reuse a finished teacher

Budget: tools/bench_techniques.py's (the first --max_train_examples of SST-2 train, 1
epoch, batch 32, max 64 wordpieces). Trains the teacher (unless given), then two students
starting from teacher layers 0, 2 and 4 (and its embeddings, pooler and head): one
distilled (alpha 0.5, temperature 2), one on the labels alone (alpha 0), the same steps.
Prints dev accuracy, parameters and inference examples/s (dev set, batch 64, the Keras
model in a tf.function; the best of 3 passes) for each.
"""
import time

import benchlib
from absl import app
from absl import flags

_TEACHER = flags.DEFINE_string("teacher_workdir", "", "A finished SST-2 run to distill.")
_MAX_TRAIN = flags.DEFINE_integer("max_train_examples", 8000, "Train examples.")
_LAYERS = flags.DEFINE_string("student_layers", "0,2,4", "Teacher layers the student keeps.")



def main(argv):
  del argv
  from tf_finetune import experiment
  from tf_finetune import peft
  from tf_finetune.data import pipeline
  from tf_finetune.training import trainer as trainer_lib

  def config(overrides=None):
    return benchlib.sst2_budget(overrides, _MAX_TRAIN.value)

  def measure(workdir):
    run = experiment.load_run(workdir)
    model = run.model
    dev = experiment.load_data(run.config, run.labels)[0]["dev"]
    values = run.task.label_values(dev)
    dataset = pipeline.eval_dataset(dev, values, run.task, batch_size=64)
    batches = list(dataset)
    timings = []
    for _ in range(3):
      start = time.time()
      logits = experiment.predict_logits(model, batches)
      timings.append(time.time() - start)
    accuracy = float((logits.argmax(-1) == values).mean())
    return accuracy, peft.parameter_counts(model)[1], len(dev) / min(timings)

  teacher = _TEACHER.value
  if not teacher:
    teacher = benchlib.scratch_dir("bench_distill_teacher_")
    trainer_lib.Trainer(config(), teacher).train()
  rows = [("teacher (6 layers)", teacher)]
  for name, alpha in (("student, distilled", 0.5), ("student, labels only", 0.0)):
    workdir = benchlib.scratch_dir("bench_distill_student_")
    trainer_lib.Trainer(config({"distill.teacher_workdir": teacher,
                                "distill.student_layers": _LAYERS.value, "distill.alpha": alpha}),
                        workdir).train()
    rows.append((f"{name} ({len(_LAYERS.value.split(','))} layers)", workdir))
  print(f"SST-2 dev (872), {_MAX_TRAIN.value} train examples, 1 epoch; student from teacher "
        f"layers {_LAYERS.value}")
  print("| model | dev accuracy | parameters | inference examples/s |")
  print("|---|---|---|---|")
  for name, workdir in rows:
    accuracy, parameters, speed = measure(workdir)
    print(f"| {name} | {accuracy:.4f} | {parameters:,} | {speed:.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
