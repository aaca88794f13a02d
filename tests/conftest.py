"""Test-wide settings: quiet TensorFlow logs, one CPU thread pool, no GPU search."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
assert "TF_USE_LEGACY_KERAS" not in os.environ, "tests must start without TF_USE_LEGACY_KERAS"
