"""Crossbar pruning under tf.distribute.MirroredStrategy with two logical CPU devices.

Each case runs `_pruning_distributed_main.py` in a fresh process, because logical devices
must be configured before TensorFlow initialises.
"""

import json
import os
import subprocess
import sys

import pytest

MAIN = os.path.join(os.path.dirname(__file__), "_pruning_distributed_main.py")


@pytest.mark.parametrize("regrowth,granularity", [
    ("reset", "crossbar"), ("straight_through", "column")])
def test_two_replicas_agree_and_meet_the_budget(regrowth, granularity):
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  run = subprocess.run([sys.executable, MAIN, regrowth, granularity], env=env, timeout=240,
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result["replicas"] == 2
  assert set(result["layers"]) == {"conv2", "fc1", "fc2"}
  for name, layer in result["layers"].items():
    assert layer["mask_copies"] == 2, name
    assert layer["masks_agree"] and layer["kernels_agree"], name
    assert layer["crossbars"] == layer["budget"], name
    assert layer["pruned_weights_zero"], name
  assert result["accuracy"] > 0.5
