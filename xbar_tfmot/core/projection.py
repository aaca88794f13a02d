"""The projection onto a crossbar budget, exact or sampled (docs/design.md, "The projection" and "LGD-RPP").

`project` returns the kernel-shaped 0/1 mask that keeps the structured part of a kernel with
the largest energy fitting in `budget` crossbars. With `temperature > 0` the kept units are
sampled instead (Gumbel-top-k, probability proportional to `energy ** (1 / temperature)`); at
temperature 0 the result is the exact projection. Everything is vectorised TensorFlow, so
it runs inside `tf.function`; ties are broken by unit index (`tf.math.top_k` keeps the lower
index first), which makes the exact projection deterministic.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from xbar_tfmot.core.errors import GeometryError
from xbar_tfmot.core.geometry import LayerGeometry

GRANULARITIES = ("crossbar", "column")


def crossbar_budget(dense: int, reduction: float) -> int:
  """`N = max(1, round((1 - s) * dense))` for a target crossbar reduction `s` in [0, 1)."""
  if not 0.0 <= reduction < 1.0:
    raise GeometryError(f"crossbar reduction {reduction!r} is invalid; valid: 0 <= reduction < 1.")
  return max(1, round((1.0 - reduction) * dense))


def stateless_seed(seed: int, layer_id, step) -> tf.Tensor:
  """A `[2]` stateless seed from (seed, layer, step): equal on every replica and every rerun."""
  base = tf.constant([seed, 0], tf.int64)
  base = tf.random.experimental.stateless_fold_in(base, tf.cast(layer_id, tf.int64))
  return tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int64))


def sample_scores(energy: tf.Tensor, temperature=0.0, seed=None) -> tf.Tensor:
  """Scores whose top-k is the Gumbel-top-k sample (or the energies at temperature 0)."""
  if seed is None or (isinstance(temperature, numbers.Number) and temperature == 0):
    return energy
  gumbel = -tf.math.log(-tf.math.log(
      tf.random.stateless_uniform(tf.shape(energy), seed, minval=1e-20, maxval=1.0,
                                  dtype=energy.dtype)))
  tiny = tf.constant(1e-30, energy.dtype)
  noisy = tf.math.log(energy + tiny) + tf.cast(temperature, energy.dtype) * gumbel
  return tf.where(tf.cast(temperature, energy.dtype) > 0, noisy, energy)


def top_k_mask(scores: tf.Tensor, k) -> tf.Tensor:
  """Bool mask of `scores`' shape marking its `k` largest entries (ties: lower flat index)."""
  flat = tf.reshape(scores, [-1])
  _, index = tf.math.top_k(flat, k=tf.cast(k, tf.int32))
  hits = tf.scatter_nd(index[:, None], tf.ones_like(index, tf.bool), tf.shape(flat))
  return tf.reshape(hits, tf.shape(scores))


def check_budget(geometry: LayerGeometry, budget) -> tf.Tensor:
  """Validates a crossbar budget: a ValueError for Python ints, a graph assertion otherwise."""
  dense = geometry.dense_crossbars
  if isinstance(budget, numbers.Integral):
    if not 1 <= budget <= dense:
      raise GeometryError(
          f"layer {geometry.name!r}: crossbar budget {budget} is invalid; valid: 1 <= budget <= "
          f"{dense} (its dense crossbar count).")
    return tf.constant(budget, tf.int32)
  budget = tf.convert_to_tensor(budget, tf.int32)
  with tf.control_dependencies([
      tf.debugging.assert_greater_equal(budget, 1, message=f"layer {geometry.name}: budget < 1"),
      tf.debugging.assert_less_equal(
          budget, dense, message=f"layer {geometry.name}: budget > dense crossbars {dense}"),
  ]):
    return tf.identity(budget)


def check_finite_energy(geometry: LayerGeometry, kernel: tf.Tensor, energy: tf.Tensor) -> tf.Tensor:
  """`energy` unchanged if every entry is finite; otherwise an error naming the layer.

  A NaN or Inf weight makes its segment's energy NaN or Inf, so checking the small energy
  tensor finds it without another pass over the kernel (so does a weight whose square
  overflows, |w| > ~1.8e19 in float32). Eagerly the error is a ValueError raised before any
  mask is computed; in a graph (`tf.function`, the mask update) an `InvalidArgumentError`
  from an assertion the selection depends on, with the same message.
  """
  message = (f"layer {geometry.name!r}: its kernel holds NaN or Inf (or weights so large that "
             f"their squares overflow), so no crossbar mask can be computed; fix the weights "
             f"(e.g. a diverged training step) before projecting.")
  if tf.executing_eagerly():
    if not bool(tf.reduce_all(tf.math.is_finite(energy))):
      bad = int(tf.size(kernel)) - int(tf.math.count_nonzero(tf.math.is_finite(kernel)))
      raise GeometryError(f"{message} Non-finite weights: {bad}.")
    return energy
  return tf.debugging.assert_all_finite(energy, message)


def block_mask(geometry: LayerGeometry, kernel: tf.Tensor, budget, temperature=0.0, seed=None):
  """Crossbar grain: bool `(g_in, g_out)`, the `budget` blocks kept."""
  energy = check_finite_energy(geometry, kernel, geometry.block_energy(kernel))
  return top_k_mask(sample_scores(energy, temperature, seed), check_budget(geometry, budget))


def keep_strongest(energy: tf.Tensor, ordered: tf.Tensor, kept: tf.Tensor) -> tf.Tensor:
  """Bool `(g_in, cout)`: per row `g`, the `kept[g]` largest entries of `energy`, ties to the
  lower index: what the first `kept[g]` positions of a stable descending sort hold.

  `ordered` is each row sorted in decreasing order (values only). With `t` the value at
  position `kept[g] - 1`, every entry above `t` is kept, and of the entries equal to `t` the
  `kept[g] - #(entries > t)` with the lowest indices; elementwise, no scatter.
  """
  last = tf.gather(ordered, tf.maximum(kept - 1, 0), axis=1, batch_dims=1)[:, None]
  above = energy > last
  tied = energy == last
  room = kept - tf.reduce_sum(tf.cast(above, tf.int32), axis=1)
  tied_rank = tf.cumsum(tf.cast(tied, tf.int32), axis=1)
  keep = above | (tied & (tied_rank <= room[:, None]))
  return keep & (kept[:, None] > 0)


def segment_mask(geometry: LayerGeometry, kernel: tf.Tensor, budget, temperature=0.0, seed=None):
  """Column grain with recombination: bool `(g_in, cout)`, the segments kept.

  Per input group the segments are sorted by energy and cut into chunks of `kout`; the
  `budget` best chunks over all groups are chosen (sampled at temperature > 0), and group `g`
  keeps its `m_g * kout` strongest segments, `m_g` being its chosen chunks. Only the sorted
  values are used: which segments are the strongest follows from a threshold per group
  (`keep_strongest`), with the same ties as the sort (lower output channel first).
  """
  energy = check_finite_energy(geometry, kernel, geometry.segment_energy(kernel))
  cout, kout, g_out = geometry.cout, geometry.kout, geometry.g_out
  ordered = tf.math.top_k(energy, k=cout).values
  padded = tf.pad(ordered, [[0, 0], [0, g_out * kout - cout]])
  chunks = tf.reduce_sum(tf.reshape(padded, (geometry.g_in, g_out, kout)), 2)
  chosen = top_k_mask(sample_scores(chunks, temperature, seed), check_budget(geometry, budget))
  kept = tf.minimum(tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1) * kout, cout)
  return keep_strongest(energy, ordered, kept)


def project(geometry: LayerGeometry, kernel: tf.Tensor, budget, granularity: str = "crossbar",
            temperature=0.0, seed=None) -> tf.Tensor:
  """The kernel-shaped mask (kernel dtype) of the projection onto `budget` crossbars."""
  kernel = tf.convert_to_tensor(kernel)
  if granularity == "crossbar":
    seg = geometry.block_to_segment_mask(block_mask(geometry, kernel, budget, temperature, seed))
  elif granularity == "column":
    seg = segment_mask(geometry, kernel, budget, temperature, seed)
  else:
    raise GeometryError(
        f"granularity={granularity!r} is unknown; valid: {', '.join(GRANULARITIES)}.")
  return geometry.segment_to_kernel_mask(tf.cast(seg, kernel.dtype))
