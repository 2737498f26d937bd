"""What an ensemble buys: dev accuracy of N fine-tuned seeds alone and averaged.

  python tools/bench_ensemble.py                    # 3 seeds, SST-2, the techniques budget
  python tools/bench_ensemble.py --seeds=0,1,2,3,4 --max_train_examples=67349

Trains configs/sst2.py at tools/bench_techniques.py's budget once per seed (train.seed and
data.split_seed, so each model also sees another sample of the train set), exports each,
and runs the 872 dev sentences through every export and through
tf_finetune.predict.Predictor over all of them (probabilities averaged). Prints each
model's dev accuracy, their mean, and the ensemble's.
"""

import numpy as np
import benchlib
from absl import app
from absl import flags

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "One model per seed.")
_MAX_TRAIN = flags.DEFINE_integer("max_train_examples", 8000, "Train examples per model.")
_EPOCHS = flags.DEFINE_float("epochs", 1.0, "Epochs.")



def main(argv):
  del argv
  from tf_finetune import experiment
  from tf_finetune import predict
  from tf_finetune.export import serving
  from tf_finetune.training import trainer as trainer_lib
  exports, dev = [], None
  for seed in _SEEDS.value:
    c = benchlib.sst2_budget({"data.split_seed": int(seed), "train.seed": int(seed)},
                             _MAX_TRAIN.value, _EPOCHS.value)
    workdir = benchlib.scratch_dir(f"bench_ensemble_{seed}_")
    trainer_lib.Trainer(c, workdir).train()
    exports.append(str(serving.export_saved_model(workdir)))
    if dev is None:
      dev = experiment.load_data(c)[0]["dev"]
  gold = np.asarray([int(x) for x in dev.labels])

  def accuracy(paths):
    run = predict.Predictor(paths)
    predicted = []
    for start in range(0, len(dev), 128):
      out = run(dev.texts[start:start + 128])
      predicted += [int(x.decode()) for x in out["label"].numpy()]
    return float(np.mean(np.asarray(predicted) == gold))

  alone = [accuracy([path]) for path in exports]
  together = accuracy(exports)
  print(f"SST-2 dev (872), {_MAX_TRAIN.value} train examples, {_EPOCHS.value} epoch(s) per model")
  for seed, value in zip(_SEEDS.value, alone):
    print(f"seed {seed}: dev accuracy {value:.4f}")
  print(f"mean of {len(alone)} models: {np.mean(alone):.4f}; best single: {max(alone):.4f}")
  print(f"ensemble (probabilities averaged): {together:.4f} "
        f"({100 * (together - np.mean(alone)):+.2f} points over the mean, "
        f"{100 * (together - max(alone)):+.2f} over the best)")


if __name__ == "__main__":
  app.run(main)
