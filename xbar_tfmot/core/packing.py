"""Output recombination: which crossbar holds which part of a pruned kernel (docs/design.md, "Output recombination").

A layer's input units (channels, or matrix rows for `flat`) are taken in the order of an input
permutation and cut into groups of `kin`. Its crossbars then follow from the kernel's actual
zeros:
- crossbar grain: one crossbar per non-zero block `B(g, h)`, holding the block's non-zero
  column segments side by side in output-channel order;
- column grain: the non-zero segments of input group `g`, in output-channel order, packed
  side by side into `ceil(c_g / kout)` crossbars (output recombination: each column's partial
  sum is routed to its own output channel, where the partial sums of all groups are added).

Numbers of crossbars equal `LayerGeometry.counts` (`blocks` and `packed`, before replicas).
Everything is vectorised numpy: no loop over blocks or columns.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xbar_tfmot.core.errors import GeometryError
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.projection import GRANULARITIES


@dataclasses.dataclass(frozen=True, eq=False)
class LayerPacking:
  """The crossbars of one layer.

  Attributes:
    geometry: the layer's tiling.
    granularity: `crossbar` or `column`.
    permutation: `(cin,)`, the original input channel at each position before grouping.
    groups: `(g_in, kin)` original unit indices (channels, or channel-major matrix rows for
      row units), crossbar row order; -1 pads the last group.
    crossbar_group: `(n,)` the input group of each crossbar.
    columns: `(n, kout)` the output channel each logical column feeds; -1 marks unused ones.
  """

  geometry: LayerGeometry
  granularity: str
  permutation: np.ndarray
  groups: np.ndarray
  crossbar_group: np.ndarray
  columns: np.ndarray

  @property
  def n_crossbars(self) -> int:
    return int(self.crossbar_group.shape[0])

  def group_rows(self) -> np.ndarray:
    """`(g_in, kin * unit_rows)` channel-major matrix rows of each group, -1 padded."""
    return unit_rows_of(self.geometry, self.groups)

  def crossbar_rows(self) -> np.ndarray:
    """`(n, kin * unit_rows)` matrix rows feeding each crossbar's physical rows, -1 padded."""
    return self.group_rows()[self.crossbar_group]

  def crossbar_weights(self, kernel) -> np.ndarray:
    """`(n, kin * unit_rows, kout)` the weights written into each crossbar (zeros where unused)."""
    matrix = unrolled(self.geometry, kernel)
    rows, cols = self.crossbar_rows(), self.columns
    padded = np.zeros((matrix.shape[0] + 1, matrix.shape[1] + 1), matrix.dtype)
    padded[:-1, :-1] = matrix
    return padded[rows[:, :, None], cols[:, None, :]]


def unrolled(geometry: LayerGeometry, kernel) -> np.ndarray:
  """The `(cin * taps, cout)` channel-major matrix of a kernel, in numpy."""
  kernel = np.asarray(kernel)
  if kernel.shape != geometry.kernel_shape:
    raise GeometryError(
        f"layer {geometry.name!r}: kernel shape {kernel.shape} does not match its geometry "
        f"{geometry.kernel_shape}.")
  rank = kernel.ndim
  return np.transpose(kernel, [rank - 2, *range(rank - 2), rank - 1]).reshape(
      geometry.cin * geometry.taps, geometry.cout)


def unit_order(geometry: LayerGeometry, permutation) -> np.ndarray:
  """Original unit indices in grouping order for a permutation of input channels."""
  perm = check_permutation(geometry, permutation)
  if geometry.unit_rows == 1 and geometry.taps > 1:
    return (perm[:, None] * geometry.taps + np.arange(geometry.taps)).reshape(-1)
  return perm


def unit_rows_of(geometry: LayerGeometry, units: np.ndarray) -> np.ndarray:
  """Expands unit indices (any shape, -1 = none) to their matrix rows along a new last axis."""
  r = geometry.unit_rows
  rows = units[..., None] * r + np.arange(r)
  rows = np.where(units[..., None] < 0, -1, rows)
  return rows.reshape(*units.shape[:-1], units.shape[-1] * r)


def check_permutation(geometry: LayerGeometry, permutation) -> np.ndarray:
  """`permutation` as an int array, or the identity for None; ValueError if it is not one."""
  if permutation is None:
    return np.arange(geometry.cin)
  perm = np.asarray(permutation)
  if (perm.shape != (geometry.cin,) or not np.issubdtype(perm.dtype, np.integer)
      or not np.array_equal(np.sort(perm), np.arange(geometry.cin))):
    raise GeometryError(
        f"layer {geometry.name!r}: input permutation must be a permutation of "
        f"range({geometry.cin}) (its input channels), got shape {perm.shape}.")
  return perm.astype(np.int64)


def group_units(geometry: LayerGeometry, permutation=None) -> np.ndarray:
  """`(g_in, kin)` original unit indices of each input group, -1 padded."""
  order = unit_order(geometry, permutation)
  padded = np.full(geometry.g_in * geometry.kin, -1, np.int64)
  padded[: order.size] = order
  return padded.reshape(geometry.g_in, geometry.kin)


def nonzero_segments(geometry: LayerGeometry, kernel, permutation=None) -> np.ndarray:
  """Bool `(g_in, cout)`: segments holding a non-zero weight, with the input permutation.

  One pass over the kernel: `!= 0` in its own layout, reduced over the taps (channel units)
  or moved to channel-major rows as booleans (row units); groups are then reduced in place
  (a reshape) where the units are in order, gathered only for a permutation.
  """
  kernel = np.asarray(kernel)
  if kernel.shape != geometry.kernel_shape:
    raise GeometryError(
        f"layer {geometry.name!r}: kernel shape {kernel.shape} does not match its geometry "
        f"{geometry.kernel_shape}.")
  nonzero = kernel != 0
  spatial = tuple(range(kernel.ndim - 2))
  if geometry.unit_rows == 1 and geometry.taps > 1:  # row units, channel-major rows
    per_unit = np.moveaxis(nonzero, -2, 0).reshape(geometry.units, geometry.cout)
  else:
    per_unit = nonzero.any(axis=spatial) if spatial else nonzero
  perm = check_permutation(geometry, permutation)
  if not np.array_equal(perm, np.arange(geometry.cin)):
    per_unit = per_unit[unit_order(geometry, perm)]
  kin, full = geometry.kin, geometry.units // geometry.kin
  head = per_unit[: full * kin].reshape(full, kin, geometry.cout).any(axis=1)
  if full == geometry.g_in:
    return head
  tail = per_unit[full * kin:].any(axis=0, keepdims=True)
  return np.concatenate([head, tail])


def pack_layer(geometry: LayerGeometry, kernel, granularity: str = "column",
               permutation=None) -> LayerPacking:
  """The crossbars of a pruned kernel (its zeros decide), at crossbar or column grain."""
  if granularity not in GRANULARITIES:
    raise GeometryError(
        f"granularity={granularity!r} is unknown; valid: {', '.join(GRANULARITIES)}.")
  perm = check_permutation(geometry, permutation)
  seg = nonzero_segments(geometry, kernel, perm)
  g_in, cout, kout = geometry.g_in, geometry.cout, geometry.kout
  if granularity == "column":
    rank = np.cumsum(seg, axis=1) - 1
    per_group = -(-seg.sum(axis=1) // kout)
    first = np.concatenate([[0], np.cumsum(per_group)[:-1]])
    crossbar = first[:, None] + rank // kout
    slot = rank % kout
    crossbar_group = np.repeat(np.arange(g_in), per_group)
  else:
    g_out = geometry.g_out
    blocks = np.zeros((g_in, g_out * kout), bool)
    blocks[:, :cout] = seg
    blocks = blocks.reshape(g_in, g_out, kout)
    live = blocks.any(axis=2)
    block_id = np.cumsum(live.reshape(-1)).reshape(g_in, g_out) - 1
    rank = (np.cumsum(blocks, axis=2) - 1).reshape(g_in, g_out * kout)[:, :cout]
    crossbar = np.repeat(block_id, kout, axis=1)[:, :cout]
    slot = rank
    crossbar_group = np.nonzero(live)[0]
  n = crossbar_group.size
  columns = np.full((n, kout), -1, np.int64)
  g, o = np.nonzero(seg)
  columns[crossbar[g, o], slot[g, o]] = o
  return LayerPacking(geometry, granularity, perm, group_units(geometry, perm),
                      crossbar_group.astype(np.int64), columns)
