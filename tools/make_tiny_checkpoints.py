"""Writes tiny random-weight Hugging Face checkpoints, one per encoder family, with the
reference outputs transformers gives on a fixed set of texts.

  python tools/make_tiny_checkpoints.py --out tests/fixtures/tiny_checkpoints

Needs PyTorch, transformers 5, tokenizers and sentencepiece (`pip install -e '.[torch]'`).
Each directory is named by its model_type and holds what a real checkpoint of the family
holds: config.json, model.safetensors (saved from the family's pre-training class, as on
the Hub) and the tokenizer files. The tokenizer is trained on a small multilingual corpus
the way the family's real one was: byte-level BPE (roberta), a SentencePiece unigram model
(xlm-roberta, albert), WordPiece (bert, distilbert, electra); its files are written by
transformers, so tokenizer.json is what transformers itself reads.

reference.json holds, per reference text (accents, CJK, emoji, a sentence pair, words
split for tagging), the ids transformers' tokenizer gives (with special tokens) and the
first-piece index of every word; reference.npz holds the base model's last hidden state
for each (float32 [length, hidden]). The tests compare tf_finetune against these and need
no torch.
"""
import json
import pathlib
import shutil
import tempfile

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "tests/fixtures/tiny_checkpoints", "Where the directories go.")
flags.DEFINE_list("families", "bert,roberta,xlm-roberta,distilbert,albert,electra",
                  "model_types to write.")
flags.DEFINE_integer("vocab_size", 600, "Tokenizer vocabulary size (before special tokens).")
flags.DEFINE_integer("seed", 0, "Weight initialization seed.")

# Trained on: enough languages and scripts that the reference texts' pieces come from
# real merges rather than byte or character fallback alone.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Shares in the company rose sharply after the results were published on Monday.",
    "The government said the new law would come into force next year.",
    "She won the championship for the third time in a row.",
    "Scientists have found a new way to store energy from the sun.",
    "The film was a huge success at the box office this weekend.",
    "Le café de la gare est fermé le dimanche, mais le marché est ouvert.",
    "Il a répondu très rapidement à la question du journaliste.",
    "Die Straße war nach dem Regen nass und rutschig.",
    "Über die Grenzen hinweg arbeiten Forscher zusammen.",
    "El niño comió una manzana en el jardín de su abuela.",
    "São Paulo é a maior cidade do Brasil.",
    "Ångström, naïve, résumé, coöperate and façade keep their accents.",
    "我爱北京天安门。今天天气很好，我们去公园散步。",
    "東京は日本の首都です。大阪は食べ物で有名です。",
    "서울은 한국의 수도입니다.",
    "Москва — столица России.",
    "I love this phone 😍🔥 but the battery dies fast 😡.",
    "Email me at jane.doe@example.com or call +44 20 7946 0958!",
    "U.S. stocks fell 2.5% on Tuesday; the S&P 500 closed at 4,321.",
] * 20

REFERENCE_TEXTS = [
    "Hello world!",
    "The QUICK brown fox jumps over the lazy dog.",
    "Café naïve résumé Ångström façade",
    "我爱北京天安门。",
    "東京は日本の首都です",
    "I love it 😍🔥 so much",
    "  spaces   around\ttabs and\nnewlines  ",
    "Email jane.doe@example.com, U.S. stocks fell 2.5%!",
    "unseenwordzzq qxj",
]
REFERENCE_PAIRS = [
    ("The government said the law is new.", "A new law was announced."),
    ("Le café est fermé.", "東京は首都です"),
]
# Words as tf_finetune splits raw text for tagging (BERT's basic split: at spaces, each
# punctuation mark and CJK character a word), so that " ".join(words) served as raw text
# gives these words back.
REFERENCE_WORDS = [
    ["Jane", "Doe", "lives", "in", "São", "Paulo", "."],
    ["Ångström", "visited", "東", "京", "and", "北", "京", "😍"],
    ["naïve", "Café", "résumé", "unseenwordzzq", "!"],
]

SEGMENT_FAMILIES = ("bert", "albert", "electra")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=128, initializer_range=0.2, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)


def _wordpiece_tokenizer(work, lowercase):
  import tokenizers
  from tokenizers import models, normalizers, pre_tokenizers, trainers
  tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
      vocab_size=FLAGS.vocab_size,
      special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
  vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
  path = work / "vocab.txt"
  path.write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
  return path


def _byte_level_bpe_files(work):
  import tokenizers
  tokenizer = tokenizers.ByteLevelBPETokenizer()
  tokenizer.train_from_iterator(
      CORPUS, vocab_size=FLAGS.vocab_size, min_frequency=2,
      special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  tokenizer.save_model(str(work))
  return work / "vocab.json", work / "merges.txt"


def _sentencepiece_model(work, name, **special):
  import sentencepiece as spm
  corpus = work / "corpus.txt"
  corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(work / name), model_type="unigram",
      vocab_size=FLAGS.vocab_size, character_coverage=1.0, normalization_rule_name="nmt_nfkc",
      hard_vocab_limit=False, minloglevel=2, **special)
  return work / f"{name}.model"


def tokenizer_for(model_type, work):
  """The family's tokenizer, built by transformers from the trained files."""
  import transformers
  if model_type in ("bert", "distilbert", "electra"):
    cls = {"bert": transformers.BertTokenizer, "distilbert": transformers.DistilBertTokenizer,
           "electra": transformers.ElectraTokenizer}[model_type]
    return cls(vocab=str(_wordpiece_tokenizer(work, lowercase=True)), do_lower_case=True)
  if model_type == "roberta":
    vocab, merges = _byte_level_bpe_files(work)
    return transformers.RobertaTokenizer(vocab=str(vocab), merges=str(merges))
  if model_type == "xlm-roberta":
    model = _sentencepiece_model(work, "sentencepiece.bpe")
    return transformers.XLMRobertaTokenizer.from_pretrained(str(work), vocab_file=str(model))
  if model_type == "albert":
    model = _sentencepiece_model(work, "spiece", pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
                                 control_symbols=["[CLS]", "[SEP]", "[MASK]"])
    return transformers.AlbertTokenizer.from_pretrained(str(work), vocab_file=str(model))
  raise ValueError(model_type)


def model_for(model_type, vocab_size):
  """(pre-training model to save, its base encoder) with random weights."""
  import torch
  import transformers
  torch.manual_seed(FLAGS.seed)
  tiny = dict(TINY, vocab_size=vocab_size)
  if model_type == "bert":
    config = transformers.BertConfig(**tiny)
    model = transformers.BertForPreTraining(config)  # as the Hub's: with the pooler
    return model, model.bert
  # RoBERTa's: two position rows reserved, one token type, <pad> = 1, epsilon 1e-5.
  roberta_like = dict(tiny, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
                      layer_norm_eps=1e-5)
  if model_type == "roberta":
    model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**roberta_like))
    return model, model.roberta
  if model_type == "xlm-roberta":
    config = transformers.XLMRobertaConfig(**roberta_like)
    # Saved from the bare encoder, as sentence-transformers' multilingual XLM-R models are
    # (weights named embeddings..., not roberta.embeddings...).
    model = transformers.XLMRobertaModel(config)
    return model, model
  if model_type == "distilbert":
    config = transformers.DistilBertConfig(
        vocab_size=vocab_size, dim=tiny["hidden_size"], n_layers=tiny["num_hidden_layers"],
        n_heads=tiny["num_attention_heads"], hidden_dim=tiny["intermediate_size"],
        max_position_embeddings=tiny["max_position_embeddings"], initializer_range=0.2,
        dropout=0.0, attention_dropout=0.0)
    model = transformers.DistilBertForMaskedLM(config)
    return model, model.distilbert
  if model_type == "albert":
    config = transformers.AlbertConfig(**dict(tiny, embedding_size=16, hidden_act="gelu_new",
                                              pad_token_id=0))
    model = transformers.AlbertForPreTraining(config)  # as the Hub's: with the pooler
    return model, model.albert
  if model_type == "electra":
    config = transformers.ElectraConfig(**dict(tiny, embedding_size=16))
    model = transformers.ElectraForPreTraining(config)
    return model, model.electra
  raise ValueError(model_type)


def write_family(model_type, out):
  import numpy as np
  import torch
  with tempfile.TemporaryDirectory() as work:
    tokenizer = tokenizer_for(model_type, pathlib.Path(work))
    model, encoder = model_for(model_type, len(tokenizer))
    model.eval()
    directory = out / model_type
    if directory.exists():
      shutil.rmtree(directory)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    for name in ("sentencepiece.bpe.model", "spiece.model"):
      if (pathlib.Path(work) / name).is_file() and not (directory / name).is_file():
        shutil.copy(pathlib.Path(work) / name, directory / name)
  if model_type == "roberta":  # is_split_into_words needs the prefix space (as HF requires)
    word_tokenizer = type(tokenizer).from_pretrained(str(directory), add_prefix_space=True)
  else:
    word_tokenizer = tokenizer
  cases = [{"text": t} for t in REFERENCE_TEXTS]
  cases += [{"text": a, "text_pair": b} for a, b in REFERENCE_PAIRS]
  hidden = {}
  for i, case in enumerate(cases):
    # transformers 5's AlbertTokenizer leaves token_type_ids out unless asked; its
    # tokenizer.json (and ALBERT's pre-training) give the second text type 1.
    encoded = tokenizer(case["text"], case.get("text_pair"), return_tensors="pt",
                        return_token_type_ids=model_type in SEGMENT_FAMILIES)
    case["input_ids"] = encoded["input_ids"][0].tolist()
    if model_type in SEGMENT_FAMILIES:
      case["token_type_ids"] = encoded["token_type_ids"][0].tolist()
    with torch.no_grad():
      hidden[f"case_{i}"] = encoder(**encoded).last_hidden_state[0].numpy().astype(np.float32)
  word_cases = []
  for words in REFERENCE_WORDS:
    encoded = word_tokenizer(words, is_split_into_words=True)
    word_ids = encoded.word_ids()
    first = [word_ids.index(w) if w in word_ids else -1 for w in range(len(words))]
    word_cases.append({"words": words, "input_ids": encoded["input_ids"],
                       "first_piece_positions": first})
  reference = {"model_type": model_type, "cases": cases, "word_cases": word_cases,
               "made_with": {"transformers": __import__("transformers").__version__,
                             "tokenizers": __import__("tokenizers").__version__}}
  (directory / "reference.json").write_text(
      json.dumps(reference, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
  np.savez_compressed(directory / "reference.npz", **hidden)
  return directory


def main(argv):
  del argv
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  for model_type in FLAGS.families:
    directory = write_family(model_type, out)
    size = sum(f.stat().st_size for f in directory.iterdir())
    print(f"{model_type}: {directory} ({size / 1024:.0f} KiB: "
          f"{', '.join(sorted(f.name for f in directory.iterdir()))})")


if __name__ == "__main__":
  app.run(main)
