"""The int8 TFLite file of an export, and the check that it keeps the pruned zeros.

Two ways to the int8 file, both through the TFLite converter with its default optimisation:
- post-training quantisation (either Keras flavour): the export's SavedModel is calibrated on
  a representative set of training images;
- quantisation-aware training (tf_keras only): `quantize_aware` wraps a stripped model with
  TFMOT's `Default8BitPrunePreserveQuantizeScheme`, the caller fine-tunes it, and the export
  converts it with the ranges it learned. Keras 3 has no counterpart: its `Model.quantize`
  is post-training and covers Dense, EinsumDense and Embedding only, not convolutions.

Why zeros survive: the converter stores weights as int8 with zero point 0, one scale per
output channel, and folds a following BatchNorm into the scales; a zero weight is stored as
0. That is checked, never assumed: `check_zeros` reads every mapped layer's int8 weights from
the flatbuffer and fails on any weight the mapping drops (or `model.keras` holds as 0) whose
int8 value is not its zero point, naming the layer and the crossbar.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np
import tensorflow as tf

from xbar_tfmot import _compat
from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.mapping import CrossbarMapping
from xbar_tfmot.core.packing import nonzero_segments
from xbar_tfmot.models import introspection
from xbar_tfmot.models.model_mapping import mapped_layers

FILE = "model_int8.tflite"
# Ops whose second input is a weight matrix a mapped layer can become.
WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")
# Below this mean |cosine| between a layer's kernel and an int8 tensor, they are not matched.
MIN_SIMILARITY = 0.5
QAT_WRAPPERS = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")


class QuantizationError(XbarError, ValueError):
  """An int8 export argument (`representative_data`, `quantized_model`) is invalid, or
  quantisation-aware training cannot be applied to the model."""


def is_quantize_aware(model: Any) -> bool:
  """True for a model holding TFMOT quantisation wrappers (`quantize_aware`'s result)."""
  return any(type(layer).__name__ in QAT_WRAPPERS for layer in getattr(model, "layers", ()))


def quantize_aware(model: Any) -> Any:
  """A tf_keras model wrapped for pruning-preserving quantisation-aware training.

  TFMOT's `quantize_apply` with `Default8BitPrunePreserveQuantizeScheme`: the forward pass
  sees int8 fake-quantised weights and activations, and every weight that is zero now stays
  zero through training. Compile and fit it (an epoch is typical), then pass it to
  `export(..., formats=(..., "tflite_int8"), quantized_model=it)` with the float model.
  Pruning wrappers are stripped first.
  """
  if introspection.flavour(model) != "tf_keras":
    raise QuantizationError(
        "quantize_aware: TFMOT's quantisation-aware training needs a tf_keras model, got a "
        "Keras 3 one; valid for Keras 3: post-training int8, export(..., "
        "formats=(..., 'tflite_int8'), representative_data=x_train[:N]).")
  from xbar_tfmot.export.exporter import _strip
  model = _strip(model)
  import tensorflow_model_optimization as tfmot
  qkeras = tfmot.quantization.keras
  scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
  try:
    return qkeras.quantize_apply(qkeras.quantize_annotate_model(model), scheme)
  except (RuntimeError, ValueError) as err:
    raise QuantizationError(
        f"quantize_aware: TFMOT cannot quantise model {model.name!r}: {str(err)[:300]} (its "
        f"Default8Bit scheme takes a BatchNormalization only right after a convolution without "
        f"activation; valid otherwise: post-training int8 with representative_data).") from None


def representative_samples(model: Any, data: Any) -> list[dict[str, np.ndarray]]:
  """`data` as one `{signature input name: batch of 1}` per sample, checked against the
  model's inputs: an array (or tensor) `(N, *input shape)` for a one-input model, a sequence
  of such arrays (one per input, same N) otherwise."""
  from xbar_tfmot.export.exporter import input_dtypes, input_names
  names, dtypes = input_names(model), input_dtypes(model)
  arrays = [data] if len(names) == 1 and not isinstance(data, (list, tuple)) else list(data)
  if len(arrays) != len(names):
    raise QuantizationError(f"representative_data: {len(arrays)} arrays for a model of "
                            f"{len(names)} inputs; valid: one array per input, in model.inputs "
                            f"order.")
  out = []
  for name, tensor, dtype, array in zip(names, model.inputs, dtypes, arrays):
    array = np.asarray(array)
    shape = tuple(tensor.shape)[1:]
    if (array.ndim != len(shape) + 1 or len(array) == 0
        or any(d is not None and d != a for d, a in zip(shape, array.shape[1:]))):
      raise QuantizationError(
          f"representative_data for {name}: shape {array.shape}; valid: (N, "
          f"{', '.join('any' if d is None else str(d) for d in shape)}) with N >= 1 samples "
          f"of the training images.")
    out.append(array.astype(dtype.as_numpy_dtype))
  if len({len(a) for a in out}) > 1:
    raise QuantizationError(f"representative_data: inputs of {[len(a) for a in out]} samples; "
                            f"valid: the same number for every input.")
  return [{n: a[i:i + 1] for n, a in zip(names, out)} for i in range(len(out[0]))]


def convert(saved_model: pathlib.Path,
            samples: Sequence[dict[str, np.ndarray]] | None = None) -> bytes:
  """The int8 flatbuffer of a SavedModel's serving signature (float inputs and outputs).

  With `samples` the activation ranges are calibrated on them (post-training quantisation);
  without, they come from the model's fake-quant layers (quantisation-aware training)."""
  converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), ["serving_default"])
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if samples:
    converter.representative_dataset = lambda: iter(samples)
  return converter.convert()


@dataclasses.dataclass(frozen=True)
class Int8Weights:
  """One mapped layer's weights as the int8 file stores them, in the Keras kernel layout."""
  tensor: str
  values: np.ndarray      # raw stored values (int8, or float where left unquantised)
  zero_point: np.ndarray  # broadcastable to `values`
  scale: np.ndarray       # broadcastable to `values`

  @property
  def nonzero(self) -> np.ndarray:
    return self.values != self.zero_point


@dataclasses.dataclass(frozen=True)
class Int8Check:
  """What `check_zeros` found: the tensor each mapped layer was matched to, and violations."""
  file: str
  tensors: dict[str, str]
  violations: tuple[str, ...]

  @property
  def ok(self) -> bool:
    return not self.violations

  def format(self) -> str:
    head = (f"tflite_int8 zeros: {len(self.tensors)} mapped layers, every weight the mapping "
            f"drops is 0 in {self.file}  {'ok' if self.ok else 'FAILED'}")
    return "\n".join([head, *(f"  {v}" for v in self.violations)])


def _op_name(schema: Any, code: int) -> str:
  names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
  return names.get(code, str(code))


def _weight_tensors(flatbuffer: bytes) -> list[dict[str, Any]]:
  """Every constant weight input of a `WEIGHT_OPS` op: name, type, stored array, scale and
  zero point (a weight read through a DEQUANTIZE op is taken from that op's input)."""
  schema, flatbuffer_utils = _compat.tflite_flatbuffer_modules()
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
  types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
  found, seen = [], set()
  for graph in model.subgraphs:
    producer = {}
    for op in graph.operators:
      for out in op.outputs:
        producer[out] = op
    for op in graph.operators:
      code = model.operatorCodes[op.opcodeIndex]
      if _op_name(schema, max(code.builtinCode, code.deprecatedBuiltinCode)) not in WEIGHT_OPS:
        continue
      if len(op.inputs) < 2 or op.inputs[1] < 0:
        continue
      index = op.inputs[1]
      source = producer.get(index)
      if source is not None:
        code = model.operatorCodes[source.opcodeIndex]
        if _op_name(schema, max(code.builtinCode, code.deprecatedBuiltinCode)) == "DEQUANTIZE":
          index = source.inputs[0]
      tensor = graph.tensors[index]
      data = model.buffers[tensor.buffer].data
      if data is None or (id(graph), index) in seen:
        continue
      seen.add((id(graph), index))
      dtype = np.dtype(types[tensor.type].lower())
      values = np.frombuffer(bytes(np.asarray(data, np.uint8)), dtype).reshape(tensor.shape)
      quant = tensor.quantization
      scale = None if quant is None or quant.scale is None else np.asarray(quant.scale)
      zero = None if quant is None or quant.zeroPoint is None else np.asarray(quant.zeroPoint)
      axis = 0 if quant is None else int(quant.quantizedDimension)
      name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
      found.append(dict(name=name, type=types[tensor.type], values=values, axis=axis,
                        scale=scale, zero=zero))
  return found


def _per_axis(param: np.ndarray | None, values: np.ndarray, axis: int,
              default: float) -> np.ndarray:
  """A per-tensor or per-axis quantisation parameter, shaped to broadcast against `values`."""
  if param is None or param.size == 0:
    return np.full([1] * values.ndim, default)
  if param.size == 1:
    return param.reshape([1] * values.ndim)
  shape = [1] * values.ndim
  shape[axis] = param.size
  return param.reshape(shape)


def _layouts(tensor: dict[str, Any], kernel_shape: tuple[int, ...]) -> Iterable[Int8Weights]:
  """The tensor read as a Keras kernel of `kernel_shape`: TFLite keeps the output channel
  first (`CONV_2D`, `FULLY_CONNECTED`) or last (`BATCH_MATMUL`)."""
  values = tensor["values"]
  if values.size != int(np.prod(kernel_shape)):
    return
  zero = _per_axis(tensor["zero"], values, tensor["axis"], 0)
  scale = _per_axis(tensor["scale"], values, tensor["axis"], 1.0)
  cout = kernel_shape[-1]
  if values.shape[0] == cout:
    yield Int8Weights(tensor["name"], *(np.moveaxis(np.broadcast_to(a, values.shape), 0, -1)
                                        .reshape(kernel_shape) for a in (values, zero, scale)))
  if values.shape[-1] == cout and values.ndim == 2:
    yield Int8Weights(tensor["name"], *(np.broadcast_to(a, values.shape).reshape(kernel_shape)
                                        for a in (values, zero, scale)))


def _similarity(weights: Int8Weights, kernel: np.ndarray) -> float:
  """Mean |cosine| over output channels between dequantised weights and the Keras kernel
  (a folded BatchNorm rescales each channel, possibly by a negative factor)."""
  deq = ((weights.values.astype(np.float64) - weights.zero_point) * weights.scale)
  a = deq.reshape(-1, kernel.shape[-1])
  b = kernel.astype(np.float64).reshape(-1, kernel.shape[-1])
  norms = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
  live = norms > 0
  if not live.any():
    return 0.0
  return float(np.mean(np.abs((a * b).sum(axis=0)[live]) / norms[live]))


def match_layers(flatbuffer: bytes, kernels: dict[str, np.ndarray]
                 ) -> tuple[dict[str, Int8Weights], dict[str, str]]:
  """`({layer: its weights in the file}, {layer: why none was found})`: each layer takes the
  weight tensor of its kernel's size most similar to its kernel, each tensor one layer."""
  tensors = _weight_tensors(flatbuffer)
  pairs = []
  for name, kernel in kernels.items():
    for i, tensor in enumerate(tensors):
      for weights in _layouts(tensor, kernel.shape):
        pairs.append((_similarity(weights, kernel), name, i, weights))
  pairs.sort(key=lambda p: -p[0])
  matched, used, best = {}, set(), {}
  for score, name, i, weights in pairs:
    best.setdefault(name, score)
    if name in matched or i in used or score < MIN_SIMILARITY:
      continue
    matched[name] = weights
    used.add(i)
  missing = {name: (f"no weight tensor of its kernel's size {list(kernel.shape)} matches it "
                    f"(best mean |cosine| {best[name]:.2f}, needed {MIN_SIMILARITY})"
                    if name in best else
                    f"no {'/'.join(WEIGHT_OPS)} weight tensor has its kernel's size "
                    f"{list(kernel.shape)}")
             for name, kernel in kernels.items() if name not in matched}
  return matched, missing


def _where(mapping: CrossbarMapping, name: str, g: int, o: int) -> str:
  """Names the crossbar of weight column (input group g, output channel o) for a message."""
  geometry = mapping.geometry(name)
  h = o // geometry.kout
  pack = mapping.packing(name)
  for n in np.nonzero(pack.crossbar_group == g)[0]:
    if o in pack.columns[n]:
      crossbar_id = mapping.layer(name)["crossbars"][n]["id"]
      return f"crossbars[{n}] (id {crossbar_id}), column of output channel {o}"
  in_block = [int(n) for n in np.nonzero(pack.crossbar_group == g)[0]
              if np.any((pack.columns[n] // geometry.kout == h) & (pack.columns[n] >= 0))]
  block = f"dense crossbar B({g}, {h}) (input group {g}, output group {h})"
  if mapping.granularity == "crossbar" and in_block:
    return f"{block}, kept as crossbars[{in_block[0]}] without a column for output channel {o}"
  return (f"{block}, output channel {o}: a column the mapping drops"
          if mapping.granularity == "column" else f"{block}: a crossbar the mapping drops")


def check_zeros(flatbuffer: bytes, mapping: CrossbarMapping, model: Any,
                file: str = FILE) -> Int8Check:
  """Checks an int8 flatbuffer crossbar by crossbar against the mapping and the float model.

  Every mapped layer's weights must be found, stored as int8, and hold their zero point
  (dequantise to exactly 0) wherever the mapping keeps no crossbar column, and wherever the
  float model's kernel is 0."""
  kernels = {inner.name: introspection.effective_kernel(outer)
             for outer, inner in mapped_layers(model)}
  kernels = {name: kernels[name] for name in mapping.layer_names if name in kernels}
  matched, missing = match_layers(flatbuffer, kernels)
  violations = [f"layer {name!r}: {why}" for name, why in missing.items()]
  for name, weights in matched.items():
    if weights.values.dtype != np.int8:
      violations.append(f"layer {name!r} (tensor {weights.tensor!r}): stored as "
                        f"{weights.values.dtype}, not int8")
      continue
    geometry, pack = mapping.geometry(name), mapping.packing(name)
    nonzero = weights.nonzero
    seg = nonzero_segments(geometry, nonzero.astype(np.int8), pack.permutation)
    covered = np.zeros_like(seg)
    used = pack.columns >= 0
    covered[np.repeat(pack.crossbar_group[:, None], pack.columns.shape[1], 1)[used],
            pack.columns[used]] = True
    lost = np.argwhere(seg & ~covered)
    for g, o in lost[:3]:
      index = next(i for i in map(tuple, np.argwhere(nonzero[..., o]))
                   if _group_of(pack, geometry, (*i, o)) == g)
      index = (*map(int, index), int(o))
      violations.append(
          f"layer {name!r}, {_where(mapping, name, int(g), int(o))}: int8 weight {list(index)} "
          f"is {int(weights.values[index])} (zero point {int(weights.zero_point[index])}), not 0 "
          f"(tensor {weights.tensor!r}; {len(lost)} dropped column(s) of this layer hold "
          f"non-zeros)")
    filled = nonzero & (kernels[name] == 0)
    if filled.any() and lost.size == 0:
      index = tuple(int(i) for i in np.argwhere(filled)[0])
      g = _group_of(pack, geometry, index)
      violations.append(
          f"layer {name!r}, {_where(mapping, name, g, index[-1])}: int8 weight {list(index)} is "
          f"{int(weights.values[index])} where model.keras holds 0 ({int(filled.sum())} such "
          f"weights; tensor {weights.tensor!r})")
  return Int8Check(file, {n: w.tensor for n, w in matched.items()}, tuple(violations))


def _group_of(pack: Any, geometry: Any, index: tuple[int, ...]) -> int:
  """The input group holding kernel element `index` (its channel, and tap for row units)."""
  channel = index[-2]
  tap = int(np.ravel_multi_index(index[:-2], geometry.kernel_shape[:-2])) if len(index) > 2 else 0
  row_units = geometry.unit_rows == 1 and geometry.taps > 1
  unit = channel * geometry.taps + tap if row_units else channel
  return int(np.argwhere(pack.groups == unit)[0][0])
