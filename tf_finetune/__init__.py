"""tf_finetune: fine-tune Hugging Face-format BERT-family encoders with TensorFlow and Keras 3."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
