"""xbar-prune under `train.strategy=mirrored` (two logical CPUs, in a fresh process because
logical devices must be set before TensorFlow initialises): the same crossbar counts as the
single-device run of the same config, an accuracy within tolerance, a verified export."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from xbar_tfmot.models.introspection import FLAVOURS

MAIN = pathlib.Path(__file__).with_name("_pipeline_distributed_main.py")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_mirrored_run_matches_the_single_device_run(flavour, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  run = subprocess.run([sys.executable, str(MAIN), flavour, str(tmp_path)], env=env,
                       timeout=900, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result["replicas"] == 2
  single, mirrored = result["default"], result["mirrored"]
  assert mirrored["crossbars"] == single["crossbars"]
  assert any(n < max(single["crossbars"].values()) for n in single["crossbars"].values())
  # Two baseline epochs on digits, BatchNorm statistics per replica (8 images each): two
  # different trainings, whose gap depends on the CPU's kernels (2026-12-03, AMD EPYC: 0.811
  # single against 0.949 mirrored with oneDNN off, 0.791 against 0.915 with it on; 0.085 seen
  # elsewhere), far less than an untrained model's 0.9. The strategy's evaluation itself
  # equals one device's exactly: tests/test_replicas.py.
  assert abs(mirrored["accuracy"] - single["accuracy"]) < 0.2, result
  assert min(mirrored["accuracy"], single["accuracy"]) > 0.75, result
  assert mirrored["verified"] and single["verified"]


def test_bad_devices_name_the_field(tmp_path):
  from xbar_tfmot.app import pipeline
  from xbar_tfmot.app.configuration import ConfigError, defaults
  config = defaults()
  config.workdir = str(tmp_path)
  config.train.strategy, config.train.devices = "mirrored", "/gpu:7"
  with pytest.raises(ConfigError, match="config.train.devices='/gpu:7': '/gpu:7' is not a "
                                        "device of this machine; valid: /device:CPU:0"):
    pipeline.Pipeline(config)._strategy()
