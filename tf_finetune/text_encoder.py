"""Raw strings -> BERT inputs, in the graph. Training, evaluation and the exported
SavedModel all call this one class, so there is no train/serve skew."""
import re

import keras_hub
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text


def clean_text(texts):
  """HF BertNormalizer's clean_text, which keras-hub's tokenizer lacks: every Unicode
  space becomes " ", control and format characters (zero-width space, BOM) and U+FFFD go."""
  texts = tf.strings.regex_replace(texts, r"[\p{Zs}\t\n\r]", " ")
  return tf.strings.regex_replace(texts, r"[\x{0}\x{fffd}\p{Cc}\p{Cf}\p{Co}]", "")


# BERT's basic tokenization (HF BasicTokenizer, keras-hub WordPieceTokenizer): words end at
# whitespace, control and format characters; each punctuation mark and CJK character is a
# word of its own. Used to find words (and their offsets) in raw text for tagging.
_KEPT_DELIMITERS = (r"[!-/]|[:-@]|[\[-`]|[{-~]|\p{P}|"
                    r"[\x{4E00}-\x{9FFF}]|[\x{3400}-\x{4DBF}]|[\x{20000}-\x{2A6DF}]|"
                    r"[\x{2A700}-\x{2B73F}]|[\x{2B740}-\x{2B81F}]|[\x{2B820}-\x{2CEAF}]|"
                    r"[\x{F900}-\x{FAFF}]|[\x{2F800}-\x{2FA1F}]")
_WORD_DELIMITERS = r"\s|\p{Z}|\p{Cc}|\p{Cf}|" + _KEPT_DELIMITERS


def split_words(texts):
  """[batch] raw strings -> (words, starts, ends): ragged [batch, (words)], with each word's
  start and end as character (Unicode code point) offsets into the original string, so
  that Python's text[start:end] is the word."""
  words, byte_starts, byte_ends = tf_text.regex_split_with_offsets(
      texts, _WORD_DELIMITERS, _KEPT_DELIMITERS)
  _, char_starts = tf.strings.unicode_decode_with_offsets(texts, "UTF-8", errors="replace")
  # A byte offset's character index is the number of characters starting before it.
  bounds = tf.cast(char_starts.to_tensor(default_value=tf.int64.max), tf.int64)
  def to_chars(byte_offsets):
    dense = byte_offsets.to_tensor()
    chars = tf.searchsorted(bounds, dense, side="left", out_type=tf.int32)
    return tf.RaggedTensor.from_tensor(chars, lengths=byte_offsets.row_lengths())
  return words, to_chars(byte_starts), to_chars(byte_ends)


def _build_tokenizer(spec):
  """The in-graph tokenizer of a checkpoints.TokenizerSpec: keras-hub's WordPiece and
  byte-level BPE tokenizers, tensorflow-text's SentencePiece (whose ids TextEncoder maps
  to the vocabulary's)."""
  if spec.kind == "wordpiece":
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=list(spec.vocabulary), lowercase=spec.lowercase,
        strip_accents=spec.strip_accents, split_on_cjk=spec.split_on_cjk,
        oov_token=spec.unk_token, dtype="int32")
  if spec.kind == "byte_bpe":
    return keras_hub.tokenizers.BytePairTokenizer(
        vocabulary={token: i for i, token in enumerate(spec.vocabulary)},
        merges=list(spec.merges), dtype="int32")
  return tf_text.SentencepieceTokenizer(model=spec.sentencepiece_model, out_type=tf.int32)


def _head_and_tail(pieces, budget):
  """Ragged [batch, (pieces)] -> the first budget // 4 and the last budget - budget // 4
  pieces of each row longer than budget; shorter rows as they are."""
  head = budget // 4
  lengths = pieces.row_lengths()
  keep_all = tf.expand_dims(lengths <= budget, 1)
  index = tf.ragged.range(lengths)
  tail_start = tf.expand_dims(lengths - (budget - head), 1)
  kept = keep_all | (index < head) | (index >= tail_start)
  return tf.ragged.boolean_mask(pieces, kept)


class TextEncoder(tf.Module):
  """Tokenizes with keras-hub's WordPiece tokenizer and packs `[CLS] a [SEP] (b [SEP])`.

  Returns ragged `token_ids` and `segment_ids`; callers pad (per batch in tf.data, per
  request in serving). Pairs are truncated round-robin, which keeps the same tokens as
  HF's "longest_first".

  A text longer than max_seq_length (data.long_text): `truncate` keeps its first
  wordpieces; `head_tail` its first quarter and last three quarters of the budget (Sun et
  al. 2019); `windows` splits it into overlapping windows of max_seq_length, starting
  every `window_stride` wordpieces, at most `max_windows` of them (see `windows`).
  """

  def __init__(self, tokenizer_spec, max_seq_length, name="text_encoder", long_text="truncate",
               window_stride=0, max_windows=0):
    super().__init__(name=name)
    spec = tokenizer_spec
    self.spec = spec
    self.max_seq_length = int(max_seq_length)
    self.long_text = long_text
    self.window_size = self.max_seq_length - 2  # wordpieces of a window, [CLS] and [SEP] aside
    self.window_stride = int(window_stride) or self.window_size // 2
    self.max_windows = int(max_windows)
    self.tokenizer = _build_tokenizer(spec)
    if spec.kind == "sentencepiece":
      # SentencePiece ids -> the checkpoint's vocabulary ids, by piece (XLM-R's vocabulary
      # shifts SentencePiece's by one and puts <s>, <pad>, </s>, <unk> first).
      pieces = self.tokenizer.id_to_string(tf.range(self.tokenizer.vocab_size())).numpy()
      index = {piece: i for i, piece in enumerate(spec.vocabulary)}
      unk = index[spec.unk_token]
      self._piece_ids = tf.constant(
          [index.get(p.decode("utf-8"), unk) for p in pieces], tf.int32)
    self.cls_id = spec.token_id(spec.cls_token)
    self.sep_id = spec.token_id(spec.sep_token)
    self.pad_id = spec.token_id(spec.pad_token)
    self._encode_functions = {}  # kind of call -> __call__ traced for it

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def tokenize(self, texts):
    """[batch] strings -> ragged [batch, (pieces)] token ids, before packing."""
    spec = self.spec
    if spec.kind == "wordpiece":
      return tf.cast(self.tokenizer(clean_text(texts)), tf.int32)
    if spec.kind == "byte_bpe":
      return tf.cast(self.tokenizer(texts), tf.int32)
    for step in spec.normalizers:
      if step[0] == "replace":
        texts = tf.strings.regex_replace(texts, re.escape(step[1]), step[2])
      elif step[0] == "nfkd":
        texts = tf_text.normalize_utf8(texts, "NFKD")
      elif step[0] == "strip_accents":
        texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
      elif step[0] == "lowercase":
        texts = tf.strings.lower(texts, encoding="utf-8")
    ids = self.tokenizer.tokenize(texts)
    return ids.with_flat_values(tf.gather(self._piece_ids, ids.flat_values))

  def tokenize_words(self, words):
    """[words] strings, each a word of a pre-split sentence -> ragged [words, (pieces)], as
    HF's is_split_into_words tokenizes them (byte-level BPE: with a leading space)."""
    if self.spec.words_take_prefix_space:
      words = tf.strings.join([" ", words])
    return self.tokenize(words)

  def __call__(self, texts, text_pairs=None, with_truncation=False):
    """[batch] strings (and their pairs) -> ragged `token_ids` and `segment_ids` [batch,
    (length)], `[CLS] text [SEP] (pair [SEP])` cut to max_seq_length. With with_truncation,
    also `truncated` (bool [batch]): wordpieces were cut."""
    texts = [texts] if text_pairs is None else [texts, text_pairs]
    truncation = bool(with_truncation)
    key = f"texts{len(texts)}_truncation{int(truncation)}"  # string keys: tf.Module tracks it
    if key not in self._encode_functions:
      # Traced once per kind of call, then called from every tf.data pipeline and serving
      # graph: traced inside each of them, it cost about a second per pipeline.
      self._encode_functions[key] = tf.function(
          lambda *texts: self._encode(*texts, with_truncation=truncation),
          input_signature=[tf.TensorSpec([None], tf.string)] * len(texts), autograph=False)
    return self._encode_functions[key](*texts)

  def _encode(self, texts, text_pairs=None, with_truncation=False):
    segments = [self.tokenize(texts)]
    if text_pairs is not None:
      segments.append(self.tokenize(text_pairs))
    extra_separators = (self.spec.pair_separators - 1) * (len(segments) - 1)
    budget = self.max_seq_length - 1 - len(segments) - extra_separators
    pieces = tf.add_n([s.row_lengths() for s in segments])
    if self.long_text == "head_tail" and len(segments) == 1:
      segments = [_head_and_tail(segments[0], budget)]
    segments = tf_text.RoundRobinTrimmer(max_seq_length=budget).trim(segments)
    if extra_separators:  # RoBERTa's pair: <s> a </s></s> b </s>
      second = segments[1]
      separator = tf.fill([second.nrows(), 1], tf.cast(self.sep_id, second.dtype))
      segments[1] = tf.concat([tf.RaggedTensor.from_tensor(separator), second], axis=1)
    token_ids, segment_ids = tf_text.combine_segments(
        segments, start_of_sequence_id=self.cls_id, end_of_segment_id=self.sep_id)
    features = {"token_ids": tf.cast(token_ids, tf.int32),
                "segment_ids": tf.cast(segment_ids, tf.int32)}
    if with_truncation:
      features["truncated"] = pieces > budget
    return features

  split_words = staticmethod(split_words)

  def window_spans(self, lengths):
    """Per text of `lengths` wordpieces: its windows' (start, end) as ragged [texts,
    (windows)], and whether max_windows cut its tail. Window starts are 0, stride,
    2 * stride, ..., the last one moved back to end exactly at the text's end, so the
    windows cover every wordpiece and consecutive ones overlap by window_size - stride."""
    lengths = tf.cast(lengths, tf.int32)
    size, stride = self.window_size, self.window_stride
    beyond = tf.maximum(lengths - size, 0)
    needed = 1 + (beyond + stride - 1) // stride
    count = tf.minimum(needed, self.max_windows) if self.max_windows else needed
    index = tf.ragged.range(count)
    starts = tf.minimum(index * stride, tf.expand_dims(beyond, 1))
    ends = tf.minimum(starts + size, tf.expand_dims(lengths, 1))
    return starts, ends, needed > count

  def window_counts(self, texts):
    """Windows per text (numpy), as `windows` makes them."""
    return self.window_spans(self.lengths(texts) - 2)[0].row_lengths().numpy()

  def windows(self, texts):
    """[batch] strings -> one packed `[CLS] window [SEP]` per window: ragged `token_ids` and
    `segment_ids` [windows, (length)], `document` (int32 [windows]: the text each window
    came from), `windows_used` (int32 [batch]) and `truncated` (bool [batch]: max_windows
    left wordpieces unread)."""
    return self._pack_windows(self.tokenize(texts))[0]

  def _pack_windows(self, pieces):
    """Ragged [batch, (pieces)] -> (the `windows` features, window starts, window ends)."""
    starts, ends, truncated = self.window_spans(pieces.row_lengths())
    offsets = tf.cast(tf.expand_dims(pieces.row_splits[:-1], 1), tf.int32)
    flat = tf.ragged.range((starts + offsets).flat_values, (ends + offsets).flat_values)
    window_pieces = flat.with_flat_values(tf.gather(pieces.flat_values, flat.flat_values))
    token_ids, segment_ids = tf_text.combine_segments(
        [window_pieces], start_of_sequence_id=self.cls_id, end_of_segment_id=self.sep_id)
    features = {"token_ids": tf.cast(token_ids, tf.int32),
                "segment_ids": tf.cast(segment_ids, tf.int32),
                "document": tf.cast(starts.value_rowids(), tf.int32),
                "windows_used": tf.cast(starts.row_lengths(), tf.int32),
                "truncated": truncated}
    return features, starts, ends

  def lengths(self, texts, text_pairs=None, chunk=1024):
    """Wordpieces of each text (and pair) before truncation, with [CLS] and [SEP]s (numpy)."""
    lengths = []
    for start in range(0, len(texts), chunk):
      n = self.tokenize(tf.constant(texts[start:start + chunk])).row_lengths()
      if text_pairs is not None:
        n += (self.tokenize(tf.constant(text_pairs[start:start + chunk])).row_lengths()
              + self.spec.pair_separators)
      lengths.append(n.numpy() + 2)
    return np.concatenate(lengths) if lengths else np.zeros([0], np.int64)

  def word_piece_counts(self, sentences, chunk=4096):
    """Per sentence (a list of words), each word's number of wordpieces (0: none left after
    cleaning), as numpy arrays."""
    words = [w for sentence in sentences for w in sentence]
    if not words:
      return [np.zeros(0, np.int64) for _ in sentences]
    pieces = np.concatenate([self.tokenize_words(tf.constant(words[i:i + chunk])).row_lengths()
                             for i in range(0, len(words), chunk)])
    return np.split(pieces, np.cumsum([len(s) for s in sentences])[:-1])

  def encode_words(self, words):
    """Pre-split words (ragged [batch, (words)] strings) -> packed `[CLS] pieces [SEP]` rows.

    Returns ragged `token_ids` and `segment_ids` [rows, (length)], and per word (ragged
    [batch, (words)]) `word_rows` and `word_positions`: the row holding the word's first
    wordpiece and that piece's index in it, or -1 for a word that got no piece (cut by
    max_seq_length or max_windows, or nothing left after cleaning). Only first pieces carry
    a word's tag, in training and in prediction (HF's convention for token
    classification). `truncated` (bool [batch]): some word got no piece because of a cut.

    With long_text=truncate a row is a sentence, cut to max_seq_length. With windows a
    sentence becomes overlapping windows (as `windows`; `document` and `windows_used` as
    there) and each word is read from the window where it has the most context: the
    largest min(pieces before it, pieces after it) in the window (BERT's SQuAD rule).
    """
    pieces = self.tokenize_words(words.flat_values)  # [all words, (pieces)]
    piece_splits = tf.cast(pieces.row_splits, tf.int32)
    word_splits = tf.cast(words.row_splits, tf.int32)
    sentence_splits = tf.gather(piece_splits, word_splits)
    sentences = tf.RaggedTensor.from_row_splits(pieces.flat_values, sentence_splits)
    sentence_of_word = tf.cast(words.value_rowids(), tf.int32)
    offsets = piece_splits[:-1] - tf.gather(sentence_splits, sentence_of_word)
    has_piece = pieces.row_lengths() > 0
    if self.long_text == "windows":
      features, starts, ends = self._pack_windows(sentences)
      rows, positions = _most_context_window(offsets, sentence_of_word, starts, ends)
      kept = has_piece & (rows >= 0)
    else:
      budget = self.max_seq_length - 2
      token_ids, segment_ids = tf_text.combine_segments(
          [sentences[:, :budget]], start_of_sequence_id=self.cls_id,
          end_of_segment_id=self.sep_id)
      features = {"token_ids": tf.cast(token_ids, tf.int32),
                  "segment_ids": tf.cast(segment_ids, tf.int32),
                  "truncated": sentences.row_lengths() > budget}
      kept = has_piece & (offsets < budget)
      rows, positions = sentence_of_word, offsets + 1
    features["word_rows"] = words.with_flat_values(tf.where(kept, rows, -1))
    features["word_positions"] = words.with_flat_values(tf.where(kept, positions, -1))
    return features

  def pad(self, ragged_features):
    """Ragged features -> dense `token_ids`, `segment_ids`, `padding_mask` (int32), at least
    one position long: a request of no texts gives [0, 1] and outputs of no rows (the
    encoder reads position 0 of every row, which [0, 0] lacks)."""
    ragged_ids = ragged_features["token_ids"]
    shape = tf.stack([ragged_ids.nrows(), tf.maximum(ragged_ids.bounding_shape(1), 1)])
    token_ids = ragged_ids.to_tensor(default_value=self.pad_id, shape=shape)
    segment_ids = ragged_features["segment_ids"].to_tensor(default_value=0, shape=shape)
    padding_mask = tf.cast(ragged_ids.with_values(tf.ones_like(ragged_ids.values)).to_tensor(
        shape=shape), tf.int32)
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


def _most_context_window(offsets, sentence_of_word, starts, ends):
  """Per word (its first piece at `offsets` in sentence `sentence_of_word`): the window
  (a row of starts/ends, ragged [sentences, (windows)], numbered across the batch) where
  the piece has the most context, and the piece's index in that packed window ([CLS] is
  0); -1, -1 where no window holds it (max_windows cut the sentence's tail)."""
  word_starts = tf.gather(starts, sentence_of_word)  # [words, (windows of its sentence)]
  word_ends = tf.gather(ends, sentence_of_word)
  offset = tf.expand_dims(offsets, 1)
  context = tf.minimum(offset - word_starts, word_ends - 1 - offset)  # < 0: not inside
  flat, word = context.flat_values, tf.cast(context.value_rowids(), tf.int32)
  num_words = tf.shape(offsets)[0]
  best = tf.math.unsorted_segment_max(flat, word, num_words)
  local = tf.ragged.range(context.row_lengths()).flat_values
  is_best = tf.equal(flat, tf.gather(best, word))
  first_best = tf.math.unsorted_segment_min(  # ties: the earlier window
      tf.where(is_best, tf.cast(local, tf.int32), tf.int32.max), word, num_words)
  inside = best >= 0
  first_window = tf.gather(tf.cast(starts.row_splits, tf.int32), sentence_of_word)
  row = first_window + tf.where(inside, first_best, 0)
  position = offsets - tf.gather(starts.flat_values, row) + 1
  return tf.where(inside, row, -1), tf.where(inside, position, -1)
