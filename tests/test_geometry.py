"""Layer geometry: hand-computed tilings and counts for every mapping mode."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.spec import CrossbarSpec

# 8-bit weights in 2-bit cells, differential pairs: 8 columns a weight, Kout = 16 // 8 = 2.
SLICED = CrossbarSpec(rows=36, cols=16, weight_bits=8, cell_bits=2, differential=True)


@pytest.mark.parametrize("kind, shape, spec, expected", [
    # kernel_aligned: Kin = 36 // 9 = 4 channels; 10 channels -> 3 groups, the last partial.
    ("Conv2D", (3, 3, 10, 5), SLICED, dict(kin=4, kout=2, g_in=3, g_out=3, dense=9)),
    # flat: 36 unrolled rows cut every 16 rows -> 3 groups (16, 16, 4 rows).
    ("Conv2D", (3, 3, 4, 6), CrossbarSpec(rows=16, cols=4, mapping="flat"),
     dict(kin=16, kout=4, g_in=3, g_out=2, dense=6)),
    # direct: the user's Kin, Kout.
    ("Conv1D", (3, 20, 10), CrossbarSpec(rows=64, cols=64, mapping="direct", kin=8, kout=4),
     dict(kin=8, kout=4, g_in=3, g_out=3, dense=9)),
    # Dense: Kin = rows; 4-bit cells -> 2 columns a weight -> Kout = 32.
    ("Dense", (300, 40), CrossbarSpec(rows=128, cols=64, cell_bits=4),
     dict(kin=128, kout=32, g_in=3, g_out=2, dense=6)),
    # 3 bit slices (ceil(8 / 3)) on 10 columns -> Kout = 3.
    ("Dense", (10, 7), CrossbarSpec(rows=4, cols=10, cell_bits=3),
     dict(kin=4, kout=3, g_in=3, g_out=3, dense=9)),
])
def test_tiling(kind, shape, spec, expected):
  g = LayerGeometry("layer", kind, shape, spec)
  assert dict(kin=g.kin, kout=g.kout, g_in=g.g_in, g_out=g.g_out, dense=g.dense_crossbars) == expected
  assert g.counts(np.ones(shape, np.float32)).dense == expected["dense"]


def test_counts_kernel_aligned_partial_groups():
  g = LayerGeometry("conv", "Conv2D", (3, 3, 10, 5), SLICED)
  w = np.zeros((3, 3, 10, 5), np.float32)
  w[0, 0, 0, 0] = 1.0      # group 0, output 0 -> block (0, 0)
  w[1, 2, 5, 1] = -2.0     # group 1, output 1 -> block (1, 0)
  w[2, 2, 6, 4] = 0.5      # group 1, output 4 -> block (1, 2), the partial output group
  w[0, 1, 9, 2] = 3.0      # group 2 (channels 8, 9), outputs 2 and 3 -> block (2, 1)
  w[2, 0, 8, 3] = 1.0
  c = g.counts(w)
  assert (c.dense, c.blocks, c.nonzero_weights) == (9, 4, 5)
  # Packed per group: ceil(1/2) + ceil(2/2) + ceil(2/2) = 3.
  assert c.packed == 3
  assert c.cells_per_crossbar == 4 * 9 * 2
  assert c.utilization(c.packed) == pytest.approx(5 / (3 * 72))


def test_counts_flat_follow_channel_major_rows():
  g = LayerGeometry("conv", "Conv2D", (3, 3, 4, 6), CrossbarSpec(rows=16, cols=4, mapping="flat"))
  w = np.zeros((3, 3, 4, 6), np.float32)
  w[2, 2, 1, 5] = 1.0  # row 1*9 + 2*3 + 2 = 17 -> group 1, block (1, 1)
  w[0, 0, 1, 5] = 1.0  # row 9 -> group 0, block (0, 1)
  w[2, 2, 3, 0] = 1.0  # row 35 -> group 2, block (2, 0)
  w[1, 1, 3, 1] = 1.0  # row 31 -> group 1, block (1, 0)
  c = g.counts(w)
  assert (c.blocks, c.packed) == (4, 3)  # group 1 packs its 2 columns in one crossbar
  np.testing.assert_array_equal(
      g.nonzero_segments(w),
      [[0, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]])


def test_recombination_packs_columns_of_a_group():
  # One input group, outputs in 3 different output groups: 3 blocks, one packed crossbar.
  g = LayerGeometry("fc", "Dense", (8, 12), CrossbarSpec(rows=8, cols=4))
  w = np.zeros((8, 12), np.float32)
  w[0, [0, 5, 10]] = 1.0
  c = g.counts(w)
  assert (c.dense, c.blocks, c.packed) == (3, 3, 1)


def test_replicas_multiply_every_count():
  spec = CrossbarSpec(rows=8, cols=4, replicas=2, layer_replicas={"fc": 3})
  w = np.ones((16, 8), np.float32)
  assert LayerGeometry("fc", "Dense", w.shape, spec).counts(w).dense == 3 * 4
  c = LayerGeometry("other", "Dense", w.shape, spec).counts(w)
  assert (c.dense, c.blocks, c.packed, c.nonzero_weights) == (8, 8, 8, 256)
  assert c.utilization(c.packed) == 1.0


@pytest.mark.parametrize("shape", [(8, 5), (4, 6, 5), (2, 3, 6, 5)])
def test_unroll_is_channel_major_and_fold_inverts_it(shape):
  kind = {2: "Dense", 3: "Conv1D", 4: "Conv2D"}[len(shape)]
  g = LayerGeometry("l", kind, shape, CrossbarSpec(rows=64, cols=64))
  w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  matrix = g.unroll(tf.constant(w)).numpy()
  spatial = shape[:-2]
  for index in itertools.product(*map(range, shape[:-1])):
    *taps, c = index
    row = c * int(np.prod(spatial)) + int(np.ravel_multi_index(taps, spatial)) if taps else c
    np.testing.assert_array_equal(matrix[row], w[index])
  np.testing.assert_array_equal(g.fold(tf.constant(matrix)).numpy(), w)


@pytest.mark.parametrize("spec", [SLICED, CrossbarSpec(rows=16, cols=4, mapping="flat"),
                                  CrossbarSpec(rows=9, cols=8, mapping="direct", kin=3, kout=2)])
def test_energies_match_brute_force(spec):
  g = LayerGeometry("conv", "Conv2D", (3, 3, 10, 5), spec)
  w = np.random.default_rng(1).normal(size=g.kernel_shape)
  matrix = g.unroll(tf.constant(w)).numpy()
  rows_per_group = g.kin * g.unit_rows
  seg = np.zeros((g.g_in, g.cout))
  for r, o in itertools.product(range(matrix.shape[0]), range(g.cout)):
    seg[r // rows_per_group, o] += matrix[r, o] ** 2
  np.testing.assert_allclose(g.segment_energy(tf.constant(w)).numpy(), seg, rtol=1e-10)
  block = np.zeros((g.g_in, g.g_out))
  for gi, o in itertools.product(range(g.g_in), range(g.cout)):
    block[gi, o // g.kout] += seg[gi, o]
  np.testing.assert_allclose(g.block_energy(tf.constant(w)).numpy(), block, rtol=1e-10)


@pytest.mark.parametrize("kind, shape, spec, match", [
    ("Conv2D", (5, 5, 3, 8), CrossbarSpec(rows=16, cols=16), "25 kernel taps.*mapping='flat'"),
    ("Conv2D", (3, 3, 3), CrossbarSpec(rows=16, cols=16), "expected 4 positive dimensions"),
    ("Dense", (0, 4), CrossbarSpec(rows=16, cols=16), "positive dimensions"),
    ("Conv3D", (3, 3, 3, 3, 3), CrossbarSpec(rows=16, cols=16), "not mapped"),
])
def test_bad_layers(kind, shape, spec, match):
  with pytest.raises(ValueError, match=match) as err:
    LayerGeometry("bad_layer", kind, shape, spec)
  assert "'bad_layer'" in str(err.value)


def test_taps_may_exceed_rows_with_flat_mapping():
  g = LayerGeometry("big", "Conv2D", (5, 5, 3, 8), CrossbarSpec(rows=16, cols=16, mapping="flat"))
  assert g.g_in == -(-75 // 16)


def test_counts_of_an_all_zero_kernel_and_their_immutability():
  """A layer pruned to nothing holds 0 crossbars at 0% utilisation (not 100%); `Counts` is a
  frozen, hashable record."""
  import dataclasses
  g = LayerGeometry("fc", "Dense", (10, 6), CrossbarSpec(rows=4, cols=4))
  counts = g.counts(np.zeros((10, 6), np.float32))
  assert (counts.dense, counts.blocks, counts.packed, counts.nonzero_weights) == (6, 0, 0, 0)
  assert counts.utilization(0) == 0.0 and counts.utilization(counts.packed) == 0.0
  full = g.counts(np.ones((10, 6), np.float32))
  assert full.utilization(full.blocks) == pytest.approx(60 / (6 * 16))
  with pytest.raises(dataclasses.FrozenInstanceError):
    counts.blocks = 1
  assert len({counts, g.counts(np.zeros((10, 6), np.float32)), full}) == 2
