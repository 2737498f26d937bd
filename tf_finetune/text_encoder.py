"""Raw strings -> BERT inputs, in the graph. Training, evaluation and the exported
SavedModel all call this one class, so there is no train/serve skew."""
import keras_hub
import tensorflow as tf
import tensorflow_text as tf_text


def clean_text(texts):
  """HF BertNormalizer's clean_text, which keras-hub's tokenizer lacks: every Unicode
  space becomes " ", control and format characters (zero-width space, BOM) and U+FFFD go."""
  texts = tf.strings.regex_replace(texts, r"[\p{Zs}\t\n\r]", " ")
  return tf.strings.regex_replace(texts, r"[\x{0}\x{fffd}\p{Cc}\p{Cf}\p{Co}]", "")


class TextEncoder(tf.Module):
  """Tokenizes with keras-hub's WordPiece tokenizer and packs `[CLS] a [SEP] (b [SEP])`.

  Returns ragged `token_ids` and `segment_ids`; callers pad (per batch in tf.data, per
  request in serving). Pairs are truncated round-robin, which keeps the same tokens as
  HF's "longest_first".
  """

  def __init__(self, tokenizer_spec, max_seq_length, name="text_encoder"):
    super().__init__(name=name)
    spec = tokenizer_spec
    self.max_seq_length = int(max_seq_length)
    self.tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=list(spec.vocabulary),
        lowercase=spec.lowercase,
        strip_accents=spec.strip_accents,
        split_on_cjk=spec.split_on_cjk,
        oov_token=spec.unk_token,
        dtype="int32")
    self.cls_id = spec.token_id(spec.cls_token)
    self.sep_id = spec.token_id(spec.sep_token)
    self.pad_id = spec.token_id(spec.pad_token)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def tokenize(self, texts):
    """[batch] strings -> ragged [batch, (words)] wordpiece ids, before packing."""
    return tf.cast(self.tokenizer(clean_text(texts)), tf.int32)

  def __call__(self, texts, text_pairs=None):
    segments = [self.tokenize(texts)]
    if text_pairs is not None:
      segments.append(self.tokenize(text_pairs))
    budget = self.max_seq_length - 1 - len(segments)
    segments = tf_text.RoundRobinTrimmer(max_seq_length=budget).trim(segments)
    token_ids, segment_ids = tf_text.combine_segments(
        segments, start_of_sequence_id=self.cls_id, end_of_segment_id=self.sep_id)
    return {"token_ids": tf.cast(token_ids, tf.int32),
            "segment_ids": tf.cast(segment_ids, tf.int32)}

  def pad(self, ragged_features):
    """Ragged features -> dense `token_ids`, `segment_ids`, `padding_mask` (int32)."""
    token_ids = ragged_features["token_ids"].to_tensor(default_value=self.pad_id)
    segment_ids = ragged_features["segment_ids"].to_tensor(default_value=0)
    padding_mask = tf.cast(ragged_features["token_ids"].with_values(
        tf.ones_like(ragged_features["token_ids"].values)).to_tensor(), tf.int32)
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
