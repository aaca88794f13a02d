"""tools/bench_quality.py: a --quick run on real Fashion-MNIST writes the expected cells, the
LGD-RPP cells respect their crossbar budget, a rerun resumes (skips finished cells), and
`--dataset cifar10` without a local copy fails naming the missing path."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from _tools import load_tool

ROOT = pathlib.Path(__file__).resolve().parents[1]


TOOL = ROOT / "tools" / "bench_quality.py"


METHODS = "rpp-crossbar,rpp-column,oneshot-crossbar"


def _run(out: pathlib.Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
  result = subprocess.run(
      [sys.executable, str(TOOL), "--quick", "--out", str(out), "--methods", METHODS],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result


def test_quick_run_cells_budget_and_resume(tmp_path):
  pytest.importorskip("tensorflow_model_optimization")
  from xbar_tfmot.app.datasets import FASHION_MNIST_DIR
  if not pathlib.Path(FASHION_MNIST_DIR).is_dir():
    pytest.skip("dataset-fashion-mnist is not installed")
  out = tmp_path / "bq"
  _run(out)
  data = json.loads((out / "results.json").read_text())
  keys = sorted(c["key"] for c in data["cells"])
  assert keys == sorted(f"vgg8:0.25|0|{m}|0.72" for m in METHODS.split(","))
  assert list(data["baselines"]) == ["fashion_mnist_vgg8_w0.25_s0"]
  for cell in data["cells"]:
    counts = cell["counts"]
    assert 0.0 <= cell["accuracy"] <= 1.0
    assert counts["dense"] == data["baselines"]["fashion_mnist_vgg8_w0.25_s0"]["counts"]["dense"]
    assert counts["packed"] <= cell["budget"] < counts["dense"], cell
    if cell["method"] != "rpp-column":
      assert counts["blocks"] <= cell["budget"], cell
  assert (out / "bench_quality.md").read_text().count("| ") > 3
  assert (out / "bench_quality.png").stat().st_size > 1000

  again = _run(out)
  assert "3 cells planned, 3 done" in again.stdout
  assert json.loads((out / "results.json").read_text())["cells"] == data["cells"]


def test_other_setting_in_same_out_is_refused(tmp_path):
  tool = load_tool("bench_quality")
  (tmp_path / "results.json").write_text(json.dumps(
      {"setting": {**tool.settings(tool.parse_args(["--out", str(tmp_path)])), "epochs": 9},
       "baselines": {}, "cells": []}))
  with pytest.raises(SystemExit, match="--epochs 9 there, 2 now"):
    tool.main(["--out", str(tmp_path)])


def test_cifar10_without_local_copy_names_the_path(tmp_path):
  tool = load_tool("bench_quality")
  missing = tmp_path / "no-cifar"
  with pytest.raises(SystemExit, match=str(missing)) as info:
    tool.main(["--dataset", "cifar10", "--data", str(missing), "--out", str(tmp_path / "o")])
  assert "data_batch_1" in str(info.value) and "--data" in str(info.value)


def test_bad_method_is_named(capsys):
  tool = load_tool("bench_quality")
  with pytest.raises(SystemExit):
    tool.parse_args(["--out", "x", "--methods", "rpp-crossbar,magic"])
  assert "--methods: 'magic' is unknown" in capsys.readouterr().err
