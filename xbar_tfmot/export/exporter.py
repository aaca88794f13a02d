"""Export a pruned model with its crossbar mapping: SavedModel, TFLite, JSON (one folder).

The export is atomic: everything is written into a temporary folder beside the target and
renamed into place at the end, so a failure leaves no partial export and names its step.

Folder layout:
  saved_model/   serving signature = the stripped model; `assets/mapping.json`; an extra
                 signature `crossbar_mapping` returning the mapping JSON as a string. Keras 3
                 models are written through Keras 3's own export path
                 (`keras.export.ExportArchive`), tf_keras models as a `tf.Module`; both
                 have the same signatures: `serving_default(input_0, input_1, ...)`, one
                 argument per model input in `model.inputs` order with its dtype (float or
                 integer), returning `{"output": ...}` for one output and
                 `{"output_0": ..., "output_1": ...}` (`model.outputs` order) for several.
  model.tflite   converted from that SavedModel; the mapping JSON in the flatbuffer's
                 `metadata` list under the name `xbar_tfmot.crossbar_mapping`.
  model_int8.tflite  int8 weights and activations (float inputs and outputs), the same
                 metadata; post-training quantised from the SavedModel on `representative_data`,
                 or converted from a `quantize_aware` model; format `tflite_int8`, opt-in. It is
                 refused unless every weight the mapping drops is 0 in it (`int8.check_zeros`).
  model.keras    the stripped Keras model (the weights `xbar-verify` rebuilds crossbars from).
  neurosim/      `network.csv` (NeuroSim's layer table), `crossbars.csv` (the mapping's
                 per-layer crossbar counts and utilisation), per layer the weight and input
                 files NeuroSim's `main` reads, and `run_neurosim.sh`; format `neurosim`,
                 opt-in (the input files are of the first `representative_data` image).
  mapping.json   the mapping; `summary.txt` a human-readable crossbar report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf

from xbar_tfmot import _compat
from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.mapping import CrossbarMapping, MappingError
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.models.model_mapping import build_mapping
from xbar_tfmot.models.report import crossbar_report

FORMATS = ("saved_model", "tflite", "json", "neurosim", "tflite_int8")
METADATA_NAME = "xbar_tfmot.crossbar_mapping"
SIGNATURE = "crossbar_mapping"


class ExportError(XbarError, RuntimeError):
  """An export step failed; the message names the step. Nothing was left at the target."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
  directory: pathlib.Path
  mapping: CrossbarMapping
  files: tuple[str, ...]


def export(model: Any, directory: str | os.PathLike, spec: CrossbarSpec,
           granularity: str = "column", formats: Iterable[str] = FORMATS[:3],
           permutations: Mapping[str, Any] | None = None, sparse_tflite: bool = False,
           overwrite: bool = False,
           custom_objects: Mapping[str, Any] | None = None,
           mapping: CrossbarMapping | None = None, representative_data: Any = None,
           quantized_model: Any = None) -> ExportResult:
  """Strips pruning wrappers and writes the export folder (see the module docstring).

  Args:
    model: a pruned model (wrapped or stripped), tf_keras or Keras 3.
    directory: the export folder; it must not exist unless `overwrite`.
    spec: the crossbar the mapping is for.
    granularity: `crossbar` or `column` (packed columns, output recombination).
    formats: any of `saved_model`, `tflite`, `json`, `neurosim`, `tflite_int8` (the TFLite
      formats need `saved_model`).
    permutations: mapping-only input permutations (`ReorderResult.permutations`).
    sparse_tflite: let the TFLite converter encode the zeros sparsely.
    overwrite: replace an existing export folder.
    custom_objects: `{name: class}` of the model's own layers; `model.keras` is loaded back
      with them before anything is renamed into place, and a class it needs but was not given
      fails the export, naming the class.
    mapping: the mapping already built for this model, spec, granularity and permutations
      (`build_mapping`), so that a caller that needs it too builds it once; None: built here.
    representative_data: for `tflite_int8` by post-training quantisation, training images
      `(N, *input shape)` (a sequence of arrays, one per input, for several inputs) the
      activation ranges are calibrated on; a few hundred suffice. For `neurosim`, its first
      image gives the input files (without it, a fixed random image).
    quantized_model: for `tflite_int8` from quantisation-aware training, the fine-tuned
      `quantize_aware(model)`; the int8 file is converted from it, the other files from `model`.
  """
  formats = tuple(formats)
  bad = sorted(set(formats) - set(FORMATS))
  if bad or not formats:
    raise ValueError(f"export formats {bad or formats}: valid: a non-empty subset of {FORMATS}.")
  for name in ("tflite", "tflite_int8"):
    if name in formats and "saved_model" not in formats:
      raise ValueError(f"export format {name!r} is converted from the SavedModel; add "
                       f"'saved_model'.")
  target = pathlib.Path(directory)
  if target.exists() and not overwrite:
    raise FileExistsError(f"export folder {str(target)!r} exists; pass overwrite=True to replace it.")
  target.parent.mkdir(parents=True, exist_ok=True)

  samples = _int8_arguments(model, formats, representative_data, quantized_model)
  stripped = _strip(model)
  input_dtypes(stripped)
  if mapping is None:
    mapping = build_mapping(stripped, spec, granularity, permutations)
  elif (mapping.spec, mapping.granularity) != (spec, granularity):
    raise ValueError(f"mapping: built for {mapping.spec} at {mapping.granularity} grain; valid: "
                     f"the mapping of this export's spec {spec} at {granularity} grain.")
  _remove_stale(target)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-",
                                      dir=target.parent))
  try:
    with _step("mapping.json"):
      mapping.to_json(tmp / "mapping.json", indent=1)
      (tmp / "summary.txt").write_text(_summary(stripped, spec, mapping), encoding="utf-8")
    with _step("model.keras"):
      stripped.save(tmp / "model.keras")
      _check_loads_back(tmp / "model.keras", introspection.flavour(stripped), custom_objects)
    if "saved_model" in formats:
      with _step("saved_model"):
        _write_saved_model(stripped, tmp / "saved_model", tmp / "mapping.json")
    if "tflite" in formats:
      with _step("tflite"):
        flat = _convert_tflite(tmp / "saved_model", sparse_tflite)
        (tmp / "model.tflite").write_bytes(add_tflite_metadata(flat, mapping.to_json()))
    if "tflite_int8" in formats:
      with _step("tflite_int8"):
        _write_int8(stripped, tmp, mapping, samples, quantized_model)
    if "neurosim" in formats:
      with _step("neurosim"):
        from xbar_tfmot.export import neurosim
        neurosim.write(stripped, mapping, tmp / "neurosim",
                       sample=_first_image(representative_data))
    if "json" not in formats:
      (tmp / "mapping.json").unlink()
    _replace(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return ExportResult(target, mapping, tuple(sorted(p.name for p in target.iterdir())))


def _first_image(data: Any) -> np.ndarray | None:
  """The first image of `representative_data` (one-input models), or None."""
  if data is None or isinstance(data, (list, tuple)):
    return None if data is None or len(data) != 1 else np.asarray(data[0])[:1]
  return np.asarray(data)[:1]


def _int8_arguments(model: Any, formats: tuple[str, ...], representative_data: Any,
                    quantized_model: Any) -> list[dict[str, np.ndarray]] | None:
  """The checked calibration samples of `tflite_int8` (None when converted from
  `quantized_model`); the int8 arguments without that format, or neither, are refused."""
  from xbar_tfmot.export import int8
  if int8.is_quantize_aware(model):
    raise int8.QuantizationError(
        f"model {model.name!r} holds quantisation wrappers; valid: the float model as model and "
        f"its quantize_aware version as quantized_model.")
  given = [n for n, v in (("representative_data", representative_data),
                          ("quantized_model", quantized_model)) if v is not None
           and not (n == "representative_data" and "neurosim" in formats)]
  if "tflite_int8" not in formats:
    if given:
      also = " (and by 'neurosim')" if given[0] == "representative_data" else ""
      raise int8.QuantizationError(f"{given[0]} is used by the format 'tflite_int8' only{also}; "
                                   f"add it to formats or leave {given[0]} out.")
    return None
  if quantized_model is not None:
    if not int8.is_quantize_aware(quantized_model):
      raise int8.QuantizationError(
          f"quantized_model {getattr(quantized_model, 'name', quantized_model)!r} holds no "
          f"quantisation wrappers; valid: the result of quantize_aware(model), fine-tuned.")
    if len(quantized_model.inputs) != len(model.inputs) or len(
        quantized_model.outputs) != len(model.outputs):
      raise int8.QuantizationError("quantized_model has other inputs or outputs than model; "
                                   "valid: quantize_aware(model) of this model.")
    return None
  if representative_data is None:
    raise int8.QuantizationError(
        "export format 'tflite_int8' needs representative_data (training images, e.g. "
        "x_train[:500]) to calibrate post-training quantisation, or quantized_model (a "
        "fine-tuned quantize_aware(model)).")
  return int8.representative_samples(model, representative_data)


def _write_int8(model: Any, tmp: pathlib.Path, mapping: CrossbarMapping,
                samples: list[dict[str, np.ndarray]] | None, quantized_model: Any) -> None:
  """Writes `model_int8.tflite`, refused unless it keeps every zero the mapping says."""
  from xbar_tfmot.export import int8
  source = tmp / "saved_model"
  if quantized_model is not None:
    source = tmp / ".quantized_saved_model"
    _write_saved_model(quantized_model, source, tmp / "mapping.json")
  flat = int8.convert(source, samples)
  if quantized_model is not None:
    shutil.rmtree(source)
  check = int8.check_zeros(flat, mapping, model)
  if not check.ok:
    more = len(check.violations) - 3
    raise RuntimeError(f"{int8.FILE} fails its check (int8 weights, every pruned zero kept): "
                       + "; ".join(check.violations[:3]) + (f"; {more} more" if more > 0 else ""))
  (tmp / int8.FILE).write_bytes(add_tflite_metadata(flat, mapping.to_json()))


def _strip(model: Any) -> Any:
  if any(layer is not introspection.unwrap(layer) for layer in introspection.iter_layers(model)):
    from xbar_tfmot.pruning.api import strip_crossbar_pruning
    return strip_crossbar_pruning(model)
  return model


@contextlib.contextmanager
def _step(name: str):
  try:
    yield
  except Exception as err:  # noqa: BLE001 - re-raised with the step named
    raise ExportError(f"export step {name!r} failed: {type(err).__name__}: {err}") from err


def _check_loads_back(path: pathlib.Path, flavour: str,
                      custom_objects: Mapping[str, Any] | None) -> None:
  """`xbar-verify` reads model.keras: an export whose model does not load back is refused."""
  from xbar_tfmot.export import model_io
  try:
    model_io.load_with(flavour, str(path), custom_objects)
  except Exception as err:  # noqa: BLE001 - Keras raises many kinds for unknown classes
    unknown = model_io.unknown_class(str(err))
    if unknown is None:
      raise RuntimeError(f"model.keras does not load back: "
                         f"{str(err)[:model_io.ERROR_CHARS]}") from None
    raise RuntimeError(f"model.keras does not load back: the model uses the class "
                       f"{unknown!r}; pass custom_objects={{{unknown!r}: ...}} to export (and "
                       f"--custom-objects MODULE to xbar-verify).") from None


def _remove_stale(target: pathlib.Path) -> None:
  """Removes the temporary and replaced folders that an export killed mid-way left beside
  `target` (named `.NAME.tmp-PID-*` and `.NAME.old-PID`); those of live processes stay."""
  for path in target.parent.glob(f".{target.name}.*"):
    kind, _, rest = path.name[len(target.name) + 2:].partition("-")
    pid = rest.split("-")[0]
    if kind in ("tmp", "old") and pid.isdigit() and not process_alive(int(pid)):
      shutil.rmtree(path, ignore_errors=True)


def process_alive(pid: int) -> bool:
  """True while a process of this pid runs on this host (or cannot be signalled by us)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _replace(tmp: pathlib.Path, target: pathlib.Path) -> None:
  old = None
  if target.exists():
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
  tmp.rename(target)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _summary(model: Any, spec: CrossbarSpec, mapping: CrossbarMapping) -> str:
  totals = mapping.totals
  return (f"{crossbar_report(model, spec).format_table()}\n\nmapping ({mapping.granularity} "
          f"grain): {totals['crossbars']} of {totals['dense']} crossbars, reduction "
          f"{totals['reduction']:.1%}, utilization {totals['utilization']:.1%}\n")


class _MappingAsset(tf.Module):
  """The mapping JSON as a SavedModel asset, and the signature that returns it."""

  def __init__(self, mapping_file: pathlib.Path):
    super().__init__()
    self.mapping_asset = tf.saved_model.Asset(str(mapping_file))

  @tf.function(input_signature=[])
  def crossbar_mapping(self):
    return {"mapping": tf.io.read_file(self.mapping_asset)}


class _Exported(_MappingAsset):
  """The stripped tf_keras model plus its mapping asset."""

  def __init__(self, model: Any, mapping_file: pathlib.Path):
    super().__init__(mapping_file)
    self.model = model


def input_names(model: Any) -> list[str]:
  """The serving signature's argument names, one per model input in `model.inputs` order."""
  return [f"input_{i}" for i in range(len(model.inputs))]


def output_names(model: Any) -> list[str]:
  """The serving signature's result keys, one per model output in `model.outputs` order."""
  count = len(model.outputs)
  return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def keras_io_names(model: Any) -> tuple[list[str], list[str]]:
  """The Keras names of the model's inputs and outputs (for messages), in signature order."""
  inputs = [getattr(t, "name", None) or f"input_{i}" for i, t in enumerate(model.inputs)]
  outputs = list(getattr(model, "output_names", None) or [])
  if len(outputs) != len(model.outputs):
    outputs = output_names(model)
  return [n.split(":")[0] for n in inputs], outputs


def input_dtypes(model: Any) -> list[tf.DType]:
  """Each model input's dtype; an input that is neither floating point nor integer (the
  serving signature, TFLite and `verify`'s random inputs need numbers) is an `ExportError`
  naming it."""
  names = keras_io_names(model)[0]
  dtypes = []
  for i, tensor in enumerate(model.inputs):
    dtype = tf.as_dtype(tensor.dtype)
    if not (dtype.is_floating or dtype.is_integer) or dtype == tf.bfloat16:
      raise ExportError(f"model input {names[i]!r} (input_{i}) has dtype {dtype.name}; valid: "
                        f"float16/32/64 or an integer type (export, TFLite and xbar-verify feed "
                        f"numbers).")
    dtypes.append(dtype)
  return dtypes


def _input_specs(model: Any) -> list[tf.TensorSpec]:
  return [tf.TensorSpec((None, *tensor.shape[1:]), dtype, name=name)
          for tensor, dtype, name in zip(model.inputs, input_dtypes(model), input_names(model))]


def _serve(model: Any):
  keys = output_names(model)

  def serve(*x):
    outputs = tf.nest.flatten(model(list(x) if len(x) > 1 else x[0], training=False))
    return dict(zip(keys, outputs))
  return serve


def _write_saved_model(model: Any, path: pathlib.Path, mapping_file: pathlib.Path) -> None:
  specs = _input_specs(model)
  if introspection.flavour(model) == "keras3":
    _write_keras3_saved_model(model, path, mapping_file, specs)
    return
  module = _Exported(model, mapping_file)
  serve = tf.function(_serve(model), input_signature=specs)
  tf.saved_model.save(module, str(path), signatures={
      "serving_default": serve, SIGNATURE: module.crossbar_mapping})


def _write_keras3_saved_model(model: Any, path: pathlib.Path, mapping_file: pathlib.Path,
                              specs: list[tf.TensorSpec]) -> None:
  """Keras 3's export path (`ExportArchive`), plus the mapping asset and its signature."""
  import keras
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint("serving_default", _serve(model), input_signature=specs)
  mapping = _MappingAsset(mapping_file)
  mapping.crossbar_mapping()  # traced, as add_endpoint requires of a tf.function
  archive.add_endpoint(SIGNATURE, mapping.crossbar_mapping)
  # ExportArchive keeps only variables and lookup tables of tracked objects; an Asset must be
  # reachable from the saved root to be copied into assets/, so it is attached there (a
  # private attribute of Keras 3's archive, see _compat).
  _compat.export_archive_root(archive).crossbar_mapping_asset = mapping
  archive.write_out(str(path), verbose=False)


def _convert_tflite(saved_model: pathlib.Path, sparse: bool) -> bytes:
  converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), ["serving_default"])
  if sparse:
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
  return converter.convert()


def add_tflite_metadata(flatbuffer: bytes, text: str) -> bytes:
  """`flatbuffer` with `text` appended as a named entry of its `metadata` list."""
  schema, flatbuffer_utils = _compat.tflite_flatbuffer_modules()
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(text.encode("utf-8"), np.uint8)
  model.buffers.append(buffer)
  entry = schema.MetadataT()
  entry.name = METADATA_NAME
  entry.buffer = len(model.buffers) - 1
  model.metadata = [*(model.metadata or []), entry]
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite_metadata(flatbuffer: bytes, name: str = METADATA_NAME) -> str:
  """The text stored under `name` in a TFLite flatbuffer's metadata list."""
  _, flatbuffer_utils = _compat.tflite_flatbuffer_modules()
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
  for entry in model.metadata or []:
    entry_name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
    if entry_name == name:
      return bytes(model.buffers[entry.buffer].data).decode("utf-8")
  raise MappingError("", f"the TFLite file holds no metadata entry named {name!r}.")


def read_mapping(path: str | os.PathLike) -> CrossbarMapping:
  """The validated mapping of an export folder, a SavedModel folder, a `.tflite` or `.json`."""
  path = pathlib.Path(path)
  if path.is_dir() and (path / "mapping.json").exists():
    return CrossbarMapping.from_json(path / "mapping.json")
  if path.is_dir() and (path / "saved_model").is_dir():
    path = path / "saved_model"
  if path.is_dir() and (path / "saved_model.pb").exists():
    loaded = tf.saved_model.load(str(path))
    if SIGNATURE not in loaded.signatures:
      raise MappingError("", f"SavedModel {str(path)!r} has no {SIGNATURE!r} signature.")
    text = loaded.signatures[SIGNATURE]()["mapping"].numpy().decode("utf-8")
    return CrossbarMapping.from_json(text)
  if path.suffix == ".tflite" and path.is_file():
    return CrossbarMapping.from_json(tflite_metadata(path.read_bytes()))
  if path.suffix == ".json" and path.is_file():
    return CrossbarMapping.from_json(path)
  raise FileNotFoundError(
      f"{str(path)!r} is not an export folder, a SavedModel folder, a .tflite or a .json file.")
