"""Zero-shot classification by similarity to label descriptions (task.name=zero_shot).

A sentence-embedding checkpoint (pooled as its files say, tasks/sentence_embedding.py; unit
length) embeds each text and one description per label ("This text is about {label}." or
the texts of a JSON file); a text's logits are task.similarity_scale times its cosine similarity to each
description, its label the nearest. Nothing is trained: the run's checkpoint is the model as
built, whose head holds the description embeddings, so evaluation, reports and export are a
classification run's. The export also has a `zero_shot` signature that takes candidate label
texts with each request.
"""
import json
import pathlib
import string

import tensorflow as tf
from absl import logging

from tf_finetune.errors import ConfigError
from tf_finetune.tasks import classification
from tf_finetune.tasks import sentence_embedding


class ZeroShotTask(sentence_embedding.PacksSentenceEmbeddings, classification.ClassificationTask):

  trains = False

  serving_doc = classification.ClassificationTask.serving_doc + (
      "; `zero_shot` signature: `text` string [batch] and `label_text` string [labels] -> "
      "`label` (the nearest label text), `label_id`, `probabilities` and `logits` "
      "[batch, labels]")

  def descriptions(self):
    """One text per label, in label order: from task.label_descriptions, a template naming
    {label} (read as str.format reads it: {{ and }} are braces) or a JSON file
    {label: text} (every label needs one)."""
    spec = self.config.task.label_descriptions
    labels = self.label_vocabulary.labels
    if "{" in spec or "}" in spec:
      return _filled_template(spec, labels)
    path = pathlib.Path(spec).expanduser()
    if not path.is_file():
      raise ConfigError(f"config.task.label_descriptions={spec!r}: neither a template holding "
                        "{label} nor a JSON file of {label: description}")
    try:
      texts = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
      raise ConfigError(f"{path}: byte {e.start} is not UTF-8 ({e.reason}); write the file in "
                        "UTF-8") from None
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(texts, dict):
      raise ConfigError(f"{path}: holds a JSON {type(texts).__name__}, not an object of "
                        "{label: description}")
    missing = [label for label in labels if not isinstance(texts.get(label), str)]
    if missing:
      raise ConfigError(f"{path}: no description (a string) for label(s) {', '.join(missing)}")
    unused = [label for label in texts if label not in labels]
    if unused:
      logging.warning("%s: not used, the train data has no label %s (its labels: %s)", path,
                      ", ".join(map(repr, unused)), ", ".join(map(repr, labels)))
    return [texts[label] for label in labels]

  def build_model(self, backbone):
    model = sentence_embedding.build_model(
        backbone, self.sentence_pooling, len(self.label_vocabulary),
        normalize=True, use_bias=False, name="zero_shot")
    descriptions = self.embed(model, tf.constant(self.descriptions()))
    model.get_layer("logits").kernel.assign(
        self.config.task.similarity_scale * tf.transpose(descriptions))
    return model

  def embed(self, model, texts):
    """Unit-length sentence embeddings [texts, hidden] of raw strings, as the model reads
    them (with data.mask_pii, masked)."""
    return self._embedded(self._embedder(model), texts)

  def _embedded(self, embedder, texts):
    features = self.encoder.pad(self.encoder(self.masked(texts)))
    return tf.cast(embedder(features, training=False), tf.float32)

  def extra_signatures(self, model):
    """{"zero_shot": a tf.function of text [batch] and label_text [labels]}."""
    embedder = self._embedder(model)
    scale = self.config.task.similarity_scale

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                  tf.TensorSpec([None], tf.string, name="label_text")])
    def zero_shot(text, label_text):
      tf.debugging.assert_positive(  # else argmax over no labels fails, naming only ArgMax
          tf.size(label_text), message="zero_shot: label_text holds no candidate label text; "
          "send at least one")
      logits = scale * tf.matmul(self._embedded(embedder, text),
                                 self._embedded(embedder, label_text), transpose_b=True)
      label_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
      return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1),
              "label_id": label_id, "label": tf.gather(label_text, label_id)}
    return {"zero_shot": zero_shot}


def _filled_template(template, labels):
  """The template's text for each label; a field other than {label}, a lone brace or no
  {label} at all is refused (a typo would otherwise stay in every description)."""
  key = f"config.task.label_descriptions={template!r}"
  braces = "write {{ and }} for a brace"

  def names(field):
    return ConfigError(f"{key}: names {{{field}}}; a template names only {{label}} ({braces})")
  try:
    fields = [field for _, field, _, _ in string.Formatter().parse(template)
              if field is not None]
    if not fields:
      raise ConfigError(f"{key}: holds no {{label}} to fill in ({{{{ and }}}} are braces)")
    other = next((field for field in fields if field != "label"), None)
    if other is not None:
      raise names(other)
    return [template.format(label=label) for label in labels]
  except KeyError as e:  # a field inside a format spec, {label:>{width}}
    raise names(e.args[0]) from None
  except IndexError:  # {} inside a format spec
    raise names("") from None
  except ValueError as e:
    raise ConfigError(f"{key}: {e} ({braces})") from None
