"""xbar-verify runs the `.tflite` file in LiteRT (`ai-edge-litert`), the runtime users deploy
with, and falls back to TensorFlow's `tf.lite.Interpreter` only where LiteRT is missing."""

import sys

import keras
import numpy as np
import pytest

from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.export import exporter, verification


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, name="fc")])
  kernel = model.get_layer("fc").kernel
  kernel.assign(kernel * np.repeat([[1.0], [0.0]], 6, axis=0))  # second crossbar all zero
  out = tmp_path_factory.mktemp("export") / "dense"
  exporter.export(model, out, CrossbarSpec(rows=6, cols=8), granularity="crossbar")
  return out


def test_verify_runs_tflite_in_litert(export_dir):
  result = verification.verify(str(export_dir), samples=3)
  assert result.tflite_runtime == "litert"
  assert result.ok and result.differences["tflite"][1] <= 1e-5
  assert "tflite runtime: LiteRT (ai-edge-litert)" in result.format()
  interpreter, runtime = verification.tflite_interpreter(export_dir / "model.tflite")
  assert runtime == "litert" and type(interpreter).__module__.startswith("ai_edge_litert")


def test_falls_back_to_tensorflow_without_litert(export_dir, monkeypatch):
  monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import raises ImportError
  monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
  result = verification.verify(str(export_dir), samples=3)
  assert result.tflite_runtime == "tensorflow"
  assert result.ok and result.differences["tflite"][1] <= 1e-5
  assert "fallback: ai-edge-litert is not installed" in result.format()
