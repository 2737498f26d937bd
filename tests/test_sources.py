import importlib
import json
import logging
import sys
import unicodedata

import pytest

from tests.conftest import SHARED, requires_shared
from tf_finetune import config as config_lib
from tf_finetune.data import labels as labels_lib
from tf_finetune.data import sources
from tf_finetune.errors import DataError, UserError


def test_tsv_with_pairs_and_quotes(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_text('s1\ts2\tlabel\n"quoted" start\tsecond one\tyes\nplain\tother\tno\n')
  split = sources.read_delimited(path, delimiter="\t", text_column="s1", text_pair_column="s2",
                                 label_column="label")
  assert split.texts == ['"quoted" start', "plain"]
  assert split.text_pairs == ["second one", "other"]
  assert split.labels == ["yes", "no"]
  assert split.origins == [f"{path}:2", f"{path}:3"]


def test_csv_and_headerless_columns(tmp_path):
  path = tmp_path / "d.csv"
  path.write_text('"hello, world",pos\nbye,neg\n')
  split = sources.read_delimited(path, delimiter=",", text_column="0", label_column="1",
                                 has_header=False)
  assert split.texts == ["hello, world", "bye"] and split.labels == ["pos", "neg"]


def test_semicolon_delimited_emotion_style(tmp_path):
  path = tmp_path / "e.txt"
  path.write_text("text;label\ni feel fine;joy\n")
  split = sources.read_delimited(path, delimiter=";", text_column="text", label_column="label")
  assert split.labels == ["joy"]


def test_jsonl(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text(json.dumps({"text": "a", "label": 3}) + "\n" + json.dumps({"text": "b", "label": "x"}) + "\n")
  split = sources.read_jsonl(path, text_column="text", label_column="label")
  assert split.labels == ["3", "x"]


@pytest.mark.parametrize("content,message", [
    (b"sentence\tlabel\ngood\t1\nbad row without tab\n", ":3: expected 2 fields separated by '\\t', found 1"),
    (b"sentence\tlabel\ngood\t1\n\xff\xfebroken\t0\n", ":3: bytes b'\\xff' are not valid UTF-8"),
    (b"text\tlabel\ngood\t1\n", ":1: no text column 'sentence'"),
    (b"sentence\tlabel\ngood\t\n", ":2: empty label"),
    (b"sentence\tlabel\ngood\t1\n\nbad\t0\n", ":3: blank line"),
])
def test_malformed_tsv_names_file_line_problem(tmp_path, content, message):
  path = tmp_path / "train.tsv"
  path.write_bytes(content)
  with pytest.raises(DataError) as e:
    sources.read_delimited(path, delimiter="\t", text_column="sentence", label_column="label")
  assert str(e.value).startswith(str(path)) and message in str(e.value)


@pytest.mark.parametrize("line,message", [
    ("{not json", ":2: invalid JSON"),
    ('{"text": "a"}', ":2: missing field 'label'"),
    ('{"text": 5, "label": "x"}', ":2: field 'text' must be a string"),
    # Python's json reads these as floats; a label "NaN" would have been a class.
    ('{"text": "a", "label": NaN}', ":2: field 'label' is NaN, not a finite number"),
    ('{"text": "a", "label": -Infinity}', ":2: field 'label' is -Infinity, not a finite number"),
    ('{"text": "a", "label": 1e400}', ":2: field 'label' is 1e400, not a finite number"),
    ('{"text": NaN, "label": "x"}', ":2: field 'text' must be a string"),
])
def test_malformed_jsonl(tmp_path, line, message):
  path = tmp_path / "d.jsonl"
  path.write_text('{"text": "ok", "label": "y"}\n' + line + "\n")
  with pytest.raises(DataError, match=message):
    sources.read_jsonl(path, text_column="text", label_column="label")


def test_dev_label_unseen_in_train_names_its_line(tmp_path):
  (tmp_path / "train.tsv").write_text("sentence\tlabel\na\tpos\nb\tneg\n")
  (tmp_path / "dev.tsv").write_text("sentence\tlabel\nc\tpos\nd\tneutral\n")
  c = config_lib.base_config()
  c.data.source, c.data.dir = "tsv", str(tmp_path)
  c.data.train_file, c.data.dev_file, c.data.text_column = "train.tsv", "dev.tsv", "sentence"
  splits = sources.load_splits(c.data)
  vocab = labels_lib.LabelVocabulary.from_train(splits["train"].labels)
  with pytest.raises(DataError, match=r"dev.tsv:3: label 'neutral' of the dev split"):
    vocab.encode(splits["dev"])


def test_label_vocabulary_order_and_round_trip(tmp_path):
  vocab = labels_lib.LabelVocabulary.from_train(["10", "2", "2", "1"])
  assert vocab.labels == ["1", "2", "10"]
  vocab.save(tmp_path / "labels.json")
  assert labels_lib.LabelVocabulary.load(tmp_path / "labels.json") == vocab


def test_bbc_news_split_is_fixed_and_stratified():
  c = config_lib.base_config()
  splits = sources.load_splits(c.data)
  sizes = {k: len(v) for k, v in splits.items()}
  assert sum(sizes.values()) == 2225
  assert 215 <= sizes["dev"] <= 230 and 215 <= sizes["test"] <= 230
  again = sources.load_splits(c.data)
  assert again["test"].origins == splits["test"].origins
  assert not set(splits["train"].origins) & set(splits["test"].origins)
  # BBC News repeats 101 articles; none of dev or test repeats a train article.
  train_texts = {" ".join(t.split()).casefold() for t in splits["train"].texts}
  for name in ("dev", "test"):
    assert not train_texts & {" ".join(t.split()).casefold() for t in splits[name].texts}
  assert sorted(set(splits["test"].labels)) == ["business", "entertainment", "politics", "sports", "tech"]
  # The one cp1252 article decodes with its pound sign.
  everything = splits["train"].texts + splits["dev"].texts + splits["test"].texts
  assert any("\u00a315.8m signing from Parma" in t for t in everything)


def test_carves_dev_from_train_when_absent(tmp_path):
  lines = ["sentence\tlabel"] + [f"text {i}\t{i % 2}" for i in range(40)]
  (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
  c = config_lib.base_config()
  c.data.source, c.data.dir, c.data.train_file, c.data.text_column = "tsv", str(tmp_path), "train.tsv", "sentence"
  splits = sources.load_splits(c.data)
  assert len(splits["train"]) == 36 and len(splits["dev"]) == 4
  assert sorted(splits["dev"].labels) == ["0", "0", "1", "1"]


def test_a_carved_dev_split_takes_no_copy_of_a_train_example(tmp_path):
  lines = ["sentence\tlabel"] + [f"text {i}\t{i % 2}" for i in range(40)]
  copies = [f"Text  {i}\t{i % 2}" for i in range(0, 40, 3)]  # the same words, case and spacing aside
  c = config_lib.base_config()
  c.data.source, c.data.dir, c.data.train_file, c.data.text_column = "tsv", str(tmp_path), "train.tsv", "sentence"
  (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
  plain = sources.load_splits(c.data)
  (tmp_path / "train.tsv").write_text("\n".join(lines + copies) + "\n")
  splits = sources.load_splits(c.data)
  assert len(splits["train"]) + len(splits["dev"]) == 54  # nothing left out
  words = lambda split: {" ".join(t.split()).lower() for t in split.texts}
  assert not words(splits["train"]) & words(splits["dev"])
  # The originals are carved as without the copies; a copy follows its original.
  lines_of = lambda split: {int(o.rsplit(":", 1)[1]) for o in split.origins}
  assert lines_of(plain["dev"]) == {n for n in lines_of(splits["dev"]) if n <= 41}
  assert words(plain["dev"]) == words(splits["dev"])
  # A label whose examples are copies of one text has one distinct example: too few.
  (tmp_path / "train.tsv").write_text("\n".join(lines + ["same\trare", "Same\trare"]) + "\n")
  with pytest.raises(DataError, match=r"train.tsv:42: label 'rare' has 2 examples in .*train.tsv, "
                     r"all the same text \(.*train.tsv:42, .*train.tsv:43; 1 such label\(s\): "
                     r"\['rare'\]\): one distinct example, too few to carve"):
    sources.load_splits(c.data)


def test_tfds_local_dataset_by_name(tmp_path):
  import tensorflow as tf
  import tensorflow_datasets as tfds
  features = tfds.features.FeaturesDict({
      "sentence": tfds.features.Text(),
      "label": tfds.features.ClassLabel(names=["neg", "pos"])})
  examples = [{"sentence": f"text {i}", "label": i % 2} for i in range(10)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name="tiny_local_sentiment", version="1.0.0", features=features,
      split_datasets={"train": tf.data.Dataset.from_generator(
          lambda: iter(examples), output_signature=features.get_tensor_spec())},
      config=None, data_dir=str(tmp_path))
  split = sources.read_tfds("tiny_local_sentiment", "train", data_dir=str(tmp_path),
                            text_column="sentence", label_column="label")
  assert sorted(split.texts) == sorted(e["sentence"] for e in examples)
  assert set(split.labels) == {"neg", "pos"}


def test_tfds_missing_dataset_fails_without_download(tmp_path):
  with pytest.raises(DataError, match="tfds:"):
    sources.read_tfds("no_such_dataset_xyz", "train", data_dir=str(tmp_path),
                      text_column="text", label_column="label")


def test_label_first_lines_trec_style(tmp_path):
  path = tmp_path / "trec.txt"
  path.write_text("DESC:manner How did serfdom develop in Russia ?\n"
                  "NUM:date When was Ozzy Osbourne born ?\n")
  split = sources.read_label_first(path, coarse_label_separator=":")
  assert split.labels == ["DESC", "NUM"] and split.texts[1] == "When was Ozzy Osbourne born ?"
  assert sources.read_label_first(path).labels == ["DESC:manner", "NUM:date"]
  path.write_text("DESC:manner How ?\nLOC:other\n")
  with pytest.raises(DataError, match=r"trec.txt:2: expected a label, a space and a text"):
    sources.read_label_first(path)
  path.write_text("DESC\tHow did serfdom develop ?\nNUM When ?\n")  # a tab was read as label
  split = sources.read_label_first(path)
  assert split.labels == ["DESC", "NUM"] and split.texts == ["How did serfdom develop ?", "When ?"]
  path.write_text("DESC:manner How ?\n:other What ?\n")  # the coarse label was "", a class
  with pytest.raises(DataError, match=r"trec.txt:2: label ':other' has nothing before "
                                      r"data.coarse_label_separator=':'"):
    sources.read_label_first(path, coarse_label_separator=":")


def test_jsonl_list_labels_are_joined(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text('{"text": "a", "labels": ["x", "y"]}\n{"text": "b", "labels": []}\n')
  split = sources.read_jsonl(path, text_column="text", label_column="labels", list_separator="|",
                             allow_list_labels=True)
  assert split.labels == ["x|y", ""]
  with pytest.raises(DataError, match=r"train.jsonl:1: field 'labels' is a list, \['x', 'y'\]; "
                                      "a list of labels is for task.name='multilabel'"):
    sources.read_jsonl(path, text_column="text", label_column="labels")


def test_conll_reader_tabs_spaces_docstart_and_byte_order_marks(tmp_path):
  path = tmp_path / "ner.conll"
  path.write_bytes("-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\n"
                   "Dubbz\ufeff\tB-person\nrocks\tO\n\ufeff\n\nNew\tB-location\nYork\tI-location\n"
                   .encode("utf-8"))
  split = sources.read_conll(path, "dev")
  assert split.tokens == [["EU", "rejects"], ["Dubbz", "rocks"], ["New", "York"]]
  assert split.tags == [["B-ORG", "O"], ["B-person", "O"], ["B-location", "I-location"]]
  assert split.origins == [f"{path}:3", f"{path}:6", f"{path}:10"]
  path.write_text("New\tB-location\nYork\tLOC\n")
  with pytest.raises(DataError, match=r"ner.conll:2: tag 'LOC' is not O, B-<type> or I-<type>"):
    sources.read_conll(path)
  path.write_text("New\tB-location\nYork\n")
  with pytest.raises(DataError, match=r"ner.conll:2: expected a word and its tag"):
    sources.read_conll(path)
  # Lines end at \n (or \r\n) only: a word holding U+2028 or U+0085 stays whole.
  path.write_text("Pa\u2028ris\tB-location\nis\tO\n\nbi\x85g\tO\nYork\tLOC\n")
  with pytest.raises(DataError, match=r"ner.conll:5: tag 'LOC' is not O"):
    sources.read_conll(path)
  path.write_text("Pa\u2028ris\tB-location\nis\tO\n\nbi\x85g\tO\n")
  assert sources.read_conll(path).tokens == [["Pa\u2028ris", "is"], ["bi\x85g"]]


# CoNLL-2003 as first released: IOB1, where I- begins an entity and B- only one that follows
# another of its type.
IOB1_LINES = ("EU\tI-ORG\nrejects\tO\nGerman\tI-MISC\ncall\tO\n\n"
              "Peter\tI-PER\nBlackburn\tI-PER\nmet\tO\nJohn\tI-PER\nSarah\tB-PER\n\n")
IOB2_TAGS = [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER", "O", "B-PER", "B-PER"]]


def test_a_conll_file_tagged_iob1_is_refused_as_iob2_and_converted_with_tag_scheme_iob1(tmp_path):
  path = tmp_path / "ner.conll"
  path.write_text(IOB1_LINES)
  with pytest.raises(DataError, match=r"ner.conll:1: tag 'I-ORG' begins an entity.* 4 of the "
                                      r"file's 5 entities .*looks tagged IOB1.*"
                                      r"--config.data.tag_scheme=iob1"):
    sources.read_conll(path)
  assert sources.read_conll(path, tag_scheme="iob1").tags == IOB2_TAGS
  path.write_text("\n\n".join("\n".join(f"w\t{tag}" for tag in tags) for tags in IOB2_TAGS))
  assert sources.read_conll(path, tag_scheme="iob1").tags == IOB2_TAGS  # IOB2 reads the same


def test_a_conll_file_tagged_bioes_is_converted_with_tag_scheme_bioes(tmp_path):
  path = tmp_path / "ner.conll"
  path.write_text("EU\tS-ORG\nrejects\tO\n\nPeter\tB-PER\nvan\tI-PER\nBlackburn\tE-PER\n"
                  "John\tS-PER\n")
  with pytest.raises(DataError, match=r"ner.conll:1: tag 'S-ORG' is not O, B-<type> or "
                                      r"I-<type>: the file looks tagged BIOES. Read it with "
                                      r"--config.data.tag_scheme=bioes, which converts"):
    sources.read_conll(path)
  assert sources.read_conll(path, tag_scheme="bioes").tags == [
      ["B-ORG", "O"], ["B-PER", "I-PER", "I-PER", "B-PER"]]
  path.write_text("EU\tS-ORG\nrejects\tL-ORG\n")
  with pytest.raises(DataError, match=r"ner.conll:2: tag 'L-ORG' is not O, B-<type>, I-<type>, "
                                      r"E-<type> or S-<type>"):
    sources.read_conll(path, tag_scheme="bioes")


def test_an_iob2_file_with_a_stray_inside_tag_is_read_as_written_and_named_in_a_warning(
    tmp_path, caplog):
  path = tmp_path / "ner.conll"
  path.write_text("New\tB-LOC\nYork\tI-LOC\nTimes\tI-ORG\n\nAnn\tB-PER\nsmiled\tO\n\n"
                  "Bob\tB-PER\n")
  with caplog.at_level(logging.WARNING, logger="absl"):
    split = sources.read_conll(path)
  assert split.tags[0] == ["B-LOC", "I-LOC", "I-ORG"]
  assert (f"{path}:3: tag 'I-ORG' continues no ORG entity (1 such tag in the file)" in
          caplog.text)
  assert "--config.data.tag_scheme=iob1" in caplog.text


def test_entities_are_read_the_seqeval_strict_iob2_way():
  tags = ["B-person", "I-person", "O", "I-location", "B-group", "B-group", "I-group", "I-person"]
  assert sources.bio_entities(tags) == [("person", 0, 2), ("group", 4, 5), ("group", 5, 7)]


@requires_shared("wnut17", "dev.conll")
def test_wnut17_files_read_whole_despite_the_stray_byte_order_mark(caplog):
  train = sources.read_conll(SHARED / "wnut17" / "train.conll")
  dev = sources.read_conll(SHARED / "wnut17" / "dev.conll", "dev")
  assert (len(train), len(dev)) == (3394, 1009)  # the counts ../shared/data/README.md gives
  assert sum(map(len, train.tokens)) == 62730 and sum(map(len, dev.tokens)) == 15733
  assert not any("\ufeff" in w for sentence in dev.tokens for w in sentence)
  with caplog.at_level(logging.WARNING, logger="absl"):
    sources.read_conll(SHARED / "wnut17" / "dev.conll", "dev")
  assert "dev.conll:1674: tag 'I-creative-work' continues no creative-work entity" in caplog.text


def test_multilabel_cells_may_be_empty(tmp_path):
  (tmp_path / "train.tsv").write_text("sentence\tlabel\nno entity here\t\nParis trip\tlocation\n")
  split = sources.read_delimited(tmp_path / "train.tsv", delimiter="\t", text_column="sentence",
                                 label_column="label", allow_empty_label=True)
  assert split.labels == ["", "location"]
  with pytest.raises(DataError, match="train.tsv:2: empty label"):
    sources.read_delimited(tmp_path / "train.tsv", delimiter="\t", text_column="sentence",
                           label_column="label")


def _tsv_config(tmp_path, rows, **data):
  directory = tmp_path / "d"
  directory.mkdir(exist_ok=True)
  (directory / "train.tsv").write_text("sentence\tlabel\n" + "".join(
      f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
  c = config_lib.base_config()
  c.data.source, c.data.dir, c.data.train_file = "tsv", str(directory), "train.tsv"
  c.data.text_column = "sentence"
  for key, value in data.items():
    c.data[key] = value
  return config_lib.validate(c).data, directory / "train.tsv"


GOOD = [(f"a fine text number {i}", i % 2) for i in range(20)]


@pytest.mark.parametrize("text,problem", [
    ("", "the text is empty"),
    ("   ", "the text is only whitespace"),
    ("nul\x00inside", "the text holds the control character U+0000 at character 3"),
    ("bell\x07", "the text holds the control character U+0007 at character 4"),
])
def test_unusable_texts_stop_with_file_and_line_or_are_skipped_and_counted(
    tmp_path, text, problem, caplog):
  data, path = _tsv_config(tmp_path, GOOD[:3] + [(text, 1)] + GOOD[3:])
  with pytest.raises(DataError) as e:
    sources.load_splits(data)
  assert str(e.value).startswith(f"{path}:5: {problem}; fix the row, or set data.bad_text=skip")
  data, _ = _tsv_config(tmp_path, GOOD[:3] + [(text, 1)] + GOOD[3:], bad_text="skip")
  with caplog.at_level("WARNING"):
    splits = sources.load_splits(data)
  assert len(splits["train"]) + len(splits["dev"]) == len(GOOD)
  assert f"left out 1 of {len(GOOD) + 1} examples (data.bad_text=skip)" in caplog.text
  assert f"first at {path}:5" in caplog.text


def test_the_control_characters_refused_are_unicodes_category_cc_but_tab_and_line_breaks():
  refused = {c for c in map(chr, range(sys.maxunicode + 1))
             if sources.text_problem(f"a{c}b") is not None}
  assert refused == {c for c in map(chr, range(sys.maxunicode + 1))
                     if unicodedata.category(c) == "Cc" and c not in "\t\n\r"}


def test_labels_spelled_as_different_numbers_are_refused(tmp_path):
  data, path = _tsv_config(tmp_path, GOOD + [("one more text", "1.0")])
  with pytest.raises(DataError, match=rf"{path}:22: label '1.0' is the number '1' of "
                                      rf"{path}:3 spelled another way"):
    sources.load_splits(data)
  jsonl = tmp_path / "d" / "t.jsonl"
  jsonl.write_text("".join(json.dumps({"text": f"text {i}", "label": label}) + "\n"
                           for i, label in enumerate([1, "1", 0, "0"] * 5)))
  split = sources.read_jsonl(jsonl, text_column="text", label_column="label")
  assert split.labels == ["1", "1", "0", "0"] * 5  # a JSON number is its spelling: 1 is "1"
  jsonl.write_text(jsonl.read_text() + json.dumps({"text": "x", "label": 1.0}) + "\n")
  split = sources.read_jsonl(jsonl, text_column="text", label_column="label")
  with pytest.raises(DataError, match="label '1.0' is the number '1'"):
    sources.check_label_spellings({"train": split})


def test_labels_differing_only_in_case_or_holding_a_control_character_are_refused(tmp_path):
  data, path = _tsv_config(tmp_path, [(text, "Pos" if label else "neg")
                                      for text, label in GOOD] + [("one more text", "pos")])
  with pytest.raises(DataError, match=rf"{path}:22: label 'pos' is 'Pos' of {path}:3 in another "
                                      "case; labels are compared as written, so these would be "
                                      "two classes"):
    sources.load_splits(data)
  data, path = _tsv_config(tmp_path, GOOD + [("one more text", "po\x00s")])
  with pytest.raises(DataError, match=rf"{path}:22: label 'po\\x00s' holds the control "
                                      "character U\\+0000 at character 2"):
    sources.load_splits(data)


def test_a_cell_longer_than_pythons_csv_limit_is_read_whole(tmp_path):
  long_text = "word " * 40_000  # 200,000 characters: over csv's default 131,072
  data, _ = _tsv_config(tmp_path, GOOD + [(long_text.strip(), 1)])
  splits = sources.load_splits(data)
  texts = splits["train"].texts + splits["dev"].texts
  assert long_text.strip() in texts


def test_blank_jsonl_lines_are_skipped_and_counted(tmp_path, caplog):
  path = tmp_path / "d.jsonl"
  path.write_text('{"text": "a", "label": "x"}\n\n   \n{"text": "b", "label": "y"}\n')
  with caplog.at_level("INFO", logger="absl"):
    split = sources.read_jsonl(path, text_column="text", label_column="label")
  assert split.texts == ["a", "b"] and split.origins[1].endswith(":4")
  assert "skipped 2 blank line(s)" in caplog.text


def test_a_text_with_a_unicode_line_separator_stays_one_row(tmp_path):
  data, _ = _tsv_config(tmp_path, GOOD + [("before\u2028after\x85", 1)])
  with pytest.raises(DataError, match=r":22: the text holds the control character U\+0085"):
    sources.load_splits(data)
  data, _ = _tsv_config(tmp_path, GOOD + [("before\u2028after", 1)])
  splits = sources.load_splits(data)
  assert "before\u2028after" in splits["train"].texts + splits["dev"].texts


def test_a_csv_row_after_a_multi_line_cell_is_named_by_the_line_it_starts_on(tmp_path):
  path = tmp_path / "d.csv"
  path.write_text('text,label\n"two\nlines",1\nnext,0\nbad,row,here\n')
  with pytest.raises(DataError, match=r"d\.csv:5: expected 2 fields"):
    sources.read_delimited(path, delimiter=",", text_column="text", label_column="label")
  path.write_text('text,label\n"two\nlines",1\nnext,0\n')
  split = sources.read_delimited(path, delimiter=",", text_column="text", label_column="label")
  assert split.texts == ["two\nlines", "next"]
  assert split.origins == [f"{path}:2", f"{path}:4"]


@pytest.mark.parametrize("content, message", [
    ('text,label\ngood,1\n"unclosed,0\nnext,1\nlast,0\n',
     r"d\.csv:3: a quoted cell opened in the row on this line is not closed before the end"),
    ('text,label\ngood,1\n"two\nlines"x,0\n', r"d\.csv:3: ',' expected after '\"' \(the row "
     r"reaches line 4\)"),
    ('"text,label\ngood,1\n', r"d\.csv:1: a quoted cell opened"),
])
def test_a_csv_row_that_does_not_parse_is_named_by_the_line_it_starts_on(tmp_path, content,
                                                                         message):
  """csv.reader reports where it stopped (the end of the file for an unclosed quote), not
  where the row began; a broken header row was a traceback."""
  path = tmp_path / "d.csv"
  path.write_text(content)
  with pytest.raises(DataError, match=message):
    sources.read_delimited(path, delimiter=",", text_column="text", label_column="label")


def test_a_header_naming_a_used_column_twice_is_refused(tmp_path):
  path = tmp_path / "d.tsv"
  path.write_text("text\tsource\ttext\tlabel\n a\tx\tb\t1\n")
  with pytest.raises(DataError, match=r"d\.tsv:1: the header names 2 columns 'text' \(columns "
                     r"1, 3\), so the text column is ambiguous"):
    sources.read_delimited(path, delimiter="\t", text_column="text", label_column="label")
  path.write_text("text\tsource\tsource\tlabel\na\tx\ty\t1\n")  # an unused name twice
  assert sources.read_delimited(path, delimiter="\t", text_column="text",
                                label_column="label").texts == ["a"]


def test_a_jsonl_object_with_a_field_twice_is_refused(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"text": "a", "label": "1"}\n{"text": "b", "label": "0", "text": "c"}\n')
  with pytest.raises(DataError, match=r"d\.jsonl:2: field 'text' appears more than once"):
    sources.read_jsonl(path, text_column="text", label_column="label")
  path.write_text('{"text": "a", "label": "1", "meta": {"k": 1, "k": 2}, "id": 1, "id": 2}\n')
  assert sources.read_jsonl(path, text_column="text", label_column="label").texts == ["a"]


def test_dev_and_test_examples_that_repeat_train_examples_are_counted_in_a_warning(tmp_path,
                                                                                  caplog):
  import logging
  train = tmp_path / "train.tsv"
  train.write_text("text\tpair\tlabel\na\tx\t1\nb\tx\t0\nc\tx\t1\n")
  dev = tmp_path / "dev.tsv"
  dev.write_text("text\tpair\tlabel\nd\tx\t1\nb\tx\t0\na\ty\t1\nc\tx\t0\n")
  read = lambda path: sources.read_delimited(path, delimiter="\t", text_column="text",
                                             text_pair_column="pair", label_column="label")
  with caplog.at_level(logging.WARNING):
    sources.warn_of_overlap_with_train({"train": read(train), "dev": read(dev)})
  (warning,) = [r.getMessage() for r in caplog.records]
  assert warning.startswith(  # a different pair (a, y) is not a repeat; a different label is
      f"dev: 2 of 4 examples (50.0%) have the text of a train example (the first: {dev}:3 "
      f"repeats {train}:3); dev metrics on them overstate")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    sources.warn_of_overlap_with_train({"train": read(train), "test": read(train).subset([])})
  assert not caplog.records


def test_headerless_column_indices_must_not_be_negative(tmp_path):
  path = tmp_path / "d.tsv"
  path.write_text("a\t1\n")
  with pytest.raises(DataError, match=r"d\.tsv: has_header=False needs column indices from 0 on, found -5"):
    sources.read_delimited(path, delimiter="\t", text_column="-5", label_column="1",
                           has_header=False)


@pytest.mark.parametrize("codec", ["gzip", "bz2", "lzma"])
def test_a_compressed_data_file_is_read_as_the_text_it_holds(tmp_path, codec):
  compress = importlib.import_module(codec).compress
  content = b"sentence\tlabel\ngood\t1\ncaf\xc3\xa9\t0\nbad row\n"
  packed = tmp_path / "train.tsv"  # known by its first bytes, not by its name
  packed.write_bytes(compress(content))
  with pytest.raises(DataError) as e:  # lines count the text it holds
    sources.read_delimited(packed, delimiter="\t", text_column="sentence", label_column="label")
  assert str(e.value).startswith(f"{packed}:4: expected 2 fields")
  packed.write_bytes(compress(content[:-len(b"bad row\n")]))
  split = sources.read_delimited(packed, delimiter="\t", text_column="sentence",
                                 label_column="label")
  assert (split.texts, split.labels) == (["good", "café"], ["1", "0"])


def test_an_archive_or_a_cut_compressed_file_is_refused_by_name(tmp_path):
  import gzip
  import zipfile
  archive = tmp_path / "train.tsv"
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("train.tsv", "sentence\tlabel\ngood\t1\n")
  with pytest.raises(DataError, match=r"train.tsv: is a zip archive, not a text file; unzip"):
    sources.read_delimited(archive, delimiter="\t", text_column="sentence", label_column="label")
  cut = tmp_path / "dev.jsonl"
  cut.write_bytes(gzip.compress(b'{"text": "a", "label": "x"}\n' * 100)[:30])
  with pytest.raises(DataError, match=r"dev.jsonl: is gzip-compressed, but does not decompress"):
    sources.read_jsonl(cut, text_column="text", label_column="label")


def test_a_header_of_one_column_says_which_delimiter_it_holds(tmp_path):
  path = tmp_path / "train.csv"
  path.write_text("sentence;label\ngood;1\n")
  with pytest.raises(DataError, match=r"train.csv:1: no text column 'sentence' in header "
                     r"\['sentence;label'\]; the header is one column holding ';': if that "
                     r"separates the columns, set data.delimiter=';'"):
    sources.read_delimited(path, delimiter=",", text_column="sentence", label_column="label")


def test_texts_to_predict_may_come_compressed(tmp_path):
  import gzip
  from tf_finetune import cli
  path = tmp_path / "texts.txt.gz"
  path.write_bytes(gzip.compress("one\n\ncaf\u00e9\n".encode()))
  assert cli.read_texts([], str(path)) == ["one", "", "café"]


def test_a_pair_line_needs_one_tab_and_the_error_says_where_it_came_from():
  from tf_finetune import cli
  cli.check_pair_lines(["a\tb", "", " \t ", "c\t"], [], "texts.txt", "predict")  # blank; empty pair
  with pytest.raises(UserError, match=r"^texts.txt:2: a sentence-pair model takes text<TAB>pair, "
                     r"one tab; this line holds 0; nothing was explained$"):
    cli.check_pair_lines(["a\tb", "a b"], [], "texts.txt", "explain")
  with pytest.raises(UserError, match=r"^argument 1: .* this line holds 2; nothing was predicted"):
    cli.check_pair_lines(["a\tb\tc"], ["a\tb\tc"], None, "predict")
  with pytest.raises(UserError, match=r"^standard input:1: "):
    cli.check_pair_lines(["ab"], [], "-", "predict")
