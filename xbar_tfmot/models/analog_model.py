"""The analog model: the crossbar-explicit model on a non-ideal chip (docs/hardware.md, "Analog inference").

`analog_model(model, mapping, hw, seed, calibration)` rewrites a model one-to-one like
`crossbar_model` does, but each mapped layer becomes an `AnalogLayer` that holds the packed
crossbars as conductances (`xbar_tfmot.core.analog`: scale per layer or per crossbar, bit
slices of `cell_bits`, differential pairs or offset columns), programmed once per chip
instance with variation and stuck-at faults drawn statelessly from `(seed, layer index)`.
For an input it

1. quantises the layer input to `input_bits` over a calibrated range (DAC), one multi-bit
   analog input, or, when the chip is bit-serial (`hw.serial`), `dac_bits` slices applied in
   `hw.input_cycles` cycles: the dataflow the cost model charges;
2. reads each input group once (`crossbar_model.layer_reader`) and computes, per crossbar and
   cycle, the current of every converted line (one product for all crossbars): each column, or each differential pair's
   `I+ - I-` when the pair is read in the array (`hw.differential_read`), with read noise
   drawn per image, position and cycle if `hw.read_noise`;
3. digitises each line with an `adc_bits` ADC whose range was calibrated on the programmed
   chip per layer, per slice or per column (`hw.adc_ranges`): this is where the mapping
   matters;
4. shift-adds the slices digitally, removes the `g_min` current and the offset of
   single-column encodings, rescales, and scatter-adds every column into its output channel
   across the crossbars of the layer; multiplies by the layer's digital gain (global drift
   compensation, or `compensate_chip`'s output gains); then bias and activation, digital and
   exact.

With `hw.drift_time` the chip is read that long after programming: the programmed
conductances drift (`analog.drift`), the ADC ranges stay those calibrated at programming.

Without ADC and bit-serial inputs the columns combine linearly, so the layer folds the
(perturbed) conductances back into effective weights and costs one product per group (read
noise then enters as the output noise it amounts to). A bit-serial chip shift-adds its cycles'
conversions before the (linear) digital combination, which then runs once. Ranges
are calibrated on the float model's layer inputs for a calibration batch. Keras 3 models need
the TensorFlow backend.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from xbar_tfmot.core import analog, crossbar_matmul
from xbar_tfmot.core import mapping as mapping_lib
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec, check_compensation
from xbar_tfmot.models import introspection
from xbar_tfmot.models.crossbar_model import (gather_inputs, output_shape,
                                              layer_reader, replace_mapped_layers,
                                              scatter_columns)
from xbar_tfmot.models.model_mapping import validate_mapping

CALIBRATION_ROWS = 4096  # patch rows sampled per layer to calibrate the ADC range
# A chip traced as a graph beats eager from here on: one isaac_32nm chip of the width-0.25 VGG8
# of docs/hardware.md on 2000 test images took 15-17 s traced against 22-23 s eager
# (2026-11-28, a quiet 2-core machine); on a few hundred images the trace costs more.
TRACE_FROM_IMAGES = 2000


class AnalogCore:
  """The Keras-free state and maths of one analog layer (conductances, ranges, forward)."""

  def __init__(self, hw: HardwareSpec, encoded: analog.Encoded, columns: np.ndarray, seed: int,
               index: int, cols: int | None = None,
               reader: Any = None):
    """`reader`: how the crossbars read the layer input (`crossbar_model.layer_reader`: a
    `RowGroups` of crossbars sharing input rows, or a `ConvReader`); None: every crossbar its
    own group, `forward` taking `(..., n, rows)`."""
    self.hw = hw
    self.encoded = encoded
    self.columns = np.asarray(columns)
    n, r, k, p, q = encoded.conductances.shape
    self.reader = reader or crossbar_matmul.RowGroups.each(n, r)
    self.seed = (int(seed), 2 * int(index))
    self.read_key = int(np.random.SeedSequence((int(seed), 2 * int(index) + 1))
                        .generate_state(1, np.uint64)[0])
    self.pairs = p == 2 and hw.differential_read == "array"
    self.coef = encoded.line_coef(self.pairs)
    self.sum_coef = encoded.input_sum_coef(self.pairs)
    self.fast = hw.adc_bits is None and not hw.serial
    # as programmed (where the ADC is calibrated), then as read `hw.drift_time` seconds later
    self.programmed = analog.program(encoded.conductances, hw, self.seed)
    self.programmed_lines = encoded.lines(self.programmed, self.pairs)
    self.set_conductances(analog.drift(self.programmed, hw, self.seed))
    # digital gain per layer `()` or per output channel `(cout,)`, after the column scatter
    self.gain = np.ones((), np.float32)
    if hw.drifts and hw.drift_compensation:
      self.gain = np.float32(self.reference_read(self.programmed)
                             / self.reference_read(self.conductances))
    self.input_range: tuple[float, float] | None = None
    self.adc_low: np.ndarray | None = None  # (cycles, ...) ranges, broadcast on the lines
    self.adc_high: np.ndarray | None = None
    per_pair = 2 if self.pairs else 1
    if hw.skip_idle_columns:
      self.converted = int((self.columns >= 0).sum()) * p * q // per_pair
    else:  # every physical column, idle ones and those no weight slot reaches included
      self.converted = n * ((k * p * q if cols is None else int(cols)) // per_pair)

  def set_conductances(self, conductances) -> None:
    """Reads the chip from now on with these `(n, rows, kout, P, q)` conductances (drifted, or
    with errors planted by a test); the ADC ranges and the gain stay as they are."""
    self.conductances = tf.convert_to_tensor(conductances, tf.float32)
    self.lines = self.encoded.lines(self.conductances, self.pairs)  # (n, rows, kout, L, q)
    self.grouped_lines = None if self.fast else self._grouped(self.lines)
    self.weights = (self.reader.weights(self.encoded.effective(self.conductances))
                    if self.fast else None)

  def _grouped(self, lines, reader=None) -> tf.Tensor:
    """`(n, rows, kout, L, q)` lines laid out for `reader` (by default the layer's)."""
    n, r, k, l, q = lines.shape
    return (reader or self.reader).weights(tf.reshape(lines, (n, r, k * l * q)))

  def reference_read(self, conductances) -> float:
    """Global drift compensation's reference read (aihwkit's `GlobalDriftCompensation`): the
    largest |output| over the used columns for an all-ones input on every row, read
    digitally exact (no ADC, no read noise)."""
    per_column = tf.reduce_sum(self.encoded.effective(conductances), axis=1).numpy()  # (n, k)
    used = np.abs(per_column[self.columns >= 0])
    return max(float(used.max()) if used.size else 0.0, 1e-12)

  def target_weights(self) -> tf.Tensor:
    """`(n, rows, kout)` weights the chip was meant to hold (quantised, no error, no drift)."""
    return self.encoded.effective(self.encoded.conductances)

  def line_sums(self, inputs: tf.Tensor, lines=None, reader=None) -> tf.Tensor:
    """The reader's inputs -> `(..., n, kout, L, q)` noise-free currents of every converted
    line (of `lines`, by default the chip as read now; `reader`: by default the layer's)."""
    _, _, k, l, q = self.lines.shape
    reader = reader or self.reader
    if lines is None and reader is self.reader:
      grouped = self.grouped_lines
    else:
      grouped = self._grouped(self.lines if lines is None else lines, reader)
    sums = reader.products(inputs, grouped)
    return tf.reshape(sums, tf.concat([tf.shape(sums)[:-1], [k, l, q]], 0))

  def combine(self, sums: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
    """Digital shift-add of slices and polarities, g_min and offset, scale: `(..., n, kout)`."""
    return self.finish(crossbar_matmul.contract_last(sums, tf.constant(self.coef), 2), inputs)

  def finish(self, out: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
    """Shift-added lines `(..., n, kout)` -> the columns' values: g_min and offset removed,
    rescaled (`inputs`: what the lines read, for the inputs' sum)."""
    out = out / (1.0 - self.encoded.g_min)
    if self.sum_coef:
      out = out - self.sum_coef * self.reader.row_sums(inputs)[..., None]
    scale = self.encoded.scale
    return out * tf.constant(scale[..., 0] if scale.ndim else scale)

  def _read_noise(self, inputs: tf.Tensor, lines, start, stream: int) -> tf.Tensor:
    """Read noise of one matrix-vector product per image, position and cycle, as the column
    currents see it: fresh cell noise `s N` on every read adds `s sqrt(sum x**2) N` to a
    line (`sqrt(2)` that for a pair read in the array). `lines`: the trailing shape after the
    crossbar axis; `(..., n, *lines)`."""
    norm = tf.sqrt(self.reader.row_sums(tf.square(inputs)))  # (..., n)
    shape = tf.concat([tf.shape(norm), lines], 0)
    norm = tf.reshape(norm, tf.concat([tf.shape(norm), [1] * len(lines)], 0))
    return norm * analog.per_image_normal(self.read_key, start, shape, stream)

  def convert(self, inputs: tf.Tensor, cycle: int, start=None, conversions=None,
              weight: float = 1.0) -> tf.Tensor:
    """One input cycle: the lines' currents, read noise, the ADC, the digital shift-add of
    the slices and polarities times `weight` (the cycle's): `(..., n, kout)` before `finish`.
    Computed on each group's product as it comes (`products`' `each`, in slot order, so that
    no line-sized tensor is copied); counts the conversions."""
    n, _, k, l, q = self.lines.shape
    slots = self.reader.patches.slot_order
    noise = None
    if self.hw.read_noise > 0:
      sigma = self.hw.read_noise * (np.sqrt(2.0) if self.pairs else 1.0)
      noise = sigma * self._read_noise(inputs, [k * l * q], start, cycle + 1)  # (..., n, klq)
      crossbar = self.reader.patches.crossbar.reshape(-1)
      noise = tf.gather(noise, np.where(crossbar < n, crossbar, 0), axis=-2)  # slot order
      noise = tf.reshape(noise, tf.concat([tf.shape(noise)[:-2], [-1]], 0))
    coef = self.coef.reshape(-1) * np.float32(weight)  # (l * q,)
    table, offset = tf.constant(coef), 0.0
    if self.hw.adc_bits is not None:
      low, step = analog.quantizer_step(self.adc_low[cycle], self.adc_high[cycle],
                                        self.hw.adc_bits)
      # ranges shared by every column (per layer or slice): the dequantisation folds into the
      # shift-add, `sum coef (low + code step) = sum (coef step) code + sum coef low`
      shared = low.ndim <= 2
      if shared:
        low, step = np.broadcast_to(low, (l, q)), np.broadcast_to(step, (l, q))
        table = tf.constant(coef * step.reshape(-1))
        offset = float(np.sum(coef * low.reshape(-1), dtype=np.float32))
      # per line, in slot order, so that they broadcast along the products' last axis
      low, step = (slots(np.broadcast_to(v, (n, k, l, q)), fill)
                   for v, fill in ((low, 0.0), (step, 1.0)))

    def each(out: tf.Tensor, block: slice) -> tf.Tensor:  # (..., S * k * l * q) -> (..., S * k)
      if noise is not None:
        out = out + noise[..., block.start * k * l * q:block.stop * k * l * q]
      if self.hw.adc_bits is not None:
        lows, steps = low[block].reshape(-1), step[block].reshape(-1)
        out = analog.quantizer_code(out, lows, steps, self.hw.adc_bits)
        if not shared:
          out = lows + out * steps
      width = (block.stop - block.start) * k
      out = tf.reshape(out, tf.concat([tf.shape(out)[:-1], [width, l * q]], 0))
      out = crossbar_matmul.contract_last(out, table, 1)
      return out + offset if offset else out

    out = self.reader.products(inputs, self.grouped_lines, each)  # (..., n, k)
    if conversions is not None:
      conversions.assign_add(tf.size(out, out_type=tf.int64) // (n * k) * self.converted)
    return out

  def forward(self, inputs: tf.Tensor, start=None, conversions=None) -> tf.Tensor:
    """The reader's inputs of the layer input (already DAC-quantised unless bit-serial)
    -> `(batch, ..., n, kout)`; `start` numbers the batch's first image (read noise is drawn per
    image from it), `conversions` (a variable) counts the ADC conversions simulated."""
    hw = self.hw
    if self.fast:
      out = self.reader.products(inputs, self.weights)
      if hw.read_noise > 0:
        scale = self.encoded.scale
        gain = hw.read_noise * self.encoded.noise_gain() * (scale[..., 0] if scale.ndim else scale)
        noise = self._read_noise(inputs, [int(out.shape[-1])], start, 0)
        out = out + tf.constant(gain, tf.float32) * noise
      return out
    if not hw.serial:
      return self.finish(self.convert(inputs, 0, start, conversions), inputs)
    # The digital shift-add of the cycles is linear, so it precedes the (linear) rest of the
    # combination: each cycle's conversions are shift-added in `convert`, weighted by the
    # cycle, and `finish` runs once, against the quantised input they add up to.
    code, unit = analog.input_code(inputs, *self.input_range, hw.input_bits)
    converted = 0.0
    for j in range(hw.input_cycles):
      cycle = analog.input_slice(code, unit, j, hw.dac_bits)
      converted = converted + self.convert(cycle, j, start, conversions,
                                           float(2 ** (j * hw.dac_bits)))
    return self.finish(converted, tf.cast(code, tf.float32) * unit if self.sum_coef else None)

  def uncalibrated(self) -> bool:
    """True while a range the hardware needs (DAC or ADC) has not been calibrated."""
    return ((self.hw.input_bits is not None and self.input_range is None)
            or (self.hw.adc_bits is not None and self.adc_low is None))

  def calibrate_inputs(self, x: np.ndarray) -> None:
    self.input_range = analog.input_range(_sample(x), self.hw.adc_percentile)

  def calibrate_adc(self, inputs: np.ndarray, programmed: bool = True) -> None:
    """ADC ranges from the noise-free currents of the programmed chip (variation and faults
    included, read noise not) for sampled crossbar inputs, per `hw.adc_ranges`: one range for
    the layer's used columns, one per (input cycle, line polarity, weight slice) over the used
    columns, or one per cycle, slice and physical column. `programmed`: on the conductances as
    programmed (calibration right after programming), else as read now (after drift)."""
    lines = self.programmed_lines if programmed else self.lines
    patches = self.reader.patches
    shape = inputs.shape[inputs.ndim - patches.input_rank:]
    rows = _sample(inputs.reshape(-1, *shape), CALIBRATION_ROWS)
    x = tf.constant(rows, tf.float32)
    cycles = (analog.input_slices(x, *self.input_range, self.hw.input_bits, self.hw.dac_bits)
              if self.hw.serial else x[None])
    used = self.columns >= 0  # (n, kout)
    mode, p = self.hw.adc_ranges, self.hw.adc_percentile
    lows, highs, pooled = [], [], []
    for j in range(cycles.shape[0]):
      sums = self.line_sums(cycles[j], lines, patches).numpy()  # (rows, n, kout, L, q)
      if mode == "column":
        low, high = analog.percentile_ranges(sums, p)
      else:
        on_used = sums[:, used]  # (rows, used, L, q)
        if mode == "layer":
          pooled.append(_sample(on_used.reshape(-1), 2_000_000 // cycles.shape[0]))
          continue
        low, high = analog.percentile_ranges(on_used.reshape(-1, *on_used.shape[2:]), p)
      lows.append(low)
      highs.append(high)
    if mode == "layer":
      low, high = analog.percentile_range(np.concatenate(pooled), p)
      lows = [np.full((1, 1), low)] * cycles.shape[0]
      highs = [np.full((1, 1), high)] * cycles.shape[0]
    self.adc_low = np.stack(lows).astype(np.float32)
    self.adc_high = np.stack(highs).astype(np.float32)


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
      # images seen so far (read noise is drawn per image from its number) and the ADC
      # conversions simulated (compared with the cost model's count in the tests)
      self.images = self.add_weight(name="images", shape=(), dtype="int32", trainable=False,
                                    initializer="zeros")
      self.conversions = self.add_weight(name="conversions", shape=(), dtype="int64",
                                         trainable=False, initializer="zeros")
      super().build(input_shape)

    def crossbar_inputs(self, inputs):
      x = tf.convert_to_tensor(inputs, tf.float32)
      hw = self.core.hw
      if hw.input_bits is not None and not hw.serial:
        x = analog.quantize_inputs(x, *self.core.input_range, hw.input_bits)
      return gather_inputs(x, self.kind, self.kernel_shape, self.core.reader, self.conv)

    def call(self, inputs):
      if self.core.uncalibrated():
        # Only the symbolic call that builds the copy (tf_keras rebuilds a functional model by
        # calling its layers) comes before `analog_model` calibrates: the shape is what counts.
        shape = list(self.compute_output_shape(tuple(inputs.shape)))
        shape[0] = tf.shape(inputs)[0]
        return tf.zeros(tf.stack(shape), inputs.dtype)
      start = None
      if self.core.hw.read_noise > 0:
        batch = tf.shape(inputs)[0]
        start = self.images.assign_add(batch) - batch
      partial = self.core.forward(self.crossbar_inputs(inputs), start, self.conversions)
      out = scatter_columns(partial, self.core.columns, self.kernel_shape[-1])
      if self.core.gain.ndim or self.core.gain != 1:
        out = out * tf.constant(self.core.gain)
      if self.bias_value is not None:
        out = out + self.bias_value
      return self.activation(out) if self.activation is not None else out

    def raw_output(self, inputs, start=0):
      """The scattered column sums before the digital gain and the bias (read noise drawn from
      image number `start` on; the image counter is not advanced)."""
      partial = self.core.forward(self.crossbar_inputs(inputs), tf.constant(start, tf.int32))
      return scatter_columns(partial, self.core.columns, self.kernel_shape[-1])

    def target_output(self, inputs):
      """What the layer was meant to compute before its bias: the DAC-quantised inputs times
      the target weights (`AnalogCore.target_weights`), digitally exact."""
      x = tf.convert_to_tensor(inputs, tf.float32)
      hw = self.core.hw
      if hw.input_bits is not None:
        x = analog.quantize_inputs(x, *self.core.input_range, hw.input_bits)
      reader = self.core.reader
      rows = gather_inputs(x, self.kind, self.kernel_shape, reader, self.conv)
      partial = reader.products(rows, reader.weights(self.core.target_weights()))
      return scatter_columns(partial, self.core.columns, self.kernel_shape[-1])

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
  reader = layer_reader(kind, pack.geometry.kernel_shape, pack.crossbar_rows(), conv)
  core = AnalogCore(hw, encoded, pack.columns, seed, index, mapping.spec.cols, reader)
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
      read noise from it and the number of each image a layer has seen, so that an image
      gets the same noise in any batch.
    calibration: a batch of model inputs, required when `hw.input_bits` or `hw.adc_bits` is
      set: the DAC and ADC ranges are the `hw.adc_percentile` percentiles of the float
      model's layer inputs and of the programmed chip's noise-free line currents on them.
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
      if core.hw.input_bits is not None and not core.hw.serial:
        x = analog.quantize_inputs(tf.constant(x), *core.input_range, core.hw.input_bits)
      rows = gather_inputs(x, layer.kind, layer.kernel_shape, core.reader.patches, layer.conv)
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
                    batch_size: int = 256, traced: bool | None = None,
                    compensation: Sequence[str] = ()) -> list[float]:
  """Top-1 accuracy of `model` on `(x, y)` for each chip instance (seed) of `hw`.

  `compensation`: steps of `compensate_chip` run on each chip before it is measured, on the
  `calibration` images (unlabelled training inputs).

  `traced`: run each chip as a `tf.function` (one trace per chip whatever the batch sizes,
  then graph speed) or eagerly (no trace, slower per batch); None: traced from
  `TRACE_FROM_IMAGES` images on, below which eager costs less.
  """
  from xbar_tfmot.models.compensation import compensate_chip  # it imports this module
  compensation = check_compensation(compensation, "compensation")
  if compensation and calibration is None:
    raise HardwareError("calibration: a batch of training inputs is required for the "
                        f"compensation {list(compensation)}.")
  if traced is None:
    traced = len(x) >= TRACE_FROM_IMAGES
  out = []
  for seed in seeds:
    chip = analog_model(model, mapping, hw, int(seed), calibration)
    if compensation:
      compensate_chip(chip, calibration, compensation)
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
