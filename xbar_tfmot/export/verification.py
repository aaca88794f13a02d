"""Checks an export folder: SavedModel, TFLite and the crossbar-explicit model agree.

Works on exports of either Keras flavour: `model.keras` is loaded with Keras 3 first, then
tf_keras (`model_io.load_model`), and the crossbar-explicit model is built in its flavour.

The crossbar-explicit model is rebuilt from the mapping and the exported Keras weights; its
construction validates the mapping against those weights, so a non-zero weight in a crossbar
the mapping dropped fails with the path of the mapping field.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from xbar_tfmot.core.mapping import CrossbarMapping, MappingError
from xbar_tfmot.export.exporter import read_mapping


@dataclasses.dataclass(frozen=True)
class Verification:
  mapping: CrossbarMapping
  # name -> (max absolute, max relative) difference from the Keras model's output
  differences: dict[str, tuple[float, float]]
  tolerance: float
  tflite_runtime: str | None = None  # "litert" or "tensorflow" (the fallback), if TFLite ran

  @property
  def ok(self) -> bool:
    return all(rel <= self.tolerance for _, rel in self.differences.values())

  def format(self) -> str:
    totals = self.mapping.totals
    lines = [f"mapping: {self.mapping.granularity} grain, {totals['crossbars']} of "
             f"{totals['dense']} crossbars (reduction {totals['reduction']:.1%}, utilization "
             f"{totals['utilization']:.1%})"]
    if self.tflite_runtime:
      lines.append(f"tflite runtime: {TFLITE_RUNTIMES[self.tflite_runtime]}")
    for name, (abs_diff, rel_diff) in self.differences.items():
      verdict = "ok" if rel_diff <= self.tolerance else "MISMATCH"
      lines.append(f"{name:>16s} vs keras: max abs {abs_diff:.3g}, max rel {rel_diff:.3g}  {verdict}")
    return "\n".join(lines)


def _difference(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
  diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
  scale = max(float(np.max(np.abs(reference))), 1e-12)
  return float(diff.max()), float(diff.max() / scale)


TFLITE_RUNTIMES = {"litert": "LiteRT (ai-edge-litert)",
                   "tensorflow": "tf.lite.Interpreter (fallback: ai-edge-litert is not installed)"}


def tflite_interpreter(path: pathlib.Path):
  """`(interpreter, runtime)`: LiteRT, the runtime users deploy `.tflite` files with, or
  TensorFlow's deprecated `tf.lite.Interpreter` where `ai-edge-litert` is missing."""
  try:
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_path=str(path)), "litert"
  except ImportError:
    return tf.lite.Interpreter(model_path=str(path)), "tensorflow"


def _tflite_outputs(path: pathlib.Path, x: np.ndarray) -> tuple[np.ndarray, str]:
  interpreter, runtime = tflite_interpreter(path)
  runner = interpreter.get_signature_runner("serving_default")
  return np.concatenate([runner(input_0=x[i:i + 1])["output"] for i in range(len(x))]), runtime


def _same_mapping(mapping: CrossbarMapping, source: pathlib.Path) -> None:
  if read_mapping(source).data != mapping.data:
    raise MappingError("", f"the mapping carried by {str(source)!r} differs from the export's.")


def verify(directory: str, samples: int = 8, tolerance: float = 1e-4, seed: int = 0,
           custom_objects: Mapping[str, Any] | None = None) -> Verification:
  """Runs the exported artefacts on the same random inputs and compares them
  (`custom_objects`: the model's own layers, as for `export`)."""
  from xbar_tfmot.export.model_io import load_model
  from xbar_tfmot.models.crossbar_model import crossbar_model

  root = pathlib.Path(directory)
  if not (root / "model.keras").exists():
    raise FileNotFoundError(f"{str(root)!r} is not an export folder: model.keras is missing.")
  mapping = read_mapping(root)
  model = load_model(str(root / "model.keras"), custom_objects)
  explicit = crossbar_model(model, mapping)
  shape = (samples, *model.input_shape[1:])
  x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  reference = np.asarray(model(x, training=False))
  outputs = {"crossbar-explicit": np.asarray(explicit(x, training=False))}
  if (root / "saved_model").is_dir():
    serve = tf.saved_model.load(str(root / "saved_model")).signatures["serving_default"]
    outputs["saved_model"] = serve(input_0=tf.constant(x))["output"].numpy()
    _same_mapping(mapping, root / "saved_model")
  runtime = None
  if (root / "model.tflite").exists():
    outputs["tflite"], runtime = _tflite_outputs(root / "model.tflite", x)
    _same_mapping(mapping, root / "model.tflite")
  return Verification(mapping, {k: _difference(reference, v) for k, v in outputs.items()},
                      tolerance, runtime)
