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

from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.mapping import CrossbarMapping, MappingError
from xbar_tfmot.export.exporter import (input_dtypes, input_names, keras_io_names,
                                        output_names, read_mapping)


class VerificationError(XbarError, ValueError):
  """An export folder whose artefacts cannot be compared (their signatures do not fit the model)."""


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


def _check_names(artefact: str, kind: str, found, expected: list[str]) -> None:
  if sorted(found) != sorted(expected):
    raise VerificationError(f"{artefact}: serving signature {kind} {sorted(found)}, expected "
                            f"{expected} (one per model {kind[:-1]}); the export is not from "
                            f"this model.keras or was written by an older xbar_tfmot.")


def _tflite_outputs(path: pathlib.Path, x: dict[str, np.ndarray],
                    outputs: list[str]) -> tuple[dict[str, np.ndarray], str]:
  """Per signature output, the TFLite results of one sample at a time; inputs and outputs are
  matched by their signature names, never by tensor position."""
  interpreter, runtime = tflite_interpreter(path)
  runner = interpreter.get_signature_runner("serving_default")
  _check_names("model.tflite", "inputs", runner.get_input_details(), list(x))
  _check_names("model.tflite", "outputs", runner.get_output_details(), outputs)
  samples = len(next(iter(x.values())))
  results = [runner(**{k: v[i:i + 1] for k, v in x.items()}) for i in range(samples)]
  return {k: np.concatenate([r[k] for r in results]) for k in outputs}, runtime


def _saved_model_outputs(path: pathlib.Path, x: dict[str, np.ndarray],
                         outputs: list[str]) -> dict[str, np.ndarray]:
  serve = tf.saved_model.load(str(path)).signatures["serving_default"]
  _check_names("saved_model", "inputs", serve.structured_input_signature[1], list(x))
  _check_names("saved_model", "outputs", serve.structured_outputs, outputs)
  result = serve(**{k: tf.constant(v) for k, v in x.items()})
  return {k: result[k].numpy() for k in outputs}


def random_inputs(model: Any, samples: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`{signature input name: batch}` for every model input, in its shape and dtype: standard
  normal values for floating-point inputs, 0 or 1 for integer ones (valid indices for any
  embedding or lookup of two entries or more)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, tensor, dtype in zip(input_names(model), model.inputs, input_dtypes(model)):
    dims = tuple(tensor.shape)[1:]
    if any(d is None for d in dims):
      raise VerificationError(f"model input {name} has the shape {(None, *dims)}; verify draws "
                              f"random inputs and needs every size but the batch fixed.")
    shape = (samples, *[int(d) for d in dims])
    if dtype.is_floating:
      out[name] = rng.normal(size=shape).astype(dtype.as_numpy_dtype)
    else:
      out[name] = rng.integers(0, 2, size=shape).astype(dtype.as_numpy_dtype)
  return out


def _keras_outputs(model: Any, x: dict[str, np.ndarray]) -> list[np.ndarray]:
  args = list(x.values())
  return [np.asarray(y) for y in tf.nest.flatten(model(args if len(args) > 1 else args[0],
                                                       training=False))]


def _same_mapping(mapping: CrossbarMapping, source: pathlib.Path) -> None:
  if read_mapping(source).data != mapping.data:
    raise MappingError("", f"the mapping carried by {str(source)!r} differs from the export's.")


def verify(directory: str, samples: int = 8, tolerance: float = 1e-4, seed: int = 0,
           custom_objects: Mapping[str, Any] | None = None) -> Verification:
  """Runs the exported artefacts on the same random inputs and compares them, output by
  output (`custom_objects`: the model's own layers, as for `export`).

  Every model input gets random values of its own shape and dtype (`random_inputs`); the
  SavedModel and TFLite signatures are fed and read by name. With several outputs each
  comparison is named `ARTEFACT:OUTPUT` after the Keras output name (`tflite:cls`)."""
  from xbar_tfmot.export.model_io import load_model
  from xbar_tfmot.models.crossbar_model import crossbar_model

  root = pathlib.Path(directory)
  if not (root / "model.keras").exists():
    raise FileNotFoundError(f"{str(root)!r} is not an export folder: model.keras is missing.")
  mapping = read_mapping(root)
  model = load_model(str(root / "model.keras"), custom_objects)
  explicit = crossbar_model(model, mapping)
  x = random_inputs(model, samples, seed)
  keys = output_names(model)
  reference = dict(zip(keys, _keras_outputs(model, x)))
  outputs = {"crossbar-explicit": dict(zip(keys, _keras_outputs(explicit, x)))}
  if (root / "saved_model").is_dir():
    outputs["saved_model"] = _saved_model_outputs(root / "saved_model", x, keys)
    _same_mapping(mapping, root / "saved_model")
  runtime = None
  if (root / "model.tflite").exists():
    outputs["tflite"], runtime = _tflite_outputs(root / "model.tflite", x, keys)
    _same_mapping(mapping, root / "model.tflite")
  labels = dict(zip(keys, keras_io_names(model)[1]))
  differences = {}
  for artefact, results in outputs.items():
    for key in keys:
      name = artefact if len(keys) == 1 else f"{artefact}:{labels[key]}"
      differences[name] = _difference(reference[key], results[key])
  return Verification(mapping, differences, tolerance, runtime)
