"""Compensation after programming: `compensate_chip(chip, images, steps)` (docs/hardware.md,
"Compensation after programming").

What a deployment does once a chip is programmed (and, for drift, again later), on a few
unlabelled training images, without retraining:

- `adc`: re-calibrate every ADC range on the chip as it reads now (programmed, drifted) and on
  the layer inputs the chip itself produces, layer by layer in model order;
- `column_gain` / `layer_gain`: one digital gain per output channel (or per layer) after the
  column sums, the least-squares fit of the chip's pre-bias output to what the layer was meant
  to compute (the target weights on the same, DAC-quantised inputs): no labels needed;
- `batchnorm`: re-estimate every BatchNormalization layer's moving statistics on the chip
  (`recalibrate_batchnorm`), the advice of aihwkit's maintainers.

The steps run in that order (a later one sees the chip the earlier ones fixed). The images
each analog layer has counted (read noise is drawn per image number) are restored afterwards,
so an evaluation after compensation draws the same read noise as one without.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from xbar_tfmot.core import analog
from xbar_tfmot.core.hardware import HardwareError, check_compensation
from xbar_tfmot.models import introspection
from xbar_tfmot.models.analog_model import analog_layers
from xbar_tfmot.models.batchnorm import recalibrate_batchnorm
from xbar_tfmot.models.crossbar_model import gather_inputs

def compensate_chip(chip: Any, images: Any, steps: Sequence[str] = ("adc", "column_gain",
                                                                    "batchnorm"),
                    batch_size: int = 64) -> dict[str, int]:
  """Compensates a programmed analog model in place (module docstring) and says what it used.

  Args:
    chip: an analog model (`analog_model`), already calibrated.
    images: unlabelled training inputs (never the test set); every step uses all of them.
      Measured on the digits CNN of tests/test_analog_drift.py: 4 to 16 images do as well as
      128 (docs/hardware.md, "Compensation after programming").
    steps: a subset of `core.hardware.COMPENSATION_STEPS` (or a comma-separated string), run
      in that order.
    batch_size: images per forward pass.

  Returns:
    Images used per step run, e.g. `{"adc": 64, "column_gain": 64, "batchnorm": 64}`.
  """
  steps = check_compensation(steps)
  x = np.asarray(images, np.float32)
  if x.ndim < 2 or not len(x):
    raise HardwareError(f"images: expected a batch of at least one model input, got shape "
                        f"{x.shape}.")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise HardwareError(f"batch_size={batch_size!r} is invalid; valid: an integer >= 1.")
  layers = analog_layers(chip)
  if not layers:
    raise HardwareError("chip: no AnalogLayer found; valid: a model from analog_model().")
  if any(l.core.uncalibrated() for l in layers):
    raise HardwareError("chip: its DAC/ADC ranges are not calibrated; build it with "
                        "analog_model(..., calibration=images).")
  counted = [l.images.numpy() if l.built else None for l in layers]
  used: dict[str, int] = {}
  gain = next((s for s in steps if s.endswith("_gain")), None)
  try:
    if "adc" in steps or gain:
      keras = introspection.keras_module(introspection.flavour(chip))
      for layer in layers:
        inputs = chip.inputs[0] if len(chip.inputs) == 1 else chip.inputs
        probe = keras.Model(inputs, layer.input)
        batches = [probe(x[i:i + batch_size], training=False)
                   for i in range(0, len(x), batch_size)]
        if "adc" in steps and layer.core.hw.adc_bits is not None:
          _recalibrate_adc(layer, np.concatenate([np.asarray(b) for b in batches]))
          used["adc"] = len(x)
        if gain:
          layer.core.gain = _fit_gain(layer, batches, per_column=gain == "column_gain")
          used[gain] = len(x)
    if "batchnorm" in steps:
      recalibrate_batchnorm(chip, x, batch_size=batch_size)
      used["batchnorm"] = len(x)
  finally:
    for layer, value in zip(layers, counted):
      if value is not None:
        layer.images.assign(value)
  return used


def _recalibrate_adc(layer, x: np.ndarray) -> None:
  core = layer.core
  if core.hw.input_bits is not None and not core.hw.serial:
    x = analog.quantize_inputs(tf.constant(x), *core.input_range, core.hw.input_bits)
  rows = gather_inputs(x, layer.kind, layer.kernel_shape, layer.core.reader.patches,
                       layer.conv)
  core.calibrate_adc(np.asarray(rows), programmed=False)


def _fit_gain(layer, batches, per_column: bool) -> np.ndarray:
  """Least-squares gain `<raw, target> / <raw, raw>` per output channel (or for the layer)."""
  cout = layer.kernel_shape[-1]
  num, den = np.zeros(cout), np.zeros(cout)
  start = 0
  for b in batches:
    raw = np.asarray(layer.raw_output(b, start), np.float64).reshape(-1, cout)
    target = np.asarray(layer.target_output(b), np.float64).reshape(-1, cout)
    num += (raw * target).sum(0)
    den += (raw * raw).sum(0)
    start += int(b.shape[0])
  if not per_column:
    num, den = num.sum(), den.sum()
  gain = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
  return np.asarray(gain, np.float32)
