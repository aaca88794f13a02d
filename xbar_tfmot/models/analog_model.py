"""The analog model: the crossbar-explicit model on a non-ideal chip (docs/hardware.md, "Analog inference").

`analog_model(model, mapping, hw, seed, calibration)` rewrites a model one-to-one like
`crossbar_model` does, but each mapped layer becomes an `AnalogLayer` that holds the packed
crossbars as conductances (`xbar_tfmot.core.analog`: scale per layer or per crossbar, bit
slices of `cell_bits`, differential pairs or offset columns), programmed once per chip
instance with variation and stuck-at faults drawn statelessly from `(seed, layer index)`.
For an input it

1. quantises the layer input to `input_bits` over a calibrated range (DAC; bit-serial in
   `dac_bits` slices if `hw.bit_serial`);
2. gathers each crossbar's input rows and computes, per crossbar, the partial sum of every
   physical column (one batched matmul), with read noise per call if `hw.read_noise`;
3. digitises each crossbar column's partial sum separately with an `adc_bits` ADC whose range
   is the layer's calibrated percentile range: this is where the mapping matters;
4. shift-adds the slices digitally, subtracts the offset of single-column encodings, rescales,
   and scatter-adds every column into its output channel across the crossbars of the layer;
   then bias and activation, digital and exact.

Without ADC and bit-serial inputs the columns combine linearly, so the layer folds the
(perturbed) conductances back into effective weights and costs one matmul like the
crossbar-explicit model. Ranges are calibrated on the float model's layer inputs for a
calibration batch. Keras 3 models need the TensorFlow backend.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from xbar_tfmot.core import analog, crossbar_matmul
from xbar_tfmot.core import mapping as mapping_lib
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.models.crossbar_model import (gather_inputs, output_shape,
                                              replace_mapped_layers, scatter_columns)
from xbar_tfmot.models.model_mapping import validate_mapping

CALIBRATION_ROWS = 4096  # patch rows sampled per layer to calibrate the ADC range
# A chip traced as a graph beats eager from here on: one isaac_32nm chip of the width-0.25 VGG8
# of docs/hardware.md on 2000 test images took 15-17 s traced against 22-23 s eager
# (2026-11-28, a quiet 2-core machine); on a few hundred images the trace costs more.
TRACE_FROM_IMAGES = 2000


class AnalogCore:
  """The Keras-free state and maths of one analog layer (conductances, ranges, forward)."""

  def __init__(self, hw: HardwareSpec, encoded: analog.Encoded, columns: np.ndarray, seed: int,
               index: int):
    self.hw = hw
    self.encoded = encoded
    self.columns = columns
    self.seed = (int(seed), 2 * int(index))
    self.read_seed = (int(seed), 2 * int(index) + 1)
    self.conductances = analog.program(encoded.conductances, hw, self.seed)
    self.fast = hw.adc_bits is None and not hw.bit_serial
    self.weights = encoded.effective(self.conductances) if self.fast else None
    self.input_range: tuple[float, float] | None = None
    self.adc_range: tuple[float, float] | None = None

  def column_sums(self, inputs: tf.Tensor, conductances: tf.Tensor) -> tf.Tensor:
    """`(..., n, kout, P, q)` partial sums of every physical column."""
    n, r, k, p, q = self.encoded.conductances.shape
    sums = crossbar_matmul.per_crossbar(inputs, tf.reshape(conductances, (n, r, k * p * q)))
    return tf.reshape(sums, tf.concat([tf.shape(sums)[:-1], [k, p, q]], 0))

  def combine(self, sums: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
    """Digital shift-add of slices and polarities, offset, scale: `(..., n, kout)`."""
    out = crossbar_matmul.contract_last(sums, tf.constant(self.encoded.coef), 2)
    if self.encoded.offset:
      out = out - tf.reduce_sum(inputs, axis=-1, keepdims=True)
    scale = self.encoded.scale
    return out * tf.constant(scale[..., 0] if scale.ndim else scale)

  def adc(self, sums: tf.Tensor) -> tf.Tensor:
    if self.hw.adc_bits is None:
      return sums
    return analog.quantize(sums, *self.adc_range, self.hw.adc_bits)

  def forward(self, inputs: tf.Tensor, counter=None) -> tf.Tensor:
    """`(..., n, rows)` crossbar inputs (already DAC-quantised unless bit-serial) -> `(..., n, kout)`."""
    g = self.conductances
    if self.hw.read_noise > 0:
      seed = tf.random.experimental.stateless_fold_in(tf.constant(self.read_seed, tf.int32),
                                                      counter)
      g = analog.read(g, self.hw.read_noise, seed)
    if self.fast:
      w = self.weights if self.hw.read_noise == 0 else self.encoded.effective(g)
      return crossbar_matmul.per_crossbar(inputs, w)
    if not self.hw.bit_serial:
      return self.combine(self.adc(self.column_sums(inputs, g)), inputs)
    slices = analog.input_slices(inputs, *self.input_range, self.hw.input_bits, self.hw.dac_bits)
    out = 0.0
    for j in range(slices.shape[0]):
      out = out + (2 ** (j * self.hw.dac_bits)) * self.combine(
          self.adc(self.column_sums(slices[j], g)), slices[j])
    return out

  def uncalibrated(self) -> bool:
    """True while a range the hardware needs (DAC or ADC) has not been calibrated."""
    return ((self.hw.input_bits is not None and self.input_range is None)
            or (self.hw.adc_bits is not None and self.adc_range is None))

  def calibrate_inputs(self, x: np.ndarray) -> None:
    self.input_range = analog.input_range(_sample(x), self.hw.adc_percentile)

  def calibrate_adc(self, inputs: np.ndarray) -> None:
    """ADC range from the noise-free partial sums of the used columns for sampled inputs."""
    n, r = inputs.shape[-2:]
    rows = _sample(inputs.reshape(-1, n, r), CALIBRATION_ROWS)
    x = tf.constant(rows, tf.float32)
    g = tf.constant(self.encoded.conductances)
    if self.hw.bit_serial:
      x = analog.input_slices(x, *self.input_range, self.hw.input_bits, self.hw.dac_bits)
    sums = self.column_sums(x, g).numpy()
    used = self.columns >= 0  # (n, kout)
    self.adc_range = analog.percentile_range(sums[..., used, :, :], self.hw.adc_percentile)


def _sample(x, limit: int = 1_000_000) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim and x.shape[0] > limit:
    x = x[np.random.default_rng(0).choice(x.shape[0], limit, replace=False)]
  return x


@functools.lru_cache(maxsize=None)
def layer_class(flavour: str):
  """`AnalogLayer` for the given Keras flavour (`tf_keras` or `keras3`)."""
  K = introspection.keras_module(flavour)

  class AnalogLayer(K.layers.Layer):
    """A mapped layer computed on non-ideal crossbars. Inference only; not serialisable."""

    def __init__(self, core: AnalogCore, kind: str, kernel_shape, crossbar_rows, conv: dict,
                 activation=None, bias=None, **kwargs):
      super().__init__(**kwargs)
      self.core = core
      self.kind = kind
      self.kernel_shape = tuple(int(d) for d in kernel_shape)
      self.crossbar_rows = np.asarray(crossbar_rows, np.int64)
      self.conv = conv
      self.activation = K.activations.get(activation)
      self.bias_value = None if bias is None else np.asarray(bias, np.float32)

    def build(self, input_shape):
      self.counter = self.add_weight(name="reads", shape=(), dtype="int32", trainable=False,
                                     initializer="zeros")
      super().build(input_shape)

    def crossbar_inputs(self, inputs):
      x = tf.convert_to_tensor(inputs, tf.float32)
      hw = self.core.hw
      if hw.input_bits is not None and not hw.bit_serial:
        x = analog.quantize_inputs(x, *self.core.input_range, hw.input_bits)
      return gather_inputs(x, self.kind, self.kernel_shape, self.crossbar_rows, self.conv)

    def call(self, inputs):
      if self.core.uncalibrated():
        # Only the symbolic call that builds the copy (tf_keras rebuilds a functional model by
        # calling its layers) comes before `analog_model` calibrates: the shape is what counts.
        shape = list(self.compute_output_shape(tuple(inputs.shape)))
        shape[0] = tf.shape(inputs)[0]
        return tf.zeros(tf.stack(shape), inputs.dtype)
      counter = None
      if self.core.hw.read_noise > 0:
        counter = self.counter.assign_add(1)
      partial = self.core.forward(self.crossbar_inputs(inputs), counter)
      out = scatter_columns(partial, self.core.columns, self.kernel_shape[-1])
      if self.bias_value is not None:
        out = out + self.bias_value
      return self.activation(out) if self.activation is not None else out

    def compute_output_shape(self, input_shape):
      return output_shape(input_shape, self.kind, self.kernel_shape, self.conv)

  AnalogLayer.__name__ = AnalogLayer.__qualname__ = "AnalogLayer"
  return AnalogLayer


def _analog_layer(layer: Any, mapping: mapping_lib.CrossbarMapping, hw: HardwareSpec, seed: int,
                  index: int):
  inner = introspection.unwrap(layer)
  pack = mapping.packing(inner.name)
  config = inner.get_config()
  if config.get("data_format", "channels_last") != "channels_last":
    raise HardwareError(f"layer {inner.name!r}: data_format={config['data_format']!r} is not "
                        f"supported by the analog model; valid: channels_last.")
  kind = pack.geometry.kind
  conv = {} if kind == "Dense" else {
      "strides": tuple(config["strides"]), "padding": config["padding"],
      "dilation_rate": tuple(config["dilation_rate"])}
  weight_bits, cell_bits, differential = hw.cells(mapping.spec)
  encoded = analog.encode(pack.crossbar_weights(introspection.effective_kernel(layer)), hw,
                          weight_bits, cell_bits, differential)
  core = AnalogCore(hw, encoded, pack.columns, seed, index)
  bias = np.asarray(inner.bias) if getattr(inner, "use_bias", False) else None
  cls = layer_class(introspection.flavour(inner))
  return cls(core, kind, pack.geometry.kernel_shape, pack.crossbar_rows(), conv,
             activation=inner.activation, bias=bias, name=inner.name, dtype=inner.dtype)


def analog_model(model: Any, mapping: mapping_lib.CrossbarMapping, hw: HardwareSpec,
                 seed: int = 0, calibration: Any = None) -> Any:
  """A copy of `model` whose mapped layers run on the non-ideal crossbars of `hw` (module doc).

  Args:
    model: the pruned model the mapping was built from (tf_keras or Keras 3, TF backend).
    mapping: its `CrossbarMapping`; validated against the model first.
    hw: the `HardwareSpec`; its weight_bits/cell_bits/differential must agree with the
      mapping's spec where set.
    seed: the chip instance: programming variation and faults are drawn from it (stateless),
      read noise from it and a per-layer call counter.
    calibration: a batch of model inputs, required when `hw.input_bits` or `hw.adc_bits` is
      set: the DAC and ADC ranges are the `hw.adc_percentile` percentiles of the float
      model's layer inputs and noise-free partial sums on it.
  """
  if not isinstance(hw, HardwareSpec):
    raise HardwareError(f"hw must be a HardwareSpec, got {type(hw).__name__}.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
    raise HardwareError(f"seed={seed!r} is invalid; valid: an integer in [0, 2**31).")
  needs_calibration = hw.input_bits is not None or hw.adc_bits is not None
  if needs_calibration and calibration is None:
    raise HardwareError("calibration: a batch of inputs is required because input_bits or "
                        "adc_bits is set (the DAC and ADC ranges are calibrated on data).")
  validate_mapping(mapping, model)
  hw.cells(mapping.spec)
  cls = layer_class(introspection.flavour(model))
  copy = replace_mapped_layers(
      model, mapping.layer_names,
      lambda layer, index: _analog_layer(layer, mapping, hw, seed, index), cls)
  if needs_calibration:
    keras = introspection.keras_module(introspection.flavour(model))
    _calibrate(model, copy, cls, calibration, keras)
  return copy


def analog_layers(model: Any) -> list[Any]:
  """The `AnalogLayer`s of an analog model, in model order."""
  return [l for l in model.layers if type(l).__name__ == "AnalogLayer"]


def _calibrate(model, copy, cls, calibration, K) -> None:
  targets = [l for l in copy.layers if isinstance(l, cls)]
  originals = {introspection.unwrap(l).name: l for l in model.layers}
  probe = K.Model(model.inputs, [originals[l.name].input for l in targets])
  inputs = probe(calibration, training=False)
  if not isinstance(inputs, (list, tuple)):
    inputs = [inputs]
  for layer, x in zip(targets, inputs):
    x = np.asarray(x, np.float32)
    core = layer.core
    core.calibrate_inputs(x)
    if core.hw.adc_bits is not None:
      if core.hw.input_bits is not None and not core.hw.bit_serial:
        x = analog.quantize_inputs(tf.constant(x), *core.input_range, core.hw.input_bits)
      rows = gather_inputs(x, layer.kind, layer.kernel_shape, layer.crossbar_rows, layer.conv)
      core.calibrate_adc(np.asarray(rows))


def output_positions(model: Any, names: Sequence[str]) -> dict[str, int]:
  """Output positions per inference of each named layer (height x width; 1 for a vector)."""
  out = {}
  for layer in model.layers:
    name = introspection.unwrap(layer).name
    if name in names:
      shape = layer.output.shape
      out[name] = int(np.prod([d for d in shape[1:-1]], dtype=np.int64)) if len(shape) > 2 else 1
  missing = [n for n in names if n not in out]
  if missing:
    raise HardwareError(f"layers {missing} of the mapping are not layers of the model.")
  return out


def layer_inputs(model: Any, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
  """Input shape without the batch axis of each named layer."""
  return {introspection.unwrap(l).name: tuple(int(d) for d in l.input.shape[1:])
          for l in model.layers if introspection.unwrap(l).name in names}


def analog_accuracy(model: Any, mapping: mapping_lib.CrossbarMapping, hw: HardwareSpec,
                    x: np.ndarray, y: np.ndarray, seeds: Sequence[int], calibration: Any = None,
                    batch_size: int = 256, traced: bool | None = None) -> list[float]:
  """Top-1 accuracy of `model` on `(x, y)` for each chip instance (seed) of `hw`.

  `traced`: run each chip as a `tf.function` (one trace per chip whatever the batch sizes,
  then graph speed) or eagerly (no trace, slower per batch); None: traced from
  `TRACE_FROM_IMAGES` images on, below which eager costs less.
  """
  if traced is None:
    traced = len(x) >= TRACE_FROM_IMAGES
  out = []
  for seed in seeds:
    chip = analog_model(model, mapping, hw, int(seed), calibration)
    # One trace per chip whatever the batch sizes (the last batch is usually shorter).
    signature = [tf.TensorSpec((None, *np.shape(x)[1:]), tf.float32)]
    run = tf.function(lambda b: chip(b, training=False), input_signature=signature) if traced \
        else (lambda b: chip(b, training=False))
    correct = 0
    for start in range(0, len(x), batch_size):
      logits = run(tf.constant(x[start:start + batch_size], tf.float32))
      correct += int(np.sum(np.argmax(np.asarray(logits), -1) == y[start:start + batch_size]))
    out.append(correct / max(len(x), 1))
  return out
