"""Hardware-aware training: the chip's weight non-idealities in the training forward pass.

`HardwareAware` (an argument of `prune_crossbar`, or of `hardware_aware` for a model trained
dense) makes every crossbar wrapper compute, in each training call, with the kernel that the
simulated chip (`core/analog.py`) would program from it, drawn afresh at every step:

1. the masked kernel `W` is scaled by its largest |W| (`g_max` <-> that weight, the simulator's
   `weight_scale="layer"`), encoded as a differential pair or an offset column, rounded to
   `weight_bits` and sliced into `cell_bits` cells (`quantize_weights`), each cell a conductance
   in `[g_min, 1]`: `analog.encode_unit`, the chip's own encoding;
2. programmed by `analog.program` itself (variation in the spec's `variation_model`, relative
   to `g_max`, clipped at 0; stuck cells if `stuck`), seeded statelessly by
   `(seed, layer index, step)`; `read_noise` adds the spec's read noise as one more draw per
   cell and step (the chip draws it per image; here the batch shares it);
3. read back as weights (`Encoded.effective`'s shift-add, `g_min` removed), times the scale, and
   multiplied by the mask again, so noise never revives a pruned weight.

The gradient is straight-through: the forward sees the chip's kernel, the backward the clean
masked kernel (quantisation and noise have the identity's gradient). Inference (`training`
false) and `strip_crossbar_pruning` see no noise. No Keras here: TensorFlow and numpy only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from xbar_tfmot.core import analog, strict_json
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec
from xbar_tfmot.core.projection import stateless_seed
from xbar_tfmot.core.spec import CrossbarSpec

STREAM = 0x4857  # folded into (seed, layer, step): hardware noise apart from RPP's Gumbel noise


@dataclasses.dataclass(frozen=True)
class HardwareAware:
  """What the training forward pass sees of the chip.

  Attributes:
    hardware: the chip (`HardwareSpec` or a preset name); its `variation`, `variation_model`,
      `quantize_weights`, `on_off_ratio` and `weight_bits` / `cell_bits` / `differential`
      (None: the crossbar spec's) are used. Train at another noise level than you evaluate
      with `hardware.replace(variation=...)`.
    stuck: draw the spec's stuck-on / stuck-off cells afresh every step (default off: a given
      chip's faults are fixed, training on random ones is a regulariser).
    read_noise: add the spec's `read_noise` to every cell, drawn every step.
    seed: the noise seed; None: the wrappers' `prune_crossbar` seed.
  """

  hardware: HardwareSpec
  stuck: bool = False
  read_noise: bool = False
  seed: int | None = None

  def __post_init__(self):
    hw = self.hardware
    if isinstance(hw, str):
      hw = HardwareSpec.preset(hw)
    elif isinstance(hw, Mapping):
      hw = HardwareSpec.from_dict(hw)
    if not isinstance(hw, HardwareSpec):
      raise HardwareError(f"HardwareAware: hardware={self.hardware!r} is invalid; valid: a "
                          f"HardwareSpec, its dict, or a preset name.")
    if hw.weight_scale != "layer":
      raise HardwareError(f"HardwareAware: hardware.weight_scale={hw.weight_scale!r} is not "
                          f"supported in training; valid: 'layer'.")
    object.__setattr__(self, "hardware", hw)
    for name in ("stuck", "read_noise"):
      if not isinstance(getattr(self, name), bool):
        raise HardwareError(f"HardwareAware: {name}={getattr(self, name)!r} is invalid; valid: "
                            f"true or false.")
    if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
      raise HardwareError(f"HardwareAware: seed={self.seed!r} is invalid; valid: an integer or "
                          f"None.")

  def programmed_spec(self) -> HardwareSpec:
    """The spec `analog.program` draws from: stuck cells only when `stuck`."""
    hw = self.hardware
    return hw if self.stuck else hw.replace(stuck_on_rate=0.0, stuck_off_rate=0.0)

  def to_dict(self) -> dict[str, Any]:
    return {"hardware": self.hardware.to_dict(), "stuck": self.stuck,
            "read_noise": self.read_noise, "seed": self.seed}

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> "HardwareAware":
    strict_json.check_fields(cls, config, HardwareError)
    return cls(**config)


def coerce(value: Any) -> HardwareAware | None:
  """`HardwareAware` from itself, its dict (a wrapper's config) or None."""
  if value is None or isinstance(value, HardwareAware):
    return value
  if isinstance(value, Mapping):
    return HardwareAware.from_dict(value)
  raise HardwareError(f"hardware_aware={value!r} is invalid; valid: an xbar_tfmot.HardwareAware "
                      f"or None.")


def chip_kernel(masked, mask, config: HardwareAware, spec: CrossbarSpec, seed) -> tf.Tensor:
  """The kernel the chip computes with for the masked kernel `masked` (forward), with the
  straight-through gradient of `masked` (backward); `seed` a shape-(2,) stateless seed."""
  masked = tf.convert_to_tensor(masked)
  mask = tf.cast(mask, masked.dtype)
  hw = config.hardware
  weight_bits, cell_bits, differential = hw.cells(spec)
  w = tf.stop_gradient(tf.cast(masked, tf.float32))
  scale = tf.reduce_max(tf.abs(w))
  scale = tf.where(scale > 0, scale, tf.ones_like(scale))
  g, coef, offset = analog.encode_unit(w / scale, hw, weight_bits, cell_bits, differential)
  seed = tf.cast(seed, tf.int64)
  g = analog.program(g, config.programmed_spec(), tf.cast(seed, tf.int32))
  if config.read_noise and hw.read_noise > 0:
    read_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    g = g + hw.read_noise * tf.random.stateless_normal(tf.shape(g), tf.cast(read_seed, tf.int32))
  chip = read_back(g, coef, offset, hw.g_min) * scale
  chip = tf.cast(chip, masked.dtype) * tf.stop_gradient(mask)
  return masked + tf.stop_gradient(chip - masked)


def read_back(g, coef: np.ndarray, offset: bool, g_min: float) -> tf.Tensor:
  """`Encoded.effective`, elementwise: the weights (in units of the scale) the cells hold."""
  w = tf.reduce_sum((g - g_min) * tf.constant(coef), axis=[-2, -1]) / (1.0 - g_min)
  return w - 1.0 if offset else w


def step_seed(seed: int, layer_index: int, step) -> tf.Tensor:
  """The stateless seed of one layer's noise at one step (apart from RPP's stream)."""
  return tf.random.experimental.stateless_fold_in(stateless_seed(seed, layer_index, step), STREAM)


def is_training(training) -> bool | None:
  """`training` as a Python bool, or None when it is a tensor known only at run time."""
  if training is None or isinstance(training, (bool, np.bool_)):
    return bool(training)
  value = tf.get_static_value(training)
  return None if value is None else bool(value)


def training_kernel(kernel, mask, training, config: HardwareAware | None, spec: CrossbarSpec,
                    seed: int, layer_index: int, step) -> tf.Tensor:
  """`kernel` (already masked) as the training forward sees it: the chip's kernel when
  `config` is set and training, else `kernel` itself."""
  if config is None:
    return kernel
  flag = is_training(training)
  if flag is False:
    return kernel
  s = step_seed(config.seed if config.seed is not None else seed, layer_index, step)
  if flag:
    return chip_kernel(kernel, mask, config, spec, s)
  return tf.cond(tf.cast(training, tf.bool), lambda: chip_kernel(kernel, mask, config, spec, s),
                 lambda: tf.convert_to_tensor(kernel))
