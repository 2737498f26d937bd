"""Explain a run's predictions with integrated gradients over the token embeddings.

  python -m tf_finetune.explain --workdir=runs/sst2 "a gripping, funny film" "dull"
  python -m tf_finetune.explain --workdir=runs/sst2 --input=texts.txt --label=0 --steps=64

One text per argument or per input line (sentence-pair runs: text<TAB>pair, one tab; a
blank or malformed line is refused, naming it, before any text is explained). Prints, per
text and explained output, each word's and each wordpiece's attribution and the
completeness gap (sum of attributions minus logit(text) - logit(baseline)); writes an HTML
page with the words shaded (default WORKDIR/explain/explanations.html) and the same figures
as JSON beside it. Classification explains the predicted label, multi-label each predicted
label, regression the score, unless --label names others.
"""
import json
import pathlib

from absl import app
from absl import flags

import tf_finetune  # noqa: F401
from tf_finetune import cli
from tf_finetune.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a checkpoint path.")
_INPUT = flags.DEFINE_string("input", None, "File with one text per line ('-': stdin).")
_LABEL = flags.DEFINE_list("label", [], "Labels to explain (default: the predicted ones).")
_STEPS = flags.DEFINE_integer("steps", 32, "Quadrature points of the path integral to start "
                              "with; doubled while the completeness gap is over --max_gap.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 512, "At most this many points.")
_MAX_GAP = flags.DEFINE_float("max_gap", 0.05, "Largest completeness gap accepted, as a share "
                              "of |logit(text) - logit(baseline)|.")
_OUTPUT = flags.DEFINE_string("output", None, "HTML page to write (default: "
                              "WORKDIR/explain/explanations.html); .json beside it.")


def main(argv):
  cli.import_tensorflow_quietly()
  from tf_finetune import atomic
  from tf_finetune import experiment
  from tf_finetune.evaluation import explain
  texts = cli.read_texts(argv[1:], _INPUT.value, verb="explain")
  blank = next((n for n, text in enumerate(texts, start=1) if not text.strip()), None)
  if blank:
    raise UserError(f"{cli.text_place(argv[1:], _INPUT.value, blank)}: the text is blank; "
                    "nothing was explained")
  run = experiment.load_run(_WORKDIR.value, _CHECKPOINT.value)
  pairs = bool(run.config.data.text_pair_column)
  if pairs:
    cli.check_pair_lines(texts, argv[1:], _INPUT.value, "explain")
  explainer = explain.IntegratedGradients(run, _STEPS.value, _MAX_STEPS.value, _MAX_GAP.value)
  output = pathlib.Path(_OUTPUT.value or run.workdir.root / "explain" / "explanations.html")
  if output.is_dir():
    raise UserError(f"--output={output}: is a directory; give the HTML page's file name")
  atomic.writable_directory(output.parent)
  explanations = []
  for text in texts:
    pair = None
    if pairs:
      text, pair = text.split("\t")
    for e in explainer.explain(text, pair, _LABEL.value or None):
      explanations.append(e)
      print("\n".join(explain.text_lines(e)))
  title = f"{run.workdir.root.name}: step {run.step}"
  atomic.write_text(output, explain.html_page(explanations, title))
  atomic.write_text(output.with_suffix(".json"), json.dumps(
      {"checkpoint": run.checkpoint, "step": run.step, "max_gap": _MAX_GAP.value,
       "explanations": [e.to_json() for e in explanations]}, indent=1, ensure_ascii=False))
  print(f"wrote {output} and {output.with_suffix('.json').name}")


if __name__ == "__main__":
  app.run(cli.guard(main), flags_parser=cli.parse_flags)
