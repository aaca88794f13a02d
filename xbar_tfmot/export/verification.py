"""Checks an export folder: SavedModel, TFLite and the crossbar-explicit model agree.

Works on exports of either Keras flavour: `model.keras` is loaded with Keras 3 first, then
tf_keras (`model_io.load_model`), and the crossbar-explicit model is built in its flavour.

The crossbar-explicit model is rebuilt from the mapping and the exported Keras weights; its
construction validates the mapping against those weights, so a non-zero weight in a crossbar
the mapping dropped fails with the path of the mapping field.

An int8 file (`model_int8.tflite`) is checked crossbar by crossbar against the mapping and
`model.keras` (`int8.check_zeros`: a pruned weight that is not exactly 0 fails, naming layer
and crossbar); its outputs are shown beside the others but not judged, as quantisation moves
them: its accuracy is measured on real data with `tflite_accuracy`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.mapping import CrossbarMapping, MappingError
from xbar_tfmot.export import int8
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
  int8: int8.Int8Check | None = None  # the zeros of model_int8.tflite, if there is one
  # name -> (max absolute, max relative) difference of the int8 file, shown, not judged
  int8_differences: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

  @property
  def ok(self) -> bool:
    return (all(rel <= self.tolerance for _, rel in self.differences.values())
            and (self.int8 is None or self.int8.ok))

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
    for name, (abs_diff, rel_diff) in self.int8_differences.items():
      lines.append(f"{name:>16s} vs keras: max abs {abs_diff:.3g}, max rel {rel_diff:.3g}  "
                   f"(quantised, not judged)")
    if self.int8 is not None:
      lines.append(self.int8.format())
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


def _tflite_outputs(path: pathlib.Path, x: dict[str, np.ndarray], outputs: list[str],
                   batch_size: int = 1) -> tuple[dict[str, np.ndarray], str]:
  """Per signature output, the TFLite results of `batch_size` samples at a time; inputs and
  outputs are matched by their signature names, never by tensor position."""
  interpreter, runtime = tflite_interpreter(path)
  runner = interpreter.get_signature_runner("serving_default")
  _check_names(path.name, "inputs", runner.get_input_details(), list(x))
  _check_names(path.name, "outputs", runner.get_output_details(), outputs)
  samples = len(next(iter(x.values())))
  results = [runner(**{k: v[i:i + batch_size] for k, v in x.items()})
             for i in range(0, samples, batch_size)]
  return {k: np.concatenate([r[k] for r in results]) for k in outputs}, runtime


def tflite_accuracy(path: str | pathlib.Path, x: Any, y: Any, batch_size: int = 64) -> float:
  """Top-1 accuracy of an exported TFLite file (float or int8) on `(x, y)`, run by the TFLite
  interpreter through its serving signature.

  `x`: the images `(N, *input shape)`, or a sequence of arrays, one per input; `y`: N integer
  labels or one-hot rows. The file must have one output (the class scores)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"TFLite file {str(path)!r} does not exist.")
  interpreter, _ = tflite_interpreter(path)
  details = interpreter.get_signature_runner("serving_default").get_input_details()
  names = sorted(details, key=lambda n: (len(n), n))  # input_0, input_1, ..., input_10
  arrays = [x] if len(names) == 1 and not isinstance(x, (list, tuple)) else list(x)
  if len(arrays) != len(names):
    raise VerificationError(f"x: {len(arrays)} arrays for {path.name}'s {len(names)} inputs "
                            f"{names}; valid: one array per input, in model.inputs order.")
  feed = {n: np.asarray(a).astype(details[n]["dtype"]) for n, a in zip(names, arrays)}
  labels = np.asarray(y)
  labels = labels.argmax(-1) if labels.ndim == 2 else labels.reshape(-1)
  if len(labels) != len(feed[names[0]]) or len(labels) == 0:
    raise VerificationError(f"y: {len(labels)} labels for {len(feed[names[0]])} images; valid: "
                            f"one label per image, at least one.")
  runner = interpreter.get_signature_runner("serving_default")
  outputs = list(runner.get_output_details())
  if len(outputs) != 1:
    raise VerificationError(f"{path.name} has the outputs {sorted(outputs)}; valid for "
                            f"tflite_accuracy: one output of class scores.")
  scores = _tflite_outputs(path, feed, outputs, batch_size)[0][outputs[0]]
  return float(np.mean(scores.reshape(len(labels), -1).argmax(-1) == labels))


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
  int8_check, int8_outputs = None, {}
  if (root / int8.FILE).exists():
    _same_mapping(mapping, root / int8.FILE)
    int8_check = int8.check_zeros((root / int8.FILE).read_bytes(), mapping, model)
    try:
      int8_outputs, runtime = _tflite_outputs(root / int8.FILE, x, keys)
    except (RuntimeError, ValueError) as err:  # the interpreter refuses a malformed file
      int8_check = dataclasses.replace(int8_check, violations=(
          *int8_check.violations, f"{int8.FILE} does not run: {str(err)[:300]}"))
  labels = dict(zip(keys, keras_io_names(model)[1]))
  differences = {}
  for artefact, results in outputs.items():
    for key in keys:
      name = artefact if len(keys) == 1 else f"{artefact}:{labels[key]}"
      differences[name] = _difference(reference[key], results[key])
  int8_differences = {("tflite_int8" if len(keys) == 1 else f"tflite_int8:{labels[key]}"):
                      _difference(reference[key], int8_outputs[key]) for key in int8_outputs}
  return Verification(mapping, differences, tolerance, runtime, int8_check, int8_differences)
