"""PII masking (data.mask_pii): e-mail addresses, phone numbers, URLs, IP addresses, payment
card numbers and IBANs become typed placeholders ([EMAIL], [PHONE], ...) before tokenization.

The masking is TensorFlow ops only (RE2 patterns through tensorflow-text's
regex_split_with_offsets, checksums in tensor arithmetic), so the exported SavedModel masks a
served text exactly as training masked its data: one function, in the data pipeline's
preparation and in the serving graph. Written here because the libraries that do this
(presidio-analyzer's pattern recognizers, phonenumbers) are Python, which TF Serving cannot
run, and a Python masker at training beside a different in-graph one at serving would let
the two drift apart.

Types, in the order a candidate is tried: URL, e-mail, IBAN (ISO 13616 mod-97 checksum), IP
(IPv4 dotted quad, IPv6 full or with "::" between groups; not a leading "::", which C++
names such as "Class::add" would match), payment card, phone. Card: 13 to 19 digits, Luhn checksum
and an issuer prefix of Visa, Mastercard, Amex, Discover, JCB, Diners or UnionPay. Phone:
international +CC forms, North American (NPA) NXX-XXXX and NXX-XXXX forms, national forms
with a trunk 0 and a separator after the area code (an unseparated 0-led number is as often
a product code); 7 to 15 digits.
RE2 has no look-around, so a pattern's context is checked with \\b only.
"""
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

_URL_CHAR = r"[^\s<>\"'`()]"
_URL = (rf"(?:\b(?:https?|ftp)://|\bwww\.)(?:{_URL_CHAR}|\({_URL_CHAR}*\))*"  # (...) balanced
        rf"(?:[^\s<>\"'`().,;:!?\]}}]|\({_URL_CHAR}*\))")  # no closing punctuation
_EMAIL = r"[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}"
_IBAN = r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"
_CARD = r"\b\d(?:[ -]?\d){12,18}\b"
_CARD_ISSUER = (r"4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|"
                r"2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}|3[47]\d{13}|"
                r"3(?:0[0-5]|[689]\d)\d{11,16}|6(?:011|5\d\d|4[4-9]\d)\d{12,15}|"
                r"35(?:2[89]|[3-8]\d)\d{12,15}|62\d{14,17}")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_HEX = r"[0-9A-Fa-f]{1,4}"
_IP = (rf"\b{_OCTET}(?:\.{_OCTET}){{3}}\b|\b(?:{_HEX}:){{7}}{_HEX}\b|"
       rf"\b(?:{_HEX}:){{1,6}}:(?:{_HEX}:){{0,5}}{_HEX}\b")
_PHONE = (r"\+\d{1,3}[ .-]?(?:\(0?\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]\d{2,8}){1,5}\b|"
          r"\+\d{8,15}\b|"
          r"\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}\b|\b\d{3}[.-]\d{3}[.-]\d{4}\b|\b\d{3} \d{3} \d{4}\b|"
          r"\b\d{3}-\d{4}\b|"
          r"\b0\d(?:[ .]\d{2}){4}\b|\b0\d{2,4}[ /-]\d{3,8}(?:[ -]\d{3,4})?\b")

def _digits(pieces):
  """Ragged [pieces, (digits)] int32 of each string's decimal digits."""
  only = tf.strings.regex_replace(pieces, r"[^0-9]", "")
  return tf.strings.unicode_decode(only, "UTF-8") - 48


def _luhn(pieces):
  digits = _digits(pieces)
  from_end = tf.expand_dims(digits.row_lengths(), 1) - 1 - tf.cast(
      tf.ragged.range(digits.row_lengths()), tf.int64)
  doubled = tf.where(from_end % 2 == 1, digits * 2, digits)
  doubled = tf.where(doubled > 9, doubled - 9, doubled)
  return tf.math.equal(tf.reduce_sum(doubled, axis=1) % 10, 0)


def _card(pieces):
  only = tf.strings.regex_replace(pieces, r"[^0-9]", "")
  return tf.strings.regex_full_match(only, _CARD_ISSUER) & _luhn(pieces)


def _iban(pieces):
  """ISO 13616: the country code and check digits moved to the end, letters as 10..35,
  the number mod 97 is 1."""
  compact = tf.strings.regex_replace(pieces, " ", "")
  length = tf.strings.length(compact)
  head = tf.minimum(4, length)  # validators see every piece, matched or not
  moved = (tf.strings.substr(compact, head, length - head) +
           tf.strings.substr(compact, tf.zeros_like(head), head))
  codes = tf.strings.unicode_decode(moved, "UTF-8")
  values = tf.where(codes >= 65, codes - 55, codes - 48).to_tensor(-1)  # A=10, padding -1
  remainder = tf.zeros(tf.shape(values)[:1], tf.int32)
  for_column = lambda r, v: tf.where(v < 0, r, (r * tf.where(v >= 10, 100, 10) + v) % 97)
  _, remainder = tf.while_loop(
      lambda i, r: i < tf.shape(values)[1],
      lambda i, r: (i + 1, for_column(r, values[:, i])), (0, remainder))
  return tf.equal(remainder, 1)


def _phone(pieces):
  count = _digits(pieces).row_lengths()
  return (count >= 7) & (count <= 15)


# One scan over the text for every type at once: the leftmost candidate wins (a URL holding
# an e-mail address is one URL; a 16-digit number failing the card checks stays whole, not
# read from its second group on as a phone number). A candidate becomes the first type, in
# this order, whose pattern it matches entirely and whose check it passes, or stays as it is.
_TYPES = (("URL", _URL, None), ("EMAIL", _EMAIL, None), ("IBAN", _IBAN, _iban),
          ("IP", _IP, None), ("CARD", _CARD, _card), ("PHONE", _PHONE, _phone))
TYPES = tuple(name for name, _, _ in _TYPES)
_CANDIDATES = "|".join(f"(?:{pattern})" for _, pattern, _ in _TYPES)


def _scan(texts):
  """[batch] strings -> (pieces, type, starts, ends), ragged [batch, (pieces)]: the texts cut
  at candidates, each piece's index in TYPES (-1: not PII) and its byte offsets."""
  pieces, starts, ends = tf_text.regex_split_with_offsets(texts, _CANDIDATES, _CANDIDATES)
  _, plain_starts, _ = tf_text.regex_split_with_offsets(texts, _CANDIDATES, "")
  # A piece is a candidate unless it starts where one of the text's other pieces starts.
  is_plain = tf.reduce_any(tf.equal(tf.expand_dims(starts.to_tensor(-1), 2),
                                    tf.expand_dims(plain_starts.to_tensor(-2), 1)), axis=2)
  unclaimed = tf.RaggedTensor.from_tensor(~is_plain, lengths=starts.row_lengths()).flat_values
  flat = pieces.flat_values
  kind = tf.fill(tf.shape(flat), -1)
  for index, (_, pattern, valid) in enumerate(_TYPES):
    is_type = unclaimed & tf.strings.regex_full_match(flat, pattern)
    if valid is not None:
      is_type &= valid(flat)
    unclaimed &= ~is_type
    kind = tf.where(is_type, index, kind)
  return pieces, pieces.with_flat_values(kind), starts, ends


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
def mask(texts):
  """[batch] strings -> (masked strings, int32 [batch, len(TYPES)] replacements per type)."""
  pieces, kind, _, _ = _scan(texts)
  placeholders = tf.constant([f"[{name}]" for name in TYPES])
  flat_kind = kind.flat_values
  replaced = tf.where(flat_kind >= 0, tf.gather(placeholders, tf.maximum(flat_kind, 0)),
                      pieces.flat_values)
  counts = tf.stack([tf.reduce_sum(tf.cast(tf.equal(kind, k), tf.int32), axis=1)
                     for k in range(len(TYPES))], axis=1)
  return tf.strings.reduce_join(pieces.with_flat_values(replaced), axis=1), counts


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
def matches(texts):
  """{type: ragged [batch, (matches)] strings}: what `mask` replaces, for measuring it."""
  pieces, kind, _, _ = _scan(texts)
  return {name: tf.ragged.boolean_mask(pieces, tf.equal(kind, k))
          for k, name in enumerate(TYPES)}


def _char_offsets(texts, byte_offsets):
  """Ragged byte offsets into each text -> offsets in characters (Unicode code points)."""
  _, char_starts = tf.strings.unicode_decode_with_offsets(texts, "UTF-8", errors="replace")
  bounds = tf.cast(char_starts.to_tensor(default_value=tf.int64.max), tf.int64)
  chars = tf.searchsorted(bounds, tf.cast(byte_offsets.to_tensor(), tf.int64), side="left",
                          out_type=tf.int32)
  return tf.RaggedTensor.from_tensor(chars, lengths=byte_offsets.row_lengths())


def merge_words(texts, words, starts, ends):
  """Words of texts (ragged [batch, (words)] strings with character offsets) -> the same with
  every run of words that overlaps one PII span made one word, its placeholder, from the
  first word's start to the last one's end; and `keep` (ragged bool over the input words:
  the first word of each run and every word outside PII). So a tagger reads "[EMAIL]"
  where text held "ann@example.com", split at punctuation or not, with offsets that are
  still the request's."""
  _, kind, span_starts, span_ends = _scan(texts)
  is_pii = tf.greater_equal(kind, 0)
  kind = tf.ragged.boolean_mask(kind, is_pii)
  span_starts = _char_offsets(texts, tf.ragged.boolean_mask(span_starts, is_pii))
  span_ends = _char_offsets(texts, tf.ragged.boolean_mask(span_ends, is_pii))
  def dense(ragged, fill):  # one more column, so a batch without spans still has one
    values = ragged.to_tensor(fill)
    return tf.concat([values, tf.fill([tf.shape(values)[0], 1], fill)], axis=1)
  dense_ends = dense(span_ends, tf.int32.max)
  # The first span ending after a word's start; the word is in it when the span starts
  # before the word's end.
  index = tf.searchsorted(dense_ends, tf.cast(starts.to_tensor(tf.int32.max), tf.int32),
                          side="right")
  index = tf.RaggedTensor.from_tensor(index, lengths=starts.row_lengths()).flat_values
  row = tf.cast(words.value_rowids(), tf.int32)
  count = tf.cast(tf.gather(span_starts.row_lengths(), row), tf.int32)
  safe = tf.stack([row, tf.minimum(index, tf.maximum(count - 1, 0))], axis=1)
  span_start = tf.gather_nd(dense(span_starts, tf.int32.max), safe)
  inside = (index < count) & (span_start < ends.flat_values)
  group = tf.cast(tf.gather(span_starts.row_splits, row), tf.int32) + index  # global span id
  previous = tf.concat([[-1], tf.where(inside, group, -1)[:-1]], 0)
  keep = ~inside | tf.not_equal(group, previous)
  placeholders = tf.constant([f"[{name}]" for name in TYPES])
  span_kind = tf.gather_nd(dense(kind, 0), safe)
  new_words = tf.where(inside, tf.gather(placeholders, span_kind), words.flat_values)
  run = tf.cumsum(tf.cast(keep, tf.int32)) - 1  # each word's kept word
  new_ends = tf.math.unsorted_segment_max(ends.flat_values, run, tf.reduce_sum(
      tf.cast(keep, tf.int32)))
  keep = words.with_flat_values(keep)
  return (tf.ragged.boolean_mask(words.with_flat_values(new_words), keep),
          tf.ragged.boolean_mask(starts, keep),
          tf.ragged.boolean_mask(starts, keep).with_flat_values(new_ends), keep)


def mask_sentences(sentences, tags, chunk=1024):
  """Pre-split sentences (lists of words) and their tags -> (words, tags, {type: spans})
  with merge_words applied to each sentence written with one space between its words."""
  out_words, out_tags, totals = [], [], {name: 0 for name in TYPES}
  for first in range(0, len(sentences), chunk):
    batch = sentences[first:first + chunk]
    texts, starts, ends = [], [], []
    for words in batch:
      offsets = np.cumsum([0] + [len(w) + 1 for w in words])
      texts.append(" ".join(words))
      starts.append(offsets[:-1].tolist())
      ends.append((offsets[:-1] + [len(w) for w in words]).tolist())
    text_tensor = tf.constant(texts, tf.string)
    merged, _, _, keep = merge_words(
        text_tensor, tf.ragged.constant(batch, tf.string, row_splits_dtype=tf.int64),
        tf.ragged.constant(starts, tf.int32), tf.ragged.constant(ends, tf.int32))
    for i, kept in enumerate(keep.to_list()):
      out_words.append([w.decode("utf-8") for w in merged[i].numpy()])
      out_tags.append([t for t, k in zip(tags[first + i], kept) if k])
    for name, n in zip(TYPES, mask(text_tensor)[1].numpy().sum(0)):
      totals[name] += int(n)
  return out_words, out_tags, totals


def parse_annotated(line):
  """"Call {PHONE:+1 415 555 2671} now" -> ("Call +1 415 555 2671 now", [("PHONE", "+1 ...")])."""
  text, spans, rest = "", [], line
  while True:
    start = rest.find("{")
    colon = rest.find(":", start)
    end = rest.find("}", colon)
    if start < 0 or colon < 0 or end < 0 or rest[start + 1:colon] not in TYPES:
      return text + rest, spans
    spans.append((rest[start + 1:colon], rest[colon + 1:end]))
    text += rest[:start] + rest[colon + 1:end]
    rest = rest[end + 1:]


def precision_recall(annotated_lines):
  """Per type: {precision, recall, expected, found} of `matches` against spans written as
  {TYPE:text} (parse_annotated); a match counts when its type and its text are the span's."""
  import collections
  parsed = [parse_annotated(line) for line in annotated_lines]
  found = matches(tf.constant([text for text, _ in parsed]))
  scores = {}
  for name in TYPES:
    hits = expected = predicted = 0
    for (_, spans), got in zip(parsed, found[name].to_list()):
      want = collections.Counter(s for t, s in spans if t == name)
      got = collections.Counter(g.decode("utf-8") for g in got)
      hits += sum((want & got).values())
      expected += sum(want.values())
      predicted += sum(got.values())
    scores[name] = {"precision": hits / predicted if predicted else 1.0,
                    "recall": hits / expected if expected else 1.0,
                    "expected": expected, "found": predicted}
  return scores


def mask_strings(strings, chunk=1024):
  """A Python list of strings -> (masked list, {type: replacements})."""
  masked, totals = [], {name: 0 for name in TYPES}
  for start in range(0, len(strings), chunk):
    out, counts = mask(tf.constant(strings[start:start + chunk], tf.string))
    masked += [s.decode("utf-8") for s in out.numpy()]
    for name, n in zip(TYPES, counts.numpy().sum(0)):
      totals[name] += int(n)
  return masked, totals
