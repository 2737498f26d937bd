"""6-way emotion classification with all-MiniLM-L6-v2, from ../shared/data/emotion
(16,000 train, 2,000 val; imbalanced: surprise is 3.6% of train).

  python -m tf_finetune.train --config=configs/emotion.py --workdir=runs/emotion
  python -m tf_finetune.train --config=configs/emotion.py --workdir=runs/emotion_balanced \
      --config.task.class_weights=balanced

Files are `text;label_name` with a header. The report gives macro F1 and the confusion
matrix; train.best_metric is macro_f1, which the rare classes weigh on as much as the rest.
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  shared = config_lib.shared_data_dir()
  c.data.source = "csv"
  c.data.delimiter = ";"
  c.data.dir = str(shared / "emotion") if shared else ""
  c.data.train_file = "train.txt"
  c.data.dev_file = "val.txt"
  c.data.text_column = "text"
  c.data.label_column = "label_name"
  c.data.max_seq_length = 64
  c.train.epochs = 1.0
  c.train.batch_size = 32
  c.train.learning_rate = 1e-4
  c.train.eval_every = 250
  c.train.best_metric = "macro_f1"
  c.train.eval_splits = "dev"
  return c
