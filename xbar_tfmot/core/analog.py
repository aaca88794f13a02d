"""The analog maths of one crossbar layer, Keras-free (docs/hardware.md, "Analog inference").

Weights `W` of shape `(n, rows, kout)` (the packed crossbars of one layer, as
`LayerPacking.crossbar_weights` gives them) become conductances normalised to `g_max = 1`:

1. scale: `w = W / s` with `s` the largest |W| of the layer (or of each crossbar);
2. encode: differential pairs store `|w|` in the positive or the negative column
   (`w = g+ - g-`); a single column stores the offset value `v = (w + 1) / 2` and the digital
   side subtracts the inputs' sum (`w = 2v - 1`);
3. quantise and slice: the stored magnitude is rounded to an integer `m` of `weight_bits` bits,
   written in base `2**cell_bits` over `q = ceil(weight_bits / cell_bits)` cells, cell `k`
   holding digit `d_k` as `g = d_k / (2**cell_bits - 1)`; the shift-add weight of cell `k` is
   `2**(k*cell_bits) * (2**cell_bits - 1) / (2**weight_bits - 1)`, so that the weighted cells
   add up to `m / (2**weight_bits - 1)`.

The conductance tensor is `(n, rows, kout, P, q)`, `P` = 2 (differential) or 1; `coef`
`(P, q)` holds the signed shift-add weights. Non-idealities are drawn statelessly from a seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from xbar_tfmot.core import crossbar_matmul
from xbar_tfmot.core.hardware import HardwareSpec


@dataclasses.dataclass(frozen=True)
class Encoded:
  """Conductances of one layer and how to read them back."""

  conductances: np.ndarray  # (n, rows, kout, P, q) float32 in [0, 1]
  coef: np.ndarray  # (P, q) signed shift-add weights
  offset: bool  # single-column offset encoding: subtract the inputs' sum
  scale: np.ndarray  # () or (n, 1, 1): weight units per unit of w

  def effective(self, conductances) -> tf.Tensor:
    """`(n, rows, kout)` weights the (possibly perturbed) conductances represent."""
    w = crossbar_matmul.contract_last(conductances, tf.constant(self.coef, conductances.dtype), 2)
    if self.offset:
      w = w - 1.0
    return w * tf.constant(self.scale, w.dtype)


def encode(weights, hw: HardwareSpec, weight_bits: int, cell_bits: int,
           differential: bool) -> Encoded:
  """Conductances for the packed weights of one layer (see the module docstring)."""
  w = np.asarray(weights, np.float64)
  if hw.weight_scale == "crossbar":
    scale = np.abs(w).max(axis=(1, 2), keepdims=True)
  else:
    scale = np.asarray(np.abs(w).max())
  scale = np.where(scale > 0, scale, 1.0)
  w = w / scale
  if differential:
    stored = np.stack([np.maximum(w, 0), np.maximum(-w, 0)], axis=-1)  # (n, r, k, 2)
    polarity = np.array([1.0, -1.0])
  else:
    stored = ((w + 1.0) / 2.0)[..., None]
    polarity = np.array([2.0])
  if hw.quantize_weights:
    levels = 2 ** weight_bits - 1
    base = 2 ** cell_bits
    q = -(-weight_bits // cell_bits)
    m = np.round(stored * levels).astype(np.int64)
    digits = (m[..., None] // base ** np.arange(q)) % base  # (n, r, k, P, q)
    g = digits / (base - 1)
    slices = base ** np.arange(q) * (base - 1) / levels
  else:
    g = stored[..., None]
    slices = np.ones(1)
  coef = polarity[:, None] * slices[None, :]
  return Encoded(g.astype(np.float32), coef.astype(np.float32), not differential,
                 scale.astype(np.float32))


def program(conductances: tf.Tensor, hw: HardwareSpec, seed) -> tf.Tensor:
  """Programming variation, then stuck-at faults; stateless in `seed` (a shape-(2,) int)."""
  g = tf.convert_to_tensor(conductances, tf.float32)
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
  if hw.variation > 0:
    noise = tf.random.stateless_normal(tf.shape(g), seed=seed)
    if hw.variation_model == "absolute":
      g = g + hw.variation * noise
    elif hw.variation_model == "proportional":
      g = g * (1.0 + hw.variation * noise)
    else:
      g = g * tf.exp(hw.variation * noise)
    g = tf.maximum(g, 0.0)
  if hw.stuck_on_rate > 0 or hw.stuck_off_rate > 0:
    u = tf.random.stateless_uniform(tf.shape(g), seed=seed + tf.constant([0, 1], tf.int32))
    g = tf.where(u < hw.stuck_on_rate, tf.ones_like(g), g)
    g = tf.where((u >= hw.stuck_on_rate) & (u < hw.stuck_on_rate + hw.stuck_off_rate),
                 tf.zeros_like(g), g)
  return g


def read(conductances: tf.Tensor, sigma: float, seed) -> tf.Tensor:
  """One read of the array: Gaussian noise of `sigma` (over g_max) on every cell."""
  if sigma <= 0:
    return conductances
  noise = tf.random.stateless_normal(tf.shape(conductances), seed=seed)
  return tf.maximum(conductances + sigma * noise, 0.0)


def quantize(x: tf.Tensor, low: float, high: float, bits: int) -> tf.Tensor:
  """Uniform quantiser with `2**bits` levels from `low` to `high`, clipping outside."""
  levels = 2 ** bits - 1
  step = (high - low) / levels if high > low else 1.0
  code = tf.clip_by_value(tf.round((x - low) / step), 0.0, float(levels))
  return low + code * step


def input_range(x: np.ndarray, percentile: float) -> tuple[float, float]:
  """`(low, high)` for the input DAC: `[0, p]` for non-negative data, else symmetric."""
  x = np.asarray(x, np.float64).reshape(-1)
  if x.size and x.min() >= 0:
    return 0.0, float(np.percentile(x, percentile))
  a = float(np.percentile(np.abs(x), percentile)) if x.size else 1.0
  return -a, a


def quantize_inputs(x: tf.Tensor, low: float, high: float, bits: int) -> tf.Tensor:
  """Inputs to `bits` (unsigned over `[0, high]`, or sign + `bits - 1` over `[-high, high]`)."""
  if low >= 0:
    return quantize(x, 0.0, high, bits)
  levels = 2 ** (bits - 1) - 1 if bits > 1 else 1
  step = high / levels if high > 0 else 1.0
  return tf.clip_by_value(tf.round(x / step), -float(levels), float(levels)) * step


def input_slices(x: tf.Tensor, low: float, high: float, bits: int, dac_bits: int) -> tf.Tensor:
  """Bit-serial inputs: `(J, ...)` slices of `dac_bits` of the quantised magnitude (sign kept,
  times the quantisation step); slice `j` weighs `2**(j*dac_bits)` in the digital shift-add."""
  if low >= 0:
    levels, top = 2 ** bits - 1, high
  else:
    levels, top = (2 ** (bits - 1) - 1 if bits > 1 else 1), high
  step = top / levels if top > 0 else 1.0
  code = tf.clip_by_value(tf.round(tf.abs(x) / step), 0.0, float(levels))
  sign = tf.sign(x)
  base = 2 ** dac_bits
  cycles = -(-bits // dac_bits)
  out = []
  for j in range(cycles):
    digit = tf.math.floormod(tf.math.floordiv(code, float(base ** j)), float(base))
    out.append(sign * digit * step)
  return tf.stack(out)


def percentile_range(values: np.ndarray, percentile: float) -> tuple[float, float]:
  """`(low, high)` of the ADC: the `100 - p` and `p` percentiles of the partial sums."""
  v = np.asarray(values, np.float64).reshape(-1)
  if v.size > 2_000_000:
    v = np.random.default_rng(0).choice(v, 2_000_000, replace=False)
  low, high = np.percentile(v, [100.0 - percentile, percentile]) if v.size else (0.0, 1.0)
  return float(low), float(high)
