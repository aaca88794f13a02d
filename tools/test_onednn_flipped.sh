#!/usr/bin/env bash
# Reruns the kernel-sensitive tests with TF_ENABLE_ONEDNN_OPTS set to the opposite of what this
# machine's TensorFlow uses by default (oneDNN custom operations are on by default on x86 Linux).
# The mirrored pipeline runs in one flavour only (the other adds ~75 s); test_replicas covers the
# strategy's batches in both. test_selection fine-tunes the allocation's candidates in a
# tf.function.
set -euo pipefail
cd "$(dirname "$0")/.."
default=$(env -u TF_ENABLE_ONEDNN_OPTS TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -c \
  "from tensorflow.python.util import _pywrap_util_port as p; print(int(p.IsMklEnabled()))" \
  2>/dev/null | tail -1)
flipped=$((1 - default))
echo "oneDNN custom operations by default: $default; rerunning with TF_ENABLE_ONEDNN_OPTS=$flipped"
TF_ENABLE_ONEDNN_OPTS=$flipped .venv/bin/python -m pytest -n 2 -q \
  tests/test_crossbar_matmul.py tests/test_replicas.py tests/test_analog_model.py \
  tests/test_analog_dataflow.py tests/test_analog_drift.py tests/test_selection.py \
  tests/test_bench_hardware.py "tests/test_pipeline_distributed.py::test_mirrored_run_matches_the_single_device_run[tf_keras]" \
  "$@"
