"""Exports of a run: serving.py (the SavedModel for TF Serving, TFLite), hf.py (transformers)."""

# TF Serving's name for the requests it replays at load (WarmupConsts::kRequestsFileName),
# under the SavedModel's assets.extra/: written by serving.py, checked by tf_finetune.predict.
WARMUP_FILE = "tf_serving_warmup_requests"
