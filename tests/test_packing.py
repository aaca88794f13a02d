"""Packing against geometry counts and an independent brute-force cell coverage."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.packing import pack_layer, unrolled
from xbar_tfmot.core.projection import project
from xbar_tfmot.core.spec import CrossbarSpec

SPECS = [
    CrossbarSpec(rows=18, cols=4),
    CrossbarSpec(rows=19, cols=6, weight_bits=8, cell_bits=4),
    CrossbarSpec(rows=10, cols=3, mapping="flat"),
    CrossbarSpec(rows=8, cols=8, mapping="direct", kin=3, kout=2),
]
SHAPES = [("Conv2D", (3, 3, 7, 9)), ("Conv2D", (1, 1, 5, 4)), ("Conv1D", (3, 6, 5)),
          ("Dense", (11, 7))]


def _pruned(kind, shape, spec, granularity, seed, budget_fraction=0.5):
  rng = np.random.default_rng(seed)
  geometry = LayerGeometry("layer", kind, shape, spec)
  kernel = rng.normal(size=shape).astype(np.float32)
  budget = max(1, int(budget_fraction * geometry.dense_crossbars))
  mask = np.asarray(project(geometry, tf.constant(kernel), budget, granularity))
  return geometry, kernel * mask


def _coverage(pack, shape):
  """Brute force: how many crossbar cells hold each weight of the unrolled matrix."""
  geometry = pack.geometry
  cover = np.zeros((geometry.cin * geometry.taps, geometry.cout), int)
  rows = pack.crossbar_rows()
  for n in range(pack.n_crossbars):
    for r in rows[n]:
      for o in pack.columns[n]:
        if r >= 0 and o >= 0:
          cover[r, o] += 1
  return cover


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.to_string())
@pytest.mark.parametrize("kind,shape", SHAPES, ids=lambda x: str(x))
def test_counts_and_every_weight_in_exactly_one_cell(kind, shape, spec, granularity):
  geometry, kernel = _pruned(kind, shape, spec, granularity, seed=3)
  permutation = np.random.default_rng(4).permutation(geometry.cin)
  permuted = np.take(kernel, permutation, axis=-2)
  counts = geometry.counts(permuted)
  pack = pack_layer(geometry, kernel, granularity, permutation)
  assert pack.n_crossbars == (counts.blocks if granularity == "crossbar" else counts.packed)
  cover = _coverage(pack, shape)
  matrix = unrolled(geometry, kernel)
  assert np.all(cover[matrix != 0] == 1)
  assert cover.max() <= 1
  # no crossbar column is wasted on a zero segment, and no crossbar is empty
  weights = pack.crossbar_weights(kernel)
  used = pack.columns >= 0
  assert np.all(np.any(weights != 0, axis=1)[used])
  assert np.all(used.any(axis=1))
  assert np.isclose(np.abs(weights).sum(), np.abs(kernel).sum(), rtol=1e-6)
  if granularity == "crossbar":
    out_group = np.where(used, pack.columns // geometry.kout, -1)
    assert all(len(set(row[row >= 0])) == 1 for row in out_group)


@settings(max_examples=40, deadline=None)
@given(cin=st.integers(1, 9), cout=st.integers(1, 9), kin=st.integers(1, 4),
       kout=st.integers(1, 4), density=st.floats(0.0, 1.0), seed=st.integers(0, 10**6))
def test_packed_count_is_minimal_per_group(cin, cout, kin, kout, density, seed):
  """Random structured zeros: packing uses exactly ceil(c_g / kout) crossbars per group."""
  rng = np.random.default_rng(seed)
  spec = CrossbarSpec(rows=16, cols=16, mapping="direct", kin=kin, kout=kout)
  geometry = LayerGeometry("d", "Dense", (cin, cout), spec)
  kernel = rng.normal(size=(cin, cout)) * (rng.random((cin, cout)) < density)
  pack = pack_layer(geometry, kernel, "column")
  for g in range(geometry.g_in):
    rows = kernel[g * kin:(g + 1) * kin]
    live = int(np.any(rows != 0, axis=0).sum())
    assert np.sum(pack.crossbar_group == g) == -(-live // kout)
  assert np.all((pack.columns >= 0).sum(axis=1) >= 1)


def test_bad_permutation_and_granularity_name_the_layer():
  geometry = LayerGeometry("conv_x", "Dense", (4, 3), SPECS[0])
  with pytest.raises(ValueError, match="conv_x.*permutation of range\\(4\\)"):
    pack_layer(geometry, np.ones((4, 3)), "column", [0, 1, 1, 2])
  with pytest.raises(ValueError, match="granularity='rows'.*crossbar, column"):
    pack_layer(geometry, np.ones((4, 3)), "rows")


def test_crossbar_grain_puts_each_block_in_its_own_crossbar():
  """Dense 8 -> 4 on 4x2 crossbars: blocks (group 0, outputs 0-1) and (group 1, outputs 2-3)
  hold weights; crossbar k holds block k's rows and columns, in block order."""
  geometry = LayerGeometry("fc", "Dense", (8, 4), CrossbarSpec(rows=4, cols=2))
  kernel = np.zeros((8, 4), np.float32)
  kernel[0:4, 0:2] = 1.0
  kernel[4:8, 2:4] = 2.0
  pack = pack_layer(geometry, kernel, "crossbar")
  np.testing.assert_array_equal(pack.crossbar_group, [0, 1])
  np.testing.assert_array_equal(pack.columns, [[0, 1], [2, 3]])
  np.testing.assert_array_equal(pack.crossbar_rows(), [[0, 1, 2, 3], [4, 5, 6, 7]])
  np.testing.assert_array_equal(pack.crossbar_weights(kernel), [np.ones((4, 2)), np.full((4, 2), 2)])
