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
import pathlib
import sys
import tempfile
import time

from absl import app
from absl import flags

_TEACHER = flags.DEFINE_string("teacher_workdir", "", "A finished SST-2 run to distill.")
_MAX_TRAIN = flags.DEFINE_integer("max_train_examples", 8000, "Train examples.")
_LAYERS = flags.DEFINE_string("student_layers", "0,2,4", "Teacher layers the student keeps.")

REPO = pathlib.Path(__file__).resolve().parent.parent


def main(argv):
  del argv
  sys.path.insert(0, str(REPO))
  from configs import sst2
  from tf_finetune import config as config_lib
  from tf_finetune import experiment
  from tf_finetune.data import pipeline
  from tf_finetune.training import peft
  from tf_finetune.training import trainer as trainer_lib

  def config(**keys):
    c = sst2.get_config()
    c.data.max_seq_length = 64
    c.data.max_train_examples = _MAX_TRAIN.value
    c.train.epochs, c.train.batch_size, c.train.learning_rate = 1.0, 32, 5e-5
    c.train.eval_splits = "dev"
    c.train.log_every = 100
    for key, value in keys.items():
      section, name = key.split("__")
      c[section][name] = value
    return config_lib.validate(c)

  def measure(workdir):
    wd = experiment.Workdir(workdir)
    c, labels = wd.load_config(), wd.load_labels()
    task, model = experiment.build_model(c, labels, pretrained=False)
    experiment.restore_model(wd, model)
    dev = experiment.load_data(c, labels)[0]["dev"]
    values = task.label_values(dev)
    dataset = pipeline.eval_dataset(dev, values, experiment.build_encoder(c), batch_size=64)
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
    teacher = tempfile.mkdtemp(prefix="bench_distill_teacher_")
    trainer_lib.Trainer(config(), teacher).train()
  rows = [("teacher (6 layers)", teacher)]
  for name, alpha in (("student, distilled", 0.5), ("student, labels only", 0.0)):
    workdir = tempfile.mkdtemp(prefix="bench_distill_student_")
    trainer_lib.Trainer(config(distill__teacher_workdir=teacher,
                               distill__student_layers=_LAYERS.value, distill__alpha=alpha),
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
