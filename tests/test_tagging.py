"""Token classification: word-to-wordpiece alignment, entity metrics, and NER served from
raw text with character offsets."""
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (REPO, SHARED, assert_no_texts_give_no_rows, override, requires_shared,
                            tiny_model_config)
from tf_finetune import config as config_lib
from tf_finetune import experiment
from tf_finetune import text_encoder
from tf_finetune.data import pipeline
from tf_finetune.data import sources
from tf_finetune.errors import ConfigError, DataError
from tf_finetune.tasks import tagging
from tf_finetune.evaluation import evaluator
from tf_finetune.export import serving
from tf_finetune.training import trainer as trainer_lib

NER_DATA = config_lib.EXAMPLES_DIR


def ner_config(data_dir=NER_DATA, **train):
  """configs/smoke_ner.py's tiny model on the project's own CoNLL sentences, dropout off."""
  c = tiny_model_config()
  c.task.name = "tagging"
  c.data.source = "conll"
  c.data.dir = str(data_dir)
  c.data.train_file, c.data.dev_file = "ner_train.conll", "ner_dev.conll"
  c.data.max_seq_length = 32
  c.train.steps, c.train.batch_size, c.train.learning_rate = 6, 8, 3e-3
  c.train.eval_every, c.train.log_every = 50, 50
  c.train.eval_splits = "dev"
  return override(c, train)


def _task_and_splits(config):
  splits, labels = experiment.load_data(config)
  from tf_finetune import tasks
  return tasks.get_task(config, labels, experiment.build_encoder(config)), splits


def test_vocabulary_has_b_and_i_of_every_train_type():
  task, _ = _task_and_splits(ner_config())
  assert task.label_vocabulary.labels == [
      "O", "B-location", "I-location", "B-organization", "I-organization", "B-person", "I-person"]


def test_only_first_wordpieces_carry_tags(tmp_path):
  (tmp_path / "train.conll").write_text(
      "Redondo\tB-location\nBeachfront\tI-location\nrocks\tO\n\nhi\tO\nAnnan\tB-person\n")
  config = ner_config(tmp_path, data__train_file="train.conll", data__dev_file="train.conll")
  task, splits = _task_and_splits(config)
  encoder = task.encoder
  values = task.label_values(splits["train"])
  batch = next(iter(pipeline.eval_dataset(splits["train"], values, task, batch_size=2)))
  pieces = [[encoder.tokenizer.id_to_token(int(i)) for i in row] for row in batch["token_ids"]]
  names = task.label_vocabulary.labels
  for row, tags in zip(range(2), splits["train"].tags):
    labelled = [(pieces[row][k], names[t]) for k, t in enumerate(batch["label"][row].numpy())
                if t >= 0]
    # One label per word, on the piece that starts it; [CLS], [SEP], ## pieces, padding: -1.
    assert [tag for _, tag in labelled] == tags
    assert all(not piece.startswith("##") and piece not in ("[CLS]", "[SEP]", "[PAD]")
               for piece, _ in labelled)
  assert (batch["label"].numpy() >= 0).sum() == 5
  assert batch["label"][1, -1] == tagging.IGNORED_LABEL  # padding of the shorter sentence


def test_loss_ignores_unlabelled_pieces():
  task, _ = _task_and_splits(ner_config())
  labels = tf.constant([[-1, 2, -1, 0, -1]])
  logits = tf.random.normal([1, 5, len(task.label_vocabulary)], seed=1)
  moved = tf.tensor_scatter_nd_update(logits, [[0, 0], [0, 2], [0, 4]],
                                      tf.random.normal([3, len(task.label_vocabulary)]) * 10)
  np.testing.assert_allclose(task.build_losses(labels, logits), task.build_losses(labels, moved),
                             rtol=1e-6)
  expected = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=[2, 0], logits=tf.gather(logits[0], [1, 3])))
  np.testing.assert_allclose(task.build_losses(labels, logits), [expected], rtol=1e-6)


@pytest.mark.parametrize("average", ["token", "sentence"])
def test_training_loss_averages_over_words_or_sentences(tmp_path, average):
  # MiniLM's vocabulary: its wordpieces give sentences of clearly different lengths.
  config = ner_config(task__loss_average=average, model__checkpoint="all-MiniLM-L6-v2")
  trainer = trainer_lib.Trainer(config, tmp_path / "run")
  values = trainer.task.label_values(trainer.splits["train"])
  batch = next(iter(pipeline.eval_dataset(trainer.splits["train"], values, trainer.task,
                                          batch_size=8)))
  logits = trainer.model({k: batch[k] for k in experiment.MODEL_INPUTS}, training=False)
  labels = batch["label"].numpy()
  labelled = labels >= 0
  assert len(set(labelled.sum(-1))) > 1  # sentences of different lengths: the averages differ
  piece_losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=np.maximum(labels, 0), logits=logits).numpy()
  token_mean = piece_losses[labelled].mean()
  sentence_mean = np.mean([row[kept].mean() for row, kept in zip(piece_losses, labelled)])
  assert abs(token_mean - sentence_mean) > 1e-3
  loss, _, _ = trainer.strategy.run(tf.function(trainer.replica_step), args=(batch,))
  expected = token_mean if average == "token" else sentence_mean
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_token_average_accumulated_equals_the_big_batch(tmp_path, strategy):
  """The denominator is the labelled words of the whole step (every micro-batch, every
  replica), so 2 x 4 sentences give the update of 8 although micro-batches differ in words."""
  weights = {}
  for accum in (1, 2):
    config = ner_config(task__loss_average="token", train__steps=2,
                        train__grad_accum_steps=accum, data__bucketing=False,
                        data__shuffle_buffer=0, distribution__strategy=strategy)
    trainer = trainer_lib.Trainer(config, tmp_path / f"accum{accum}")
    trainer.train()
    weights[accum] = [v.numpy() for v in trainer.model.trainable_variables]
  for a, b in zip(weights[1], weights[2]):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_loss_average_must_be_sentence_or_token():
  with pytest.raises(ConfigError, match="task.loss_average.*must be sentence or token"):
    ner_config(task__loss_average="word")


def test_tag_scheme_iob1_reads_the_run_files_as_iob2_and_others_are_refused(tmp_path):
  (tmp_path / "train.conll").write_text("Ann\tI-person\nmet\tO\nBob\tI-person\nJo\tB-person\n")
  (tmp_path / "dev.conll").write_text("Paris\tI-location\nis\tO\n")
  files = dict(data__dir=str(tmp_path), data__train_file="train.conll",
               data__dev_file="dev.conll")
  with pytest.raises(DataError, match=r"train.conll:1: tag 'I-person' begins an entity"):
    experiment.load_data(ner_config(**files))
  splits, _ = experiment.load_data(ner_config(**files, data__tag_scheme="iob1"))
  assert splits["train"].tags == [["B-person", "O", "B-person", "B-person"]]
  assert splits["dev"].tags == [["B-location", "O"]]
  with pytest.raises(ConfigError, match="data.tag_scheme.*'bilou'.*must be one of iob2, iob1, "
                                       "bioes"):
    ner_config(data__tag_scheme="bilou")
  with pytest.raises(ConfigError, match="data.tag_scheme='iob1': reads tags, which "
                                       "data.source='tsv' has none of"):
    override(tiny_model_config(), dict(data__source="tsv", data__tag_scheme="iob1"))


def test_unseen_dev_type_stops_with_the_word_line(tmp_path):
  (tmp_path / "train.conll").write_text("Paris\tB-location\nis\tO\n")
  (tmp_path / "dev.conll").write_text("-DOCSTART-\tO\n\nhi\tO\n\nwe\tO\nlove\tO\nNokia\tB-corp\n")
  config = ner_config(tmp_path, data__train_file="train.conll", data__dev_file="dev.conll")
  task, splits = _task_and_splits(config)
  with pytest.raises(DataError, match=r"dev.conll:7: tag 'B-corp' of the dev split"):
    task.label_values(splits["dev"])


def test_words_cut_by_max_seq_length_count_as_predicted_outside(tmp_path):
  words = [f"word{i}" for i in range(20)] + ["Oslo"]
  (tmp_path / "train.conll").write_text(
      "\n".join(f"{w}\t{'B-location' if w == 'Oslo' else 'O'}" for w in words) + "\n")
  config = ner_config(tmp_path, data__train_file="train.conll", data__dev_file="train.conll",
                      data__max_seq_length=8, model__checkpoint="all-MiniLM-L6-v2")
  task, splits = _task_and_splits(config)
  values = task.label_values(splits["dev"])
  # [CLS] + 6 pieces + [SEP] (MiniLM's vocabulary): "word0" is 2 pieces, so 3 words keep a first piece.
  assert (values.positions[0] >= 0).sum() == 3
  logits = np.zeros([1, 8, len(task.label_vocabulary)], np.float32)
  report = task.report(values, logits)
  assert report["words_without_prediction"] == 18
  assert report["entity_recall"] == 0.0 and report["per_class"]["location"]["support"] == 1


@pytest.mark.parametrize("max_seq_length", [8, 16, 64])
def test_cut_words_logged_at_startup_are_the_words_without_a_position(max_seq_length):
  """log_lengths counts cut words from piece counts, without a second encode_words."""
  config = ner_config(data__max_seq_length=max_seq_length)
  task, splits = _task_and_splits(config)
  for split in splits.values():
    counts = task.encoder.word_piece_counts(split.tokens)
    positions = task.label_values(split).positions
    assert tagging.words_without_piece(counts, task.encoder) == sum(
        int((p < 0).sum()) for p in positions)
    np.testing.assert_array_equal([len(c) for c in counts], [len(p) for p in positions])


def _flat_entities(task, tag_rows):
  """The serving decoder on rows of tag names; (row, type, first word, last word + 1)."""
  names = task.label_vocabulary.labels
  ids = [names.index(t) for row in tag_rows for t in row]
  rows = [r for r, row in enumerate(tag_rows) for _ in row]
  offsets = list(range(len(ids)))
  starts = [o - sum(len(x) for x in tag_rows[:rows[o]]) for o in offsets]
  out = task._entities(tf.constant(ids, tf.int32), tf.ones([len(ids)]),
                       tf.constant(rows, tf.int32), tf.constant(starts, tf.int32),
                       tf.constant(starts, tf.int32) + 1, len(tag_rows))
  return sorted(zip(out["row"].numpy().tolist(), [t.decode() for t in out["type"].numpy()],
                    out["start"].numpy().tolist(), out["end"].numpy().tolist()))


def test_serving_span_decoder_matches_seqeval_strict():
  task, _ = _task_and_splits(ner_config())
  rng = random.Random(0)
  names = task.label_vocabulary.labels
  for _ in range(30):
    tag_rows = [[rng.choice(names) for _ in range(rng.randint(1, 12))] for _ in range(4)]
    expected = sorted((r, t, s, e) for r, row in enumerate(tag_rows)
                      for t, s, e in sources.bio_entities(row))
    assert _flat_entities(task, tag_rows) == expected, tag_rows


TRICKY_TEXTS = ["Zoë   Kravitz moved to São Paulo 😀 last year .",
                "  naïve café\tdone 😀😀 ok  ", "東京タワー is tall", "a\u200bb!!  Ünïcödé…",
                "", "   "]


def test_word_offsets_give_back_each_word():
  words, starts, ends = text_encoder.split_words(tf.constant(TRICKY_TEXTS))
  for text, ws, ss, es in zip(TRICKY_TEXTS, words.to_list(), starts.to_list(), ends.to_list()):
    assert [text[s:e] for s, e in zip(ss, es)] == [w.decode("utf-8") for w in ws]
  assert words.to_list()[0][:2] == [b"Zo\xc3\xab", b"Kravitz"]
  assert [w.decode() for w in words.to_list()[3]] == ["a", "b", "!", "!", "Ünïcödé", "…"]


def test_every_word_an_entity_gives_back_its_surface():
  """A stand-in model that tags every first wordpiece B-person: each word is an entity
  (unpacked: packing calls the model's layers, which the stand-in has not)."""
  config = ner_config(data__packing=False)
  task, _ = _task_and_splits(config)
  b_person = task.label_vocabulary.labels.index("B-person")
  model = lambda features, training: tf.one_hot(
      tf.fill(tf.shape(features["token_ids"]), b_person), len(task.label_vocabulary)) * 5.0
  out = task.serve_text(model, tf.constant(TRICKY_TEXTS))
  words, _, _ = text_encoder.split_words(tf.constant(TRICKY_TEXTS))
  for i, text in enumerate(TRICKY_TEXTS):
    n = int(out["entity_count"][i])
    spans = [text[s:e] for s, e in zip(out["entity_start"][i, :n].numpy(),
                                       out["entity_end"][i, :n].numpy())]
    assert spans == [t.decode() for t in out["entity_text"][i, :n].numpy()]
    kept = [w.decode() for w in words[i].numpy() if task.encoder.tokenize([w]).row_lengths()[0]]
    assert spans == kept, text
    assert all(t == b"person" for t in out["entity_type"][i, :n].numpy())


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ner") / "run"
  trainer_lib.Trainer(ner_config(train__steps=200, train__eval_every=100), workdir).train()
  evaluator.evaluate_workdir(workdir)
  return workdir


def test_tiny_model_learns_entities_and_reports_them(ner_run):
  report = json.loads((ner_run / "eval" / "report.json").read_text())
  dev = report["splits"]["dev"]
  assert report["task"] == "tagging" and report["best_metric"] == "entity_f1"
  assert dev["entity_f1"] > 0.8, dev
  assert set(dev["per_class"]) == {"location", "organization", "person"}
  assert dev["num_entities"] == sum(c["support"] for c in dev["per_class"].values())
  rows = (ner_run / "eval" / "predictions.tsv").read_text().splitlines()[1:]
  split, origin, gold, predicted, _, text = rows[0].split("\t")
  assert origin.endswith("ner_dev.conll:3") and len(gold.split()) == len(text.split())


def _as_iob1(conll_text):
  """IOB2 lines to IOB1: a B- that follows no word of its type becomes I-."""
  lines, previous = [], "O"
  for line in conll_text.split("\n"):
    if "\t" in line:
      word, tag = line.split("\t")
      if tag.startswith("B-") and previous[2:] != tag[2:]:
        tag = "I-" + tag[2:]
      line, previous = f"{word}\t{tag}", tag
    else:
      previous = "O"
    lines.append(line)
  return "\n".join(lines)


def test_a_held_out_file_tagged_iob1_is_scored_with_evaluates_file_tag_scheme(ner_run, tmp_path):
  iob2 = tmp_path / "iob2" / "held_out.conll"
  iob1 = tmp_path / "iob1" / "held_out.conll"
  for path in (iob2, iob1):
    path.parent.mkdir()
  iob2.write_text((NER_DATA / "ner_dev.conll").read_text())
  iob1.write_text(_as_iob1(iob2.read_text()))
  assert iob1.read_text() != iob2.read_text()
  with pytest.raises(DataError, match=r"held_out.conll:3: tag 'I-person' begins an entity.*"
                                      r"looks tagged IOB1.*served. Give --file_tag_scheme=iob1, "
                                      r"which converts its tags to IOB2$"):
    evaluator.evaluate_file(ner_run, iob1)
  as_iob1 = evaluator.evaluate_file(ner_run, iob1, tag_scheme="iob1",
                                    output=str(tmp_path / "out1"))["splits"]["held_out.conll"]
  as_iob2 = evaluator.evaluate_file(ner_run, iob2, output=str(tmp_path / "out2"))
  assert as_iob1 == as_iob2["splits"]["held_out.conll"] and as_iob1["num_entities"] > 0
  with pytest.raises(ConfigError, match=r"--file_tag_scheme: .*held_out.conll is read as "
                                       r"data.source='tsv', which has no tags"):
    evaluator.evaluate_file(ner_run, iob1, source="tsv", tag_scheme="iob1")


def test_export_serves_entities_with_character_offsets(ner_run):
  export = serving.export_saved_model(ner_run)
  served = tf.saved_model.load(str(export)).signatures["serving_default"]
  texts = ["Zoë   Kravitz moved to São Paulo 😀 last year .",
           "Yesterday  Nokia opened an office in Kyoto ! 🎉", "nothing to see here , just a quiet day ."]
  out = served(text=tf.constant(texts))
  assert_no_texts_give_no_rows(served)
  found = []
  for i, text in enumerate(texts):
    for j in range(int(out["entity_count"][i])):
      start, end = int(out["entity_start"][i, j]), int(out["entity_end"][i, j])
      assert text[start:end] == out["entity_text"][i, j].numpy().decode("utf-8")
      found.append((i, out["entity_type"][i, j].numpy().decode(), text[start:end]))
  assert found == [(0, "person", "Zoë   Kravitz"), (0, "location", "São Paulo"),
                   (1, "organization", "Nokia"), (1, "location", "Kyoto")]

  # Served word tags equal the evaluator's word predictions on the dev sentences.
  rows = [r.split("\t") for r in (ner_run / "eval" / "predictions.tsv").read_text()
          .splitlines()[1:]]
  out = served(text=tf.constant([r[5] for r in rows]))
  for i, row in enumerate(rows):
    n = int(out["word_count"][i])
    assert [t.decode() for t in out["word_tag"][i, :n].numpy()] == row[3].split(), row[5]


def test_predict_prints_entities(ner_run):
  export = serving.export_saved_model(ner_run)  # its own: it runs alone too
  result = subprocess.run(
      [sys.executable, "-m", "tf_finetune.predict", f"--model={export}", "--output_format=jsonl",
       "Zoë   Kravitz moved to São Paulo 😀 last year ."],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert [(e["type"], e["text"], e["start"], e["end"]) for e in line["entities"]] == [
      ("person", "Zoë   Kravitz", 0, 13), ("location", "São Paulo", 23, 32)]


def test_hf_export_is_a_token_classifier_with_the_same_logits(ner_run):
  torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
  import transformers
  path = serving.export_hf(ner_run)
  hf_model = transformers.AutoModelForTokenClassification.from_pretrained(str(path)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
  batch = tokenizer([["Zoë", "Kravitz", "moved", "to", "São", "Paulo"], ["hi"]],
                    is_split_into_words=True, padding=True, return_tensors="pt")
  with torch.no_grad():
    theirs = hf_model(**batch).logits.numpy()
  model = experiment.load_run(ner_run, "best").model
  ours = model({"token_ids": batch["input_ids"].numpy().astype(np.int32),
                "segment_ids": batch["token_type_ids"].numpy().astype(np.int32),
                "padding_mask": batch["attention_mask"].numpy().astype(np.int32)}, training=False)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)
  assert hf_model.config.id2label[0] == "O"


@requires_shared("wnut17", "dev.conll")
def test_alignment_matches_transformers_word_ids_on_wnut17():
  """First-wordpiece positions equal those from the reference tokenizer (tokenizer.json,
  is_split_into_words=True, truncation at max_seq_length) on every WNUT-17 dev tweet."""
  from tokenizers import Tokenizer
  from tf_finetune import checkpoints
  from tf_finetune.tasks import tagging
  config = config_lib.base_config()
  config.data.max_seq_length = 48
  encoder = experiment.build_encoder(config)
  sentences = sources.read_conll(SHARED / "wnut17" / "dev.conll").tokens
  _, ours = tagging.word_positions(sentences, encoder)
  reference = Tokenizer.from_file(str(checkpoints.resolve_checkpoint_dir(
      config.model.checkpoint) / "tokenizer.json"))
  reference.enable_truncation(max_length=48)
  cut = 0
  for words, positions in zip(sentences, ours):
    word_ids = reference.encode(words, is_pretokenized=True).word_ids
    first = {}
    for k, w in enumerate(word_ids):
      if w is not None:
        first.setdefault(w, k)
    assert positions.tolist() == [first.get(w, -1) for w in range(len(words))], words
    cut += int((positions < 0).sum())
  assert cut > 0  # some tweets are longer than 48 wordpieces: truncation is exercised


def test_static_shapes_pad_piece_labels_with_ignored_label():
  config = ner_config(data__static_shapes=True)
  task, splits = _task_and_splits(config)
  values = task.label_values(splits["dev"])
  widths = {b - 1 for b in pipeline.bucket_boundaries(config.data.max_seq_length)}
  batches = list(pipeline.eval_dataset(splits["dev"], values, task, batch_size=5,
                                       static_shapes=True))
  for batch in batches:
    assert batch["label"].shape[0] == 5 and batch["label"].shape[1] in widths
    padding = batch["padding_mask"].numpy() == 0
    assert (batch["label"].numpy()[padding] == tagging.IGNORED_LABEL).all()
  labelled = sum(int((b["label"].numpy() >= 0).sum()) for b in batches)
  assert labelled == sum(int((p >= 0).sum()) for p in values.positions)
  train = pipeline.train_dataset(splits["train"], task.label_values(splits["train"]), task,
                                 batch_size=4, seed=0, shuffle_buffer=0, bucketing=True,
                                 static_shapes=True)
  for batch in train.take(5):
    assert batch["label"].shape[1] in widths
    padding = batch["padding_mask"].numpy() == 0
    assert (batch["label"].numpy()[padding] == tagging.IGNORED_LABEL).all()


def test_smoke_ner_config_runs_on_a_machine_without_shared_data(tmp_path, monkeypatch):
  monkeypatch.setenv("TF_FINETUNE_SHARED_DATA", str(tmp_path / "absent"))
  config = config_lib.load(REPO / "configs" / "smoke_ner.py", {"train.steps": 2})
  assert config.data.dir == str(NER_DATA)
  trainer = trainer_lib.Trainer(config, tmp_path / "run")
  before = [v.numpy().copy() for v in trainer.model.trainable_variables]
  trainer.train()
  after = [v.numpy() for v in trainer.model.trainable_variables]
  changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
  assert sum(changed) >= len(changed) - 2  # all but the pooler, which tagging does not use
  assert json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())["step"] == 2
