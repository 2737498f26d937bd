"""tf_finetune: fine-tune Hugging Face-format BERT-family encoders with TensorFlow and Keras 3."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ start-up lines (oneDNN, CUDA drivers, a cuInit "E0000" on machines without a
# GPU) are noise to a user; TF_CPP_MIN_LOG_LEVEL set by the user (0 shows everything) wins.
# _TF_FINETUNE_QUIET marks our own default, so that child processes (workers, benchmarks)
# inherit it as a default and not as the user's choice.
if "TF_CPP_MIN_LOG_LEVEL" not in os.environ or os.environ.get("_TF_FINETUNE_QUIET") == "1":
  USER_TF_LOG_LEVEL = None
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
  os.environ["_TF_FINETUNE_QUIET"] = "1"
else:
  USER_TF_LOG_LEVEL = os.environ["TF_CPP_MIN_LOG_LEVEL"]

__version__ = "0.1.0"
