"""tf_finetune: fine-tune Hugging Face-format BERT-family encoders with TensorFlow and Keras 3."""
import os
import platform
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's oneDNN kernels: on Linux, TensorFlow turns them on by itself only on CPUs with
# AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX. On other x86-64 CPUs (AVX2 only) they trained
# 10-25% faster and ran batched inference 8-25% faster (README, "oneDNN" row), so they are our
# default there too. TensorFlow reads the variable once, when it is imported;
# TF_ENABLE_ONEDNN_OPTS set by the user (0 turns them off) wins; _TF_FINETUNE_ONEDNN marks our
# default, inherited by child processes as a default.
USER_ONEDNN = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
if USER_ONEDNN == "1" and os.environ.get("_TF_FINETUNE_ONEDNN") == "1":
  USER_ONEDNN = None
if USER_ONEDNN is None and sys.platform.startswith("linux") and platform.machine() == "x86_64":
  os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
  os.environ["_TF_FINETUNE_ONEDNN"] = "1"
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
