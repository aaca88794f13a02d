"""The projection against a brute force over every feasible selection, on small layers."""

import itertools

import _pruning_models as pm
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from xbar_tfmot.core import projection
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.spec import CrossbarSpec


@st.composite
def small_layers(draw):
  """A random layer with at most 12 column segments, so every selection can be enumerated."""
  kind = draw(st.sampled_from(["Dense", "Conv1D", "Conv2D"]))
  mapping = draw(st.sampled_from(["kernel_aligned", "flat", "direct"]))
  spatial = {"Dense": (), "Conv1D": (draw(st.integers(1, 3)),),
             "Conv2D": (draw(st.integers(1, 2)), draw(st.integers(1, 2)))}[kind]
  taps = int(np.prod(spatial))
  cin, cout = draw(st.integers(1, 6)), draw(st.integers(1, 4))
  kout = draw(st.integers(1, 3))
  if mapping == "direct":
    spec = CrossbarSpec(rows=64, cols=64, mapping="direct", kin=draw(st.integers(1, 3)), kout=kout)
  else:
    rows = draw(st.integers(taps if mapping == "kernel_aligned" else 1, 3 * taps))
    spec = CrossbarSpec(rows=rows, cols=kout, mapping=mapping)
  g = LayerGeometry("layer", kind, spatial + (cin, cout), spec)
  if g.g_in * g.cout > 12:
    cin = 1
    g = LayerGeometry("layer", kind, spatial + (cin, cout), spec)
  seed = draw(st.integers(0, 2**31 - 1))
  w = np.random.default_rng(seed).normal(size=g.kernel_shape)
  budget = draw(st.integers(1, g.dense_crossbars))
  return g, w, budget


def brute_force_blocks(g, w, budget):
  """Best kept energy over all sets of at most `budget` blocks."""
  block = g.block_energy(tf.constant(w)).numpy().ravel()
  return max(sum(block[list(s)]) for n in range(budget + 1)
             for s in itertools.combinations(range(block.size), n))


def brute_force_columns(g, w, budget):
  """Best kept energy over all sets of segments whose packing fits in `budget` crossbars."""
  seg = g.segment_energy(tf.constant(w)).numpy()
  best = 0.0
  for bits in itertools.product([False, True], repeat=seg.size):
    keep = np.array(bits).reshape(seg.shape)
    if np.sum(-(-keep.sum(axis=1) // g.kout)) <= budget:
      best = max(best, seg[keep].sum())
  return best


def assert_structured(g, w, mask, granularity="column"):
  """The mask is 0/1, one value per column segment (per block at crossbar grain), judged
  independently of the geometry's code (`_pruning_models.structured`), and kept weights are
  untouched."""
  assert set(np.unique(mask)) <= {0.0, 1.0}
  assert pm.structured(g, mask, granularity)
  np.testing.assert_array_equal((w * mask)[mask == 1], w[mask == 1])


@pytest.mark.parametrize("granularity, brute_force, count", [
    ("crossbar", brute_force_blocks, "blocks"), ("column", brute_force_columns, "packed")])
@settings(max_examples=60, deadline=None)
@given(case=small_layers())
def test_is_the_exact_projection(granularity, brute_force, count, case):
  g, w, budget = case
  mask = projection.project(g, w, budget, granularity).numpy()
  assert_structured(g, w, mask, granularity)
  np.testing.assert_allclose(np.sum((w * mask) ** 2), brute_force(g, w, budget), rtol=1e-9)
  assert getattr(g.counts(w * mask), count) == budget


def packing_count(g, kept_segments):
  """Independent count: fill crossbars column by column, a new one when a group changes."""
  crossbars = 0
  for group in kept_segments:
    free = 0
    for keep in group:
      if keep:
        if free == 0:
          crossbars, free = crossbars + 1, g.kout
        free -= 1
  return crossbars


@settings(max_examples=40, deadline=None)
@given(small_layers(), st.floats(0.0, 2.0), st.integers(0, 1000))
def test_sampled_projection_meets_budget_and_structure(case, temperature, seed):
  g, w, budget = case
  for granularity, field in (("crossbar", "blocks"), ("column", "packed")):
    mask = projection.project(g, w, budget, granularity, temperature,
                              projection.stateless_seed(seed, 3, 7)).numpy()
    assert_structured(g, w, mask, granularity)
    counts = g.counts(w * mask)
    assert getattr(counts, field) == budget
    assert counts.packed == packing_count(g, g.nonzero_segments(w * mask))


def test_sampling_is_seeded_and_anneals_to_exact():
  g = LayerGeometry("fc", "Dense", (64, 32), CrossbarSpec(rows=8, cols=4))
  w = tf.constant(np.random.default_rng(0).normal(size=(64, 32)), tf.float32)
  seed = projection.stateless_seed(1, 0, 5)
  a = projection.project(g, w, 20, "column", 1.0, seed)
  b = projection.project(g, w, 20, "column", 1.0, projection.stateless_seed(1, 0, 5))
  c = projection.project(g, w, 20, "column", 1.0, projection.stateless_seed(1, 0, 6))
  exact = projection.project(g, w, 20, "column")
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(projection.project(g, w, 20, "column", 0.0, seed), exact)
  np.testing.assert_array_equal(
      projection.project(g, w, 20, "column", tf.constant(0.0), seed), exact)


def test_graph_mode_with_tensor_budget_matches_eager():
  g = LayerGeometry("conv", "Conv2D", (3, 3, 32, 16), CrossbarSpec(rows=36, cols=4))
  w = tf.random.stateless_normal(g.kernel_shape, [0, 1])
  fn = tf.function(lambda w, n: projection.project(g, w, n, "column"))
  for budget in (1, 7, g.dense_crossbars):
    np.testing.assert_array_equal(fn(w, tf.constant(budget)), projection.project(g, w, budget, "column"))


def test_ties_are_broken_by_index():
  g = LayerGeometry("fc", "Dense", (8, 8), CrossbarSpec(rows=4, cols=4))
  w = np.ones((8, 8), np.float32)
  mask = projection.project(g, w, 1, "crossbar").numpy()
  assert mask[:4, :4].all() and mask.sum() == 16


def test_column_ties_go_to_the_lower_output_channel_then_the_earlier_group():
  """Equal segment energies inside a group: the lower output channel is kept; equal chunks
  across groups: the earlier input group wins (docs/design.md, Ties)."""
  g = LayerGeometry("fc", "Dense", (8, 8), CrossbarSpec(rows=4, cols=4))  # Kin 4 rows, Kout 4
  scale = np.array([2, 1, 1, 1, 1, 1, 2, 2], np.float32)  # channels 1..5 tie at the cut
  w = np.ones((8, 8), np.float32) * scale
  mask = projection.project(g, w, 1, "column").numpy()
  assert mask[4:].sum() == 0  # group 1 is as strong as group 0: the earlier group wins
  np.testing.assert_array_equal(mask[:4], np.broadcast_to([1, 1, 0, 0, 0, 0, 1, 1], (4, 8)))
  w[4:] *= 2  # now group 1 is stronger and still ties inside
  mask = projection.project(g, w, 2, "column").numpy()
  np.testing.assert_array_equal(mask[4:], np.ones((4, 8)))  # both of its chunks
  assert mask[:4].sum() == 0
  mask = projection.project(g, w, 3, "column").numpy()
  np.testing.assert_array_equal(mask[:4], np.broadcast_to([1, 1, 0, 0, 0, 0, 1, 1], (4, 8)))


@pytest.mark.parametrize("budget", [0, 5, -1])
def test_budget_out_of_range(budget):
  g = LayerGeometry("fc", "Dense", (8, 8), CrossbarSpec(rows=4, cols=4))
  with pytest.raises(ValueError, match="'fc': crossbar budget .* valid: 1 <= budget <= 4"):
    projection.project(g, np.ones((8, 8), np.float32), budget)


def test_unknown_granularity():
  g = LayerGeometry("fc", "Dense", (8, 8), CrossbarSpec(rows=4, cols=4))
  with pytest.raises(ValueError, match="granularity='row'.*crossbar, column"):
    projection.project(g, np.ones((8, 8), np.float32), 2, "row")


@pytest.mark.parametrize("dense, reduction, budget", [(100, 0.7, 30), (3, 0.9, 1), (10, 0.0, 10),
                                                      (67824, 0.72, 18991)])
def test_crossbar_budget(dense, reduction, budget):
  assert projection.crossbar_budget(dense, reduction) == budget


@pytest.mark.parametrize("reduction", [1.0, -0.1, 1.5])
def test_crossbar_budget_rejects_reductions(reduction):
  with pytest.raises(ValueError, match="0 <= reduction < 1"):
    projection.crossbar_budget(10, reduction)


def test_gumbel_top_k_draws_in_proportion_to_energy():
  """At temperature 1 the top-1 of `sample_scores` picks unit i with probability E_i / sum E
  (energies 6, 3, 1: 0.6, 0.3, 0.1); 4000 independent rows, so +-0.025 is > 5 sigma. A sign
  flip of the Gumbel noise gives 0.63/0.31/0.06, a floor of 1 added to the energies
  0.54/0.31/0.15."""
  energy = tf.constant(np.tile([6.0, 3.0, 1.0], (4000, 1)), tf.float32)
  scores = projection.sample_scores(energy, 1.0, tf.constant([3, 4], tf.int32))
  freq = np.bincount(np.argmax(np.asarray(scores), axis=1), minlength=3) / 4000
  np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.025)


def test_without_a_seed_or_a_temperature_the_projection_is_exact():
  g = LayerGeometry("fc", "Dense", (40, 24), CrossbarSpec(rows=8, cols=4))
  kernel = tf.constant(np.random.default_rng(5).normal(size=(40, 24)), tf.float32)
  for granularity in ("crossbar", "column"):
    exact = np.asarray(projection.project(g, kernel, 7, granularity))
    no_seed = projection.project(g, kernel, 7, granularity, temperature=2.0, seed=None)
    np.testing.assert_array_equal(no_seed, exact)
    np.testing.assert_array_equal(projection.project(g, kernel, 7, granularity, temperature=0.0,
                                                     seed=tf.constant([1, 2])), exact)
  seed = tf.constant([1, 2])  # the selection functions default to temperature 0 as well
  np.testing.assert_array_equal(projection.block_mask(g, kernel, 7, seed=seed),
                                projection.block_mask(g, kernel, 7))
  np.testing.assert_array_equal(projection.segment_mask(g, kernel, 7, seed=seed),
                                projection.segment_mask(g, kernel, 7))
