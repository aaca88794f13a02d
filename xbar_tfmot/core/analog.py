"""The analog maths of one crossbar layer, Keras-free (docs/hardware.md, "Analog inference").

Weights `W` of shape `(n, rows, kout)` (the packed crossbars of one layer, as
`LayerPacking.crossbar_weights` gives them) become conductances normalised to `g_max = 1`:

1. scale: `w = W / s` with `s` the largest |W| of the layer (or of each crossbar);
2. encode: differential pairs store `|w|` in the positive or the negative column
   (`w = g+ - g-`); a single column stores the offset value `v = (w + 1) / 2` and the digital
   side subtracts the inputs' sum (`w = 2v - 1`);
3. quantise and slice: the stored magnitude is rounded to an integer `m` of `weight_bits` bits,
   written in base `2**cell_bits` over `q = ceil(weight_bits / cell_bits)` cells, cell `k`
   holding digit `d_k` as `g = g_min + (1 - g_min) * d_k / (2**cell_bits - 1)`; the shift-add
   weight of cell `k` is `2**(k*cell_bits) * (2**cell_bits - 1) / (2**weight_bits - 1)`, so
   that the weighted cells add up to `m / (2**weight_bits - 1)`.

The digital side undoes the finite `g_min`: a line's current `I = sum x g` becomes
`(I - g_min * sum x) / (1 - g_min)`; a pair read in the array (`I+ - I-`) needs no correction.
The conductance tensor is `(n, rows, kout, P, q)`, `P` = 2 (differential) or 1; `coef`
`(P, q)` holds the signed shift-add weights. Non-idealities are drawn statelessly from a seed.
"""

from __future__ import annotations

import dataclasses
import math

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
  g_min: float = 0.0  # the off state over g_max

  def effective(self, conductances) -> tf.Tensor:
    """`(n, rows, kout)` weights the (possibly perturbed) conductances represent."""
    g = tf.convert_to_tensor(conductances, tf.float32) - self.g_min
    w = crossbar_matmul.contract_last(g, tf.constant(self.coef), 2) / (1.0 - self.g_min)
    if self.offset:
      w = w - 1.0
    return w * tf.constant(self.scale, w.dtype)

  def lines(self, conductances, pairs: bool) -> tf.Tensor:
    """`(n, rows, kout, L, q)`: what each converted line reads; a pair read in the array is
    one line of `g+ - g-` (L = 1), else every column is its own line (L = P)."""
    g = tf.convert_to_tensor(conductances, tf.float32)
    return g[..., :1, :] - g[..., 1:, :] if pairs else g

  def line_coef(self, pairs: bool) -> np.ndarray:
    """`(L, q)` shift-add weights of the lines."""
    return self.coef[:1] if pairs else self.coef

  def input_sum_coef(self, pairs: bool) -> float:
    """What the digital side subtracts per unit of the inputs' sum (before `scale`): the
    lines' `g_min` currents and the offset encoding's `-1`."""
    g_min = 0.0 if pairs else self.g_min
    return g_min * float(self.line_coef(pairs).sum()) / (1.0 - self.g_min) + float(self.offset)

  def noise_gain(self) -> float:
    """Standard deviation of a weight (before `scale`) per unit of independent cell noise:
    `sqrt(sum coef**2) / (1 - g_min)`; a pair read in the array gives the same."""
    return float(np.sqrt(np.sum(self.coef.astype(np.float64) ** 2))) / (1.0 - self.g_min)


def encode(weights, hw: HardwareSpec, weight_bits: int, cell_bits: int,
           differential: bool) -> Encoded:
  """Conductances for the packed weights of one layer (see the module docstring)."""
  w = np.asarray(weights, np.float64)
  if hw.weight_scale == "crossbar":
    scale = np.abs(w).max(axis=(1, 2), keepdims=True)
  else:
    scale = np.asarray(np.abs(w).max())
  scale = np.where(scale > 0, scale, 1.0)
  g, coef, offset = encode_unit(tf.constant(w / scale), hw, weight_bits, cell_bits, differential)
  return Encoded(g.numpy().astype(np.float32), coef, offset, scale.astype(np.float32), hw.g_min)


def encode_unit(w: tf.Tensor, hw: HardwareSpec, weight_bits: int, cell_bits: int,
                differential: bool) -> tuple[tf.Tensor, np.ndarray, bool]:
  """The encoding of weights already scaled to [-1, 1], elementwise: conductances
  `(*w.shape, P, q)`, the `(P, q)` shift-add coefficients and whether it is offset. In
  TensorFlow ops, so that a chip's conductances (`encode`) and the forward of hardware-aware
  training (`pruning/hardware_aware.py`) are one encoding."""
  if differential:
    stored = tf.stack([tf.nn.relu(w), tf.nn.relu(-w)], axis=-1)
    polarity = np.array([1.0, -1.0])
  else:
    stored = ((w + 1.0) / 2.0)[..., None]
    polarity = np.array([2.0])
  if hw.quantize_weights:
    levels = 2 ** weight_bits - 1
    base = 2 ** cell_bits
    q = -(-weight_bits // cell_bits)
    m = tf.round(stored * levels)[..., None]
    powers = tf.constant(base ** np.arange(q), w.dtype)
    digits = tf.math.floormod(tf.math.floordiv(m, powers), float(base))
    g = digits / (base - 1)
    slices = base ** np.arange(q) * (base - 1) / levels
  else:
    g = stored[..., None]
    slices = np.ones(1)
  g = hw.g_min + (1.0 - hw.g_min) * g
  coef = (polarity[:, None] * slices[None, :]).astype(np.float32)
  return g, coef, not differential


def program(conductances: tf.Tensor, hw: HardwareSpec, seed) -> tf.Tensor:
  """Programming variation (clipped at 0: a conductance is not negative), then stuck-at faults
  (on: g_max, off: g_min); stateless in `seed` (a shape-(2,) int).

  The clip biases a cell at target `g` by `s * (phi(g/s) - (g/s) * Phi(-g/s))` (`s` its
  standard deviation; see `clip_bias`): 0.40 s at g = 0, 0.083 s at g = s, 0.0085 s at 2 s."""
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
                 tf.fill(tf.shape(g), hw.g_min), g)
  return g


def drift_exponents(shape, hw: HardwareSpec, seed) -> tf.Tensor:
  """Per-cell drift exponents `nu = |drift_nu + drift_nu_std N|` (aihwkit's convention), drawn
  statelessly from `seed` on a stream of their own."""
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int32) + tf.constant([0, 2], tf.int32)
  noise = tf.random.stateless_normal(shape, seed=seed)
  return tf.abs(hw.drift_nu + hw.drift_nu_std * noise)


def drift(conductances: tf.Tensor, hw: HardwareSpec, seed) -> tf.Tensor:
  """The programmed conductances `hw.drift_time` seconds later:
  `g * ((drift_time + drift_t0) / drift_t0) ** -nu`, `nu` per cell (`drift_exponents`)."""
  g = tf.convert_to_tensor(conductances, tf.float32)
  if not hw.drifts:
    return g
  nu = drift_exponents(tf.shape(g), hw, seed)
  ratio = (hw.drift_time + hw.drift_t0) / hw.drift_t0
  return g * tf.exp(-nu * float(math.log(ratio)))


def clip_bias(g, sigma: float) -> np.ndarray:
  """Mean shift `E[max(g + sigma N, 0)] - g` of a cell at target `g` (Gaussian clipped at 0)."""
  a = np.asarray(g, np.float64) / sigma
  tail = 0.5 * np.vectorize(math.erfc)(a / math.sqrt(2.0))  # P(N < -a)
  return sigma * (np.exp(-a * a / 2) / math.sqrt(2 * math.pi) - a * tail)


def per_image_normal(key: int, start, shape, stream: int = 0) -> tf.Tensor:
  """`(B, *shape)` standard normals, image `i` of the batch drawn from `(key, start + i,
  stream)` alone: the same numbers whatever the batch it comes in (Philox counters: each
  image owns a block of counters, one per 4 normals)."""
  shape = tf.cast(tf.convert_to_tensor(shape), tf.int64)
  batch, per_image = shape[0], tf.reduce_prod(shape[1:])
  block = (per_image + 3) // 4  # counters per image; one counter gives 4 normals
  counter = tf.stack([tf.cast(tf.cast(start, tf.int64) * block, tf.uint64),
                      tf.constant(stream, tf.uint64)])
  flat = tf.raw_ops.StatelessRandomNormalV2(
      shape=tf.stack([batch * block * 4]), key=tf.constant([key], tf.uint64), counter=counter,
      alg=1, dtype=tf.float32)
  return tf.reshape(tf.reshape(flat, tf.stack([batch, block * 4]))[:, :per_image], shape)


def quantize(x: tf.Tensor, low, high, bits: int) -> tf.Tensor:
  """Uniform quantiser with `2**bits` levels from `low` to `high` (scalars or arrays that
  broadcast against `x`), clipping outside."""
  low, step = quantizer_step(low, high, bits)
  return low + quantizer_code(x, low, step, bits) * step


def quantizer_step(low, high, bits: int) -> tuple[np.ndarray, np.ndarray]:
  """`(low, step)` float32 of `quantize`'s levels (step 1 where the range is empty)."""
  low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
  return low, np.where(high > low, (high - low) / (2 ** bits - 1), 1.0).astype(np.float32)


def quantizer_code(x: tf.Tensor, low: np.ndarray, step: np.ndarray, bits: int) -> tf.Tensor:
  """`quantize`'s level, `0 .. 2**bits - 1` as floats: `x` is quantised to `low + code * step`."""
  return tf.raw_ops.ClipByValue(t=tf.round((x - low) / step), clip_value_min=0.0,
                                clip_value_max=float(2 ** bits - 1))


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


def input_code(x: tf.Tensor, low: float, high: float, bits: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Bit-serial inputs: `(code, unit)`, the quantised magnitude as an int32 code and the sign
  times the quantisation step, so that the quantised input is `code * unit`."""
  if low >= 0:
    levels, top = 2 ** bits - 1, high
  else:
    levels, top = (2 ** (bits - 1) - 1 if bits > 1 else 1), high
  step = top / levels if top > 0 else 1.0
  code = tf.clip_by_value(tf.round(tf.abs(x) / step), 0.0, float(levels))
  return tf.cast(code, tf.int32), tf.sign(x) * step


def input_slice(code: tf.Tensor, unit: tf.Tensor, j: int, dac_bits: int) -> tf.Tensor:
  """Input cycle `j` of `input_code`'s code: its `j`-th digit of `dac_bits`, times the unit;
  it weighs `2**(j*dac_bits)` in the digital shift-add."""
  digit = tf.bitwise.bitwise_and(tf.bitwise.right_shift(code, j * dac_bits), 2 ** dac_bits - 1)
  return tf.cast(digit, unit.dtype) * unit


def input_slices(x: tf.Tensor, low: float, high: float, bits: int, dac_bits: int) -> tf.Tensor:
  """All `(J, ...)` input cycles of `input_code` (`J = ceil(bits / dac_bits)`)."""
  code, unit = input_code(x, low, high, bits)
  return tf.stack([input_slice(code, unit, j, dac_bits) for j in range(-(-bits // dac_bits))])


def percentile_ranges(values: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
  """Per group `(low, high)` of `(samples, *groups)` values: the `100 - p` and `p` percentiles
  over the samples (at most 200,000 of them, drawn without replacement)."""
  v = np.asarray(values, np.float64)
  if v.shape[0] > 200_000:
    v = v[np.random.default_rng(0).choice(v.shape[0], 200_000, replace=False)]
  if not v.shape[0]:
    return np.zeros(v.shape[1:]), np.ones(v.shape[1:])
  low, high = np.percentile(v, [100.0 - percentile, percentile], axis=0)
  return low, high


def percentile_range(values: np.ndarray, percentile: float) -> tuple[float, float]:
  """`(low, high)` of the ADC: the `100 - p` and `p` percentiles of the partial sums."""
  v = np.asarray(values, np.float64).reshape(-1)
  if v.size > 2_000_000:
    v = np.random.default_rng(0).choice(v, 2_000_000, replace=False)
  low, high = np.percentile(v, [100.0 - percentile, percentile]) if v.size else (0.0, 1.0)
  return float(low), float(high)
