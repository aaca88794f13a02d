"""tools/bench_hardware.py: a --quick run on real Fashion-MNIST writes every model and sweep
condition (drift and compensation included), the TFMOT model keeps the LGD-RPP model's non-zero
count, the hardware-aware models keep their plain twins' crossbars but not their weights, a
rerun resumes (trains and measures nothing), --speed appends a measurement, and another setting
is refused."""

import json
import pathlib

import numpy as np
import pytest
from _tools import run_tool


def _run(out: pathlib.Path, *extra: str, check: bool = True):
  return run_tool("bench_hardware", "--quick", "--out", str(out), *extra, check=check)


def test_quick_run_resume_speed_and_setting(tmp_path):
  pytest.importorskip("tensorflow_model_optimization")
  from xbar_tfmot.app.datasets import FASHION_MNIST_DIR
  if not pathlib.Path(FASHION_MNIST_DIR).is_dir():
    pytest.skip("dataset-fashion-mnist is not installed")
  out = tmp_path / "bh"
  first = _run(out)
  data = json.loads((out / "results.json").read_text())
  assert list(data["models"]) == ["dense", "rpp-column-0.72", "tfmot-0.72", "dense-hwa",
                                  "rpp-column-0.72-hwa"]
  models = data["models"]
  dense, rpp, tfmot, dense_hwa, rpp_hwa = (models[m] for m in data["models"])
  assert dense_hwa["crossbars"] == dense["crossbars"] and rpp_hwa["crossbars"] == rpp["crossbars"]
  import h5py

  def kernels(label):
    with h5py.File(out / "cache" / f"{label}.weights.h5") as f:
      found = []
      f.visititems(lambda _, d: found.append(d[()]) if getattr(d, "ndim", 0) >= 2 else None)
      return found

  plain, aware = kernels("rpp-column-0.72"), kernels("rpp-column-0.72-hwa")
  assert len(plain) == len(aware) > 0  # same seed, same schedule: only the chip differs
  assert any(not np.allclose(a, b) for a, b in zip(plain, aware))
  assert rpp["crossbars"] < dense["crossbars"] == dense["dense_crossbars"]
  assert rpp["cost"]["isaac_32nm"]["energy_nj"] < dense["cost"]["isaac_32nm"]["energy_nj"]
  assert abs(tfmot["nonzero_weights"] - rpp["nonzero_weights"]) <= 8  # TFMOT rounds per layer
  assert tfmot["crossbars"] > rpp["crossbars"]  # unstructured zeros free few crossbars
  # variation 0 (= ADC 8, the preset's bits), ADC 4, variation 0.05, drift at 1 day (its
  # exponent's spread makes chips differ), each without and with compensation
  for label in models:
    cells = data["cells"][label]
    assert sorted(len(a) for a in cells.values()) == [1, 1, 1, 1, 2, 2, 2, 2], cells
    assert sum('"compensation"' in key for key in cells) == 4
  assert first.stdout.count("trained in") == 5
  md = (out / "bench_hardware.md").read_text()
  assert "| variation 5% |" in md and "| ADC 4 bits |" in md and "| tfmot-0.72 |" in md
  assert "| drift 1 day |" in md and "| rpp-column-0.72-hwa |" in md
  assert md.split("| drift 1 day |")[1].split("\n")[0].count(" / ") == 5  # both, every model
  assert (out / "bench_hardware.png").stat().st_size > 5000

  again = _run(out)
  assert "trained in" not in again.stdout
  assert "done: 0 conditions measured" in again.stdout
  assert json.loads((out / "results.json").read_text())["cells"] == data["cells"]

  _run(out, "--speed")
  speed = json.loads((out / "results.json").read_text())["speed"]
  assert len(speed) == 1 and len(speed[0]["analog"]) == len(speed[0]["explicit"]) == 2
  assert speed[0]["ratio_median"] > 0 and "Speed (rpp-column-0.72" in (
      out / "bench_hardware.md").read_text()

  other = _run(out, "--instances", "3", check=False)
  assert other.returncode != 0 and "holds results of another setting" in other.stderr
