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

from xbar_tfmot.core.geometry import LayerGeometry

GRANULARITIES = ("crossbar", "column")


def crossbar_budget(dense: int, reduction: float) -> int:
  """`N = max(1, round((1 - s) * dense))` for a target crossbar reduction `s` in [0, 1)."""
  if not 0.0 <= reduction < 1.0:
    raise ValueError(f"crossbar reduction {reduction!r} is invalid; valid: 0 <= reduction < 1.")
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
      raise ValueError(
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


def block_mask(geometry: LayerGeometry, kernel: tf.Tensor, budget, temperature=0.0, seed=None):
  """Crossbar grain: bool `(g_in, g_out)`, the `budget` blocks kept."""
  energy = geometry.block_energy(kernel)
  return top_k_mask(sample_scores(energy, temperature, seed), check_budget(geometry, budget))


def segment_mask(geometry: LayerGeometry, kernel: tf.Tensor, budget, temperature=0.0, seed=None):
  """Column grain with recombination: bool `(g_in, cout)`, the segments kept.

  Per input group the segments are sorted by energy and cut into chunks of `kout`; the
  `budget` best chunks over all groups are chosen (sampled at temperature > 0), and group `g`
  keeps its `m_g * kout` strongest segments, `m_g` being its chosen chunks.
  """
  energy = geometry.segment_energy(kernel)
  ordered, order = tf.math.top_k(energy, k=geometry.cout)
  padded = tf.pad(ordered, [[0, 0], [0, geometry.g_out * geometry.kout - geometry.cout]])
  chunks = tf.reduce_sum(tf.reshape(padded, (geometry.g_in, geometry.g_out, geometry.kout)), 2)
  chosen = top_k_mask(sample_scores(chunks, temperature, seed), check_budget(geometry, budget))
  kept_per_group = tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1) * geometry.kout
  kept_in_order = tf.range(geometry.cout)[None, :] < kept_per_group[:, None]
  group = tf.broadcast_to(tf.range(geometry.g_in)[:, None], tf.shape(order))
  return tf.scatter_nd(tf.stack([group, order], axis=-1), kept_in_order, tf.shape(order))


def project(geometry: LayerGeometry, kernel: tf.Tensor, budget, granularity: str = "crossbar",
            temperature=0.0, seed=None) -> tf.Tensor:
  """The kernel-shaped mask (kernel dtype) of the projection onto `budget` crossbars."""
  kernel = tf.convert_to_tensor(kernel)
  if granularity == "crossbar":
    seg = geometry.block_to_segment_mask(block_mask(geometry, kernel, budget, temperature, seed))
  elif granularity == "column":
    seg = segment_mask(geometry, kernel, budget, temperature, seed)
  else:
    raise ValueError(f"granularity={granularity!r} is unknown; valid: {', '.join(GRANULARITIES)}.")
  return geometry.segment_to_kernel_mask(tf.cast(seg, kernel.dtype))
