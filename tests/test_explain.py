"""Integrated gradients (evaluation/explain.py, `python -m tf_finetune.explain`)."""
import dataclasses
import json
import random
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.conftest import REPO, tiny_config, write_pair_tsv
from tests.test_tagging import ner_config
from tf_finetune import checkpoints
from tf_finetune import config as config_lib
from tf_finetune import experiment
from tf_finetune import text_encoder
from tf_finetune.data import labels as labels_lib
from tf_finetune.errors import ConfigError
from tf_finetune.evaluation import evaluator
from tf_finetune.evaluation import explain
from tf_finetune.training import trainer as trainer_lib

FILLER = ["the", "plot", "film", "cast", "acting", "every", "minute", "from", "start", "to",
          "finish", "and", "of", "a"]


def _keyword_rows(n, seed):
  """Label 1 exactly when the text holds "superb"; the other words are filler."""
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 8))]
    if i % 2:
      words.insert(rng.randrange(len(words) + 1), "superb")
    rows.append(f"{' '.join(words)}\t{i % 2}")
  return rows


@pytest.fixture(scope="module")
def keyword_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("explain")
  data = root / "data"
  data.mkdir()
  for name, n, seed in (("train.tsv", 96, 0), ("dev.tsv", 32, 1)):
    (data / name).write_text("sentence\tlabel\n" + "\n".join(_keyword_rows(n, seed)) + "\n")
  trainer_lib.Trainer(tiny_config(data, train__steps=80, train__learning_rate=3e-3,
                                  train__eval_every=40, train__log_every=40),
                      root / "run").train()
  run = experiment.load_run(root / "run")
  report = evaluator.evaluate_workdir(root / "run")
  assert report["splits"]["dev"]["accuracy"] == 1.0  # it learned the rule
  return run


def test_the_token_the_output_depends_on_gets_the_largest_attribution(keyword_run):
  explainer = explain.IntegratedGradients(keyword_run)
  for text in ["the plot and superb acting of the cast", "superb film", "a cast superb"]:
    [e] = explainer.explain(text)
    assert e.label == "1"
    attributions = {w: a for w, _, _, _, a in e.words}
    assert max(attributions, key=attributions.get) == "superb", e.words
    assert attributions["superb"] > 0.5 * (e.logit - e.baseline_logit)
    assert e.converged() and e.relative_gap <= explain.MAX_GAP
    assert sum(a for _, a in e.pieces) == pytest.approx(e.total)
  [e] = explainer.explain("the plot and superb acting", labels=["0"])  # a chosen label
  assert e.label == "0" and min(e.words, key=lambda w: w[4])[0] == "superb"


def test_fixed_points_leave_a_gap_that_doubling_closes(keyword_run):
  """The toy model flips sharply along the path: 32 Gauss-Legendre points miss it, and the
  gap reported is the real one (sum of attributions vs the two logits)."""
  fixed = explain.IntegratedGradients(keyword_run, steps=8, max_steps=8)
  [coarse] = fixed.explain("superb")
  assert coarse.steps == 8 and not coarse.converged()
  [fine] = explain.IntegratedGradients(keyword_run, steps=8).explain("superb")
  assert fine.steps > 8 and fine.converged()
  assert fine.logit == pytest.approx(coarse.logit) and \
      fine.baseline_logit == pytest.approx(coarse.baseline_logit)


def test_max_gap_is_the_bar_of_every_convergence_report(keyword_run):
  """--max_gap decides the doubling, the printed NOT CONVERGED and the JSON's converged
  alike; a negative one, which no gap can meet, is refused."""
  with pytest.raises(ConfigError, match=r"--max_gap=-0.1: .*>= 0"):
    explain.IntegratedGradients(keyword_run, max_gap=-0.1)
  [coarse] = explain.IntegratedGradients(keyword_run, steps=8, max_steps=8).explain("superb")
  assert coarse.relative_gap > explain.MAX_GAP
  assert "NOT CONVERGED" in explain.text_lines(coarse)[1]
  assert coarse.to_json()["converged"] is False
  loose = 2 * coarse.relative_gap
  [e] = explain.IntegratedGradients(keyword_run, steps=8, max_steps=8,
                                    max_gap=loose).explain("superb")
  assert e.steps == 8 and e.converged() and e.max_gap == loose
  assert "NOT CONVERGED" not in explain.text_lines(e)[1]
  assert e.to_json()["converged"] is True and e.to_json()["max_gap"] == loose


def test_words_sum_their_wordpieces_and_cut_words_are_marked_not_read(keyword_run):
  explainer = explain.IntegratedGradients(keyword_run)
  [e] = explainer.explain("superbly, the cast")  # superb ##l ##y , the cast
  assert [w for w, *_ in e.words] == ["superbly", ",", "the", "cast"]
  assert [p for p, _ in e.pieces][:3] == ["superb", "##l", "##y"]
  assert e.words[0][4] == pytest.approx(sum(a for _, a in e.pieces[:3]))
  assert e.words[0][2:4] == (0, 8) and e.words[3][2:4] == (14, 18)
  long_text = " ".join(["the cast"] * 20) + " superb"  # 41 wordpieces, 32 kept
  [e] = explainer.explain(long_text)
  assert e.truncated and e.words[-1][4] is None and len(e.pieces) == 30
  # head_tail keeps the first quarter and the last three quarters of the budget.
  spec = checkpoints.read_tokenizer_spec(checkpoints.resolve_checkpoint_dir(
      keyword_run.config.model.checkpoint))
  head_tail = dataclasses.replace(keyword_run, encoder=text_encoder.TextEncoder(
      spec, 32, long_text="head_tail"))
  [e] = explain.IntegratedGradients(head_tail).explain(long_text)
  read = [w[4] is not None for w in e.words]
  assert read[:7] == [True] * 7 and not read[7] and read[-1]  # 7 = 30 // 4 head pieces
  assert sum(read) == 30


def test_refusals_name_what_is_not_supported(keyword_run, tmp_path):
  with pytest.raises(ConfigError, match="task.name in classification, zero_shot, setfit, multilabel, regression"):
    explain.IntegratedGradients(dataclasses.replace(keyword_run, config=ner_config()))
  windows = config_lib.override(keyword_run.config.copy_and_resolve_references(),
                                {"data.long_text": "windows"})
  with pytest.raises(ConfigError, match="data.long_text='windows' pools several windows"):
    explain.IntegratedGradients(dataclasses.replace(keyword_run, config=windows))
  with pytest.raises(ConfigError, match=r"--label='maybe': not an output of this run \(0, 1\)"):
    explain.IntegratedGradients(keyword_run).explain("superb", labels=["maybe"])


def test_html_page_shades_every_word_and_escapes_the_text(keyword_run):
  [e] = explain.IntegratedGradients(keyword_run).explain("the <b>cast</b> & superb")
  page = explain.html_page([e], "run")
  assert ">&lt;</span><span" in page and "<b>" not in page and ">&amp;</span>" in page
  assert page.count("<span title=") == len(e.words)


@pytest.mark.slow
def test_completeness_on_the_real_checkpoint():
  """all-MiniLM-L6-v2 with a fresh two-label head: attributions add up to the logit change
  within MAX_GAP for both labels, and every word gets one."""
  import keras
  keras.utils.set_random_seed(0)
  config = config_lib.base_config()
  config.data.max_seq_length = 64
  labels = labels_lib.LabelVocabulary(["negative", "positive"])
  task, model = experiment.build_model(config, labels)
  run = experiment.Run(None, config, labels, task.encoder, task, model, "", 0)
  explainer = explain.IntegratedGradients(run)
  for text in ["A gripping, beautifully acted film.", "Dull and far too long.",
               "Café crème: naïve but charming!"]:
    for label in ("negative", "positive"):
      [e] = explainer.explain(text, labels=[label])
      assert e.converged(), (text, label, e.gap, e.steps)
      words = text_encoder.split_words(tf.constant([text]))[0].numpy()[0]
      assert len(e.words) == len(words) and all(w[4] is not None for w in e.words)


@pytest.mark.slow
def test_explain_command_prints_and_writes_the_page(keyword_run, tmp_path):
  out = tmp_path / "page.html"
  result = subprocess.run(
      [sys.executable, "-m", "tf_finetune.explain", f"--workdir={keyword_run.workdir.root}",
       f"--output={out}", "the superb cast", "a plot"], capture_output=True, text=True,
      cwd=REPO, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "superb +" in result.stdout and "completeness gap" in result.stdout
  data = json.loads(out.with_suffix(".json").read_text())
  assert [e["text"] for e in data["explanations"]] == ["the superb cast", "a plot"]
  assert all(e["relative_completeness_gap"] <= 0.05 or abs(e["completeness_gap"]) <= 1e-3
             for e in data["explanations"])
  assert out.read_text().startswith("<!doctype html>")
  bad = subprocess.run(
      [sys.executable, "-m", "tf_finetune.explain", f"--workdir={keyword_run.workdir.root}",
       "--label=maybe", "x"], capture_output=True, text=True, cwd=REPO, timeout=600)
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
      "error: --label='maybe': not an output of this run (0, 1)")
  texts = tmp_path / "texts.txt"  # before, lines 1-2 were explained, then a blank line 3 refused
  texts.write_text("the superb cast\na plot\n\nthe end\n")
  blank = subprocess.run(
      [sys.executable, "-m", "tf_finetune.explain", f"--workdir={keyword_run.workdir.root}",
       f"--input={texts}", f"--output={out}"], capture_output=True, text=True, cwd=REPO,
      timeout=600)
  assert blank.returncode == 1 and blank.stdout == ""
  assert blank.stderr.strip().splitlines()[-1] == (
      f"error: {texts}:3: the text is blank; nothing was explained")
  folder = tmp_path / "pages"
  folder.mkdir()
  taken = subprocess.run(  # refused before any text is explained, naming --output itself
      [sys.executable, "-m", "tf_finetune.explain", f"--workdir={keyword_run.workdir.root}",
       f"--output={folder}", "the superb cast"], capture_output=True, text=True, cwd=REPO,
      timeout=600)
  assert taken.returncode == 1 and "completeness gap" not in taken.stdout
  assert taken.stderr.strip().splitlines()[-1] == (
      f"error: --output={folder}: is a directory; give the HTML page's file name")


def test_sentence_pairs_map_words_of_both_segments_through_truncation(tmp_path):
  data = write_pair_tsv(tmp_path / "pairs", ["was", "is", "start", "finish"])
  config = tiny_config(data, train__steps=2, data__max_seq_length=12)
  config.data.text_column, config.data.text_pair_column = "premise", "hypothesis"
  trainer_lib.Trainer(config, tmp_path / "run").train()
  run = experiment.load_run(tmp_path / "run")
  explainer = explain.IntegratedGradients(run)
  text, pair = "the film was long and every minute", "it is not long at all"
  [e] = explainer.explain(text, pair)
  assert [(w, g) for w, g, *_ in e.words] == [(w, 0) for w in text.split()] + [
      (w, 1) for w in pair.split()]
  # Round-robin truncation keeps a prefix of each segment's wordpieces, 9 in all.
  counts = run.encoder.word_piece_counts([text.split(), pair.split()])
  kept = {0: 0, 1: 0}
  for segment in (0, 1):
    read = [a is not None for _, g, _, _, a in e.words if g == segment]
    assert read == sorted(read, reverse=True)  # a prefix of the words is read
    kept[segment] = sum(c for c, r in zip(counts[segment], read) if r)
  assert e.truncated and len(e.pieces) == 9 and abs(kept[0] - kept[1]) <= 1 + max(
      max(counts[0]), max(counts[1]))
  page = explain.html_page([e], "pairs")
  # Paragraph breaks after the figures and between the two texts.
  assert page.count("</p><p>") == 2 and ">all</span></p>" in page
