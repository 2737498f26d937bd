"""Integrated gradients' completeness gap on the SST-2 dev set, by number of quadrature points.

  python -m tf_finetune.train --config=configs/sst2.py --workdir=runs/sst2_8k \
      --config.data.max_train_examples=8000
  python tools/bench_explain.py --workdir=runs/sst2_8k             # all 872 dev sentences
  python tools/bench_explain.py --workdir=runs/sst2_8k --limit=200 --points=16,32

For each fixed number of Gauss-Legendre points (no doubling), the relative completeness gap
|sum of attributions - (logit(x) - logit(baseline))| / |logit(x) - logit(baseline)| of the
predicted label over the dev sentences: median, 90th and 99th percentile, largest, the share
under 5%, and seconds per sentence; then the default (start at explain.DEFAULT_STEPS, double
while over explain.MAX_GAP): the points it used and the share it left unconverged.
"""
import time

import numpy as np
from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained SST-2 run.", required=True)
_POINTS = flags.DEFINE_list("points", ["8", "16", "32", "64"], "Fixed numbers of points.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Dev sentences to explain (0: all).")


def _summary(gaps, seconds):
  gaps = np.asarray(gaps)
  return (f"median {np.median(gaps):.4f}  p90 {np.percentile(gaps, 90):.4f}  "
          f"p99 {np.percentile(gaps, 99):.4f}  max {gaps.max():.4f}  "
          f"under 5%: {np.mean(gaps <= 0.05):.1%}  {seconds / len(gaps):.3f} s/sentence")


def main(argv):
  del argv
  from tf_finetune import experiment
  from tf_finetune.evaluation import explain
  run = experiment.load_run(_WORKDIR.value)
  splits, _ = experiment.load_data(run.config, run.labels)
  texts = splits["dev"].texts[:_LIMIT.value or None]
  print(f"{run.workdir.root} (step {run.step}), {len(texts)} dev sentences, "
        f"model {run.config.model.checkpoint}, max_seq_length {run.config.data.max_seq_length}")
  for points in map(int, _POINTS.value):
    explainer = explain.IntegratedGradients(run, steps=points, max_steps=points)
    start = time.perf_counter()
    gaps = [explainer.explain(text)[0].relative_gap for text in texts]
    print(f"{points:4d} points: {_summary(gaps, time.perf_counter() - start)}")
  explainer = explain.IntegratedGradients(run)
  start = time.perf_counter()
  results = [explainer.explain(text)[0] for text in texts]
  seconds = time.perf_counter() - start
  used = np.array([e.steps for e in results])
  print(f"default (start {explain.DEFAULT_STEPS}, double to {explain.MAX_STEPS} while the gap "
        f"is over {explain.MAX_GAP:.0%}): "
        f"{_summary([e.relative_gap for e in results], seconds)}; points used: " +
        ", ".join(f"{p}: {np.mean(used == p):.1%}" for p in sorted(set(used.tolist()))) +
        f"; unconverged {np.mean([not e.converged() for e in results]):.1%}")


if __name__ == "__main__":
  app.run(main)
