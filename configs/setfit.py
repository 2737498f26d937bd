"""Few-shot BBC News topics, SetFit-style: 8 labelled articles per topic, all-MiniLM-L6-v2.

  python -m tf_finetune.train --config=configs/setfit.py --workdir=runs/bbc_setfit
  python -m tf_finetune.train --config=configs/setfit.py --workdir=runs/bbc_setfit_16 \
      --config.data.examples_per_class=16

Stage 1 tunes the encoder on 40 contrastive pairs per article (SetFit's 20 iterations,
CosineSimilarityLoss, batch 16, learning rate 2e-5, one pass, AdamW's epsilon 1e-8 where the
other configs keep BERT's 1e-6: SetFit's defaults, which train with the HF Trainer's); stage 2
fits a logistic regression on the tuned embeddings (tasks/setfit.py) with task.head_c's default
C=100 (SetFit's is 1.0; README, "Few-shot, SetFit-style"). The 40 articles are
drawn per topic with data.split_seed and listed in the run's train_sample.tsv; dev and test
are the default run's full splits. Articles are read to 256 wordpieces, the length the
checkpoint was trained at.
"""
from tf_finetune import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.task.name = "setfit"
  c.task.pairs_per_example = 40
  c.data.examples_per_class = 8
  c.data.max_seq_length = 256
  c.train.epochs = 1.0
  c.train.batch_size = 16
  c.train.learning_rate = 2e-5
  c.train.adam_epsilon = 1e-8
  return c
