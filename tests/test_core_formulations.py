"""Faster formulations in core are the old ones: the column-grain projection's threshold
selection against the old sort-and-scatter, and NaN/Inf kernels refused naming the layer."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from xbar_tfmot.core import projection
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.pruning import plan


def old_segment_mask(geometry, kernel, budget, temperature=0.0, seed=None):
  """The column-grain selection as it was before the threshold formulation (320dc2a): a full
  sort per group with indices, and a scatter of the kept prefix back to channel order."""
  energy = geometry.segment_energy(kernel)
  ordered, order = tf.math.top_k(energy, k=geometry.cout)
  padded = tf.pad(ordered, [[0, 0], [0, geometry.g_out * geometry.kout - geometry.cout]])
  chunks = tf.reduce_sum(tf.reshape(padded, (geometry.g_in, geometry.g_out, geometry.kout)), 2)
  chosen = projection.top_k_mask(projection.sample_scores(chunks, temperature, seed),
                                 projection.check_budget(geometry, budget))
  kept_per_group = tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1) * geometry.kout
  kept_in_order = tf.range(geometry.cout)[None, :] < kept_per_group[:, None]
  group = tf.broadcast_to(tf.range(geometry.g_in)[:, None], tf.shape(order))
  return tf.scatter_nd(tf.stack([group, order], axis=-1), kept_in_order, tf.shape(order))


@st.composite
def layers(draw):
  """A layer of any kind and mapping, with random or heavily tied weights."""
  kind = draw(st.sampled_from(["Dense", "Conv1D", "Conv2D"]))
  mapping = draw(st.sampled_from(["kernel_aligned", "flat", "direct"]))
  spatial = {"Dense": (), "Conv1D": (draw(st.integers(1, 3)),),
             "Conv2D": (draw(st.integers(1, 3)), draw(st.integers(1, 3)))}[kind]
  taps = int(np.prod(spatial))
  cin, cout = draw(st.integers(1, 24)), draw(st.integers(1, 40))
  kout = draw(st.integers(1, 9))
  if mapping == "direct":
    spec = CrossbarSpec(rows=64, cols=64, mapping="direct", kin=draw(st.integers(1, 6)), kout=kout)
  else:
    rows = draw(st.integers(taps if mapping == "kernel_aligned" else 1, 4 * taps))
    spec = CrossbarSpec(rows=rows, cols=kout, mapping=mapping)
  g = LayerGeometry("layer", kind, spatial + (cin, cout), spec)
  rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
  style = draw(st.sampled_from(["normal", "few values", "constant", "permuted groups", "zeros"]))
  if style == "normal":
    w = rng.normal(size=g.kernel_shape)
  elif style == "few values":  # many exactly equal segment energies
    w = rng.integers(-2, 3, size=g.kernel_shape).astype(float)
  elif style == "constant":
    w = np.ones(g.kernel_shape)
  elif style == "zeros":
    w = np.zeros(g.kernel_shape)
    w.flat[rng.integers(0, w.size, size=3)] = 1.0
  else:  # every output channel a permutation of the same columns: ties across groups
    base = rng.integers(1, 4, size=g.kernel_shape[:-1] + (1,)).astype(float)
    w = base * rng.permutation(np.arange(1, cout + 1) % 3 + 1)
  w = w.astype(np.float32)
  budget = draw(st.integers(1, g.dense_crossbars))
  return g, w, budget


@settings(max_examples=300, deadline=None)
@given(case=layers(), sampled=st.booleans(), seed=st.integers(0, 1000))
def test_column_selection_equals_the_old_sort_and_scatter(case, sampled, seed):
  g, w, budget = case
  t, s = (1.0, projection.stateless_seed(seed, 1, 2)) if sampled else (0.0, None)
  new = projection.segment_mask(g, tf.constant(w), budget, t, s).numpy()
  old = old_segment_mask(g, tf.constant(w), budget, t, s).numpy()
  np.testing.assert_array_equal(new, old)


def test_column_selection_equals_the_old_one_in_a_graph_with_a_tensor_budget():
  g = LayerGeometry("conv", "Conv2D", (3, 3, 40, 50), CrossbarSpec(rows=36, cols=8))
  w = tf.round(tf.random.stateless_normal(g.kernel_shape, [0, 1]) * 2)  # ties
  new = tf.function(lambda w, n: projection.segment_mask(g, w, n))
  old = tf.function(lambda w, n: old_segment_mask(g, w, n))
  for budget in range(1, g.dense_crossbars + 1):
    np.testing.assert_array_equal(new(w, tf.constant(budget)), old(w, tf.constant(budget)))


def test_keep_strongest_ties_go_to_the_lower_index():
  energy = tf.constant([[1.0, 3.0, 1.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
  ordered = tf.sort(energy, direction="DESCENDING")
  got = projection.keep_strongest(energy, ordered, tf.constant([3, 2])).numpy()
  np.testing.assert_array_equal(got, [[1, 1, 0, 1, 0], [1, 1, 0, 0, 0]])
  got = projection.keep_strongest(energy, ordered, tf.constant([0, 5])).numpy()
  np.testing.assert_array_equal(got, [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])


# --- NaN and Inf kernels ------------------------------------------------------------------

GEOMETRY = LayerGeometry("conv_3", "Conv2D", (3, 3, 8, 16), CrossbarSpec(rows=18, cols=4))
BAD = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "overflow": 3e19}


def _kernel(value):
  w = np.random.default_rng(0).normal(size=GEOMETRY.kernel_shape).astype(np.float32)
  w[1, 2, 5, 7] = value
  return w


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
@pytest.mark.parametrize("value", list(BAD.values()), ids=list(BAD))
def test_project_refuses_a_non_finite_kernel_naming_the_layer(granularity, value):
  with pytest.raises(ValueError, match="layer 'conv_3': its kernel holds NaN or Inf"):
    projection.project(GEOMETRY, _kernel(value), 3, granularity)


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
def test_project_names_the_count_of_non_finite_weights(granularity):
  w = _kernel(np.nan)
  w[0, 0, 0, 0] = np.inf
  with pytest.raises(ValueError, match="Non-finite weights: 2"):
    projection.project(GEOMETRY, w, 3, granularity)


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
@pytest.mark.parametrize("mode", ["topk", "rpp"])
def test_the_mask_update_in_a_graph_refuses_a_non_finite_kernel(granularity, mode):
  from xbar_tfmot.core.schedules import CrossbarTemperatureDecay
  temperature = CrossbarTemperatureDecay(1.0, 0, 100)
  update = tf.function(lambda w, n: plan.mask_at(GEOMETRY, w, n, granularity, mode, temperature,
                                                 seed=0, layer_index=2, step=tf.constant(5)))
  good = update(tf.constant(_kernel(0.5)), tf.constant(3))
  assert good.shape == GEOMETRY.kernel_shape
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="layer 'conv_3': its kernel holds NaN or Inf"):
    update(tf.constant(_kernel(np.nan)), tf.constant(3))


def test_finite_kernels_still_project_with_huge_but_safe_weights():
  mask = projection.project(GEOMETRY, _kernel(1e18), 3, "column").numpy()
  assert mask[1, 2, 5, 7] == 1.0
