"""Config pieces that several configs, the tests and the tools share (big_vision's
configs/common.py). Not a config itself: it has no get_config()."""


def tiny_model(c, checkpoint=None):
  """A random-weight BERT of 2 layers, hidden 32 (smoke configs and tests): the architecture
  of `checkpoint`'s config.json (default: the config's) with these sizes."""
  c.model.random_init = True
  if checkpoint:
    c.model.checkpoint = str(checkpoint)
  c.model.num_layers = 2
  c.model.hidden_dim = 32
  c.model.num_heads = 2
  c.model.intermediate_dim = 64
  return c


def sst2_technique_budget(c, max_train_examples=8000, epochs=1.0):
  """The reduced SST-2 budget that tools/bench_techniques.py, bench_ensemble.py and
  bench_distill.py compare at: a label-stratified sample of max_train_examples, `epochs`,
  batch 32, max 64 wordpieces, learning rate 5e-5, dev only."""
  c.data.max_seq_length = 64
  c.data.max_train_examples = max_train_examples
  c.train.epochs, c.train.batch_size, c.train.learning_rate = epochs, 32, 5e-5
  c.train.eval_splits = "dev"
  c.train.log_every = 50
  return c
