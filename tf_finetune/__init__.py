"""tf_finetune: fine-tune Hugging Face-format BERT-family encoders with TensorFlow and Keras 3."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ start-up lines (oneDNN, CUDA drivers, a cuInit "E0000" on machines without a
# GPU) are noise to a user; TF_CPP_MIN_LOG_LEVEL set by the user (0 shows everything) wins.
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
