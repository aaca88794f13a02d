"""How one layer's kernel is cut into crossbars (docs/design.md, "The crossbar model").

The kernel is viewed as its unrolled matrix (rows channel-major, `row = c*kh*kw + i*kw + j`).
Rows are grouped into *units*: one input channel (all its taps) for `kernel_aligned` and
`direct` mapping, one matrix row for `flat`. `kin` units form an input group `g`, `kout`
output channels form an output group `h`; block `B(g, h)` is one crossbar and segment
`C(g, o)` is the part of output column `o` inside input group `g`.

Energies and masks are TensorFlow ops (usable in `tf.function`); counts read a kernel's
actual zeros with numpy.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from xbar_tfmot.core.errors import GeometryError
from xbar_tfmot.core.spec import CrossbarSpec

# Mapped layer kinds and the rank of their kernel.
KERNEL_RANK = {"Dense": 2, "Conv1D": 3, "Conv2D": 4}


@dataclasses.dataclass(frozen=True)
class Counts:
  """Crossbars of one layer, replicas included (docs/design.md, "The crossbar model")."""

  dense: int
  blocks: int  # non-zero blocks: crossbar grain, and column grain without recombination
  packed: int  # column grain with output recombination
  nonzero_weights: int
  cells_per_crossbar: int  # used rows (Kin_rows) times Kout

  def utilization(self, crossbars: int) -> float:
    return self.nonzero_weights / (crossbars * self.cells_per_crossbar) if crossbars else 0.0


@dataclasses.dataclass(frozen=True)
class LayerGeometry:
  """The crossbar tiling of one mapped layer."""

  name: str
  kind: str
  kernel_shape: tuple[int, ...]
  spec: CrossbarSpec

  def __post_init__(self):
    if self.kind not in KERNEL_RANK:
      raise GeometryError(
          f"layer {self.name!r}: type {self.kind} is not mapped; valid: {', '.join(KERNEL_RANK)}.")
    shape = tuple(int(d) for d in self.kernel_shape)
    object.__setattr__(self, "kernel_shape", shape)
    if len(shape) != KERNEL_RANK[self.kind] or min(shape) < 1:
      raise GeometryError(
          f"layer {self.name!r}: {self.kind} kernel shape {shape} is invalid; expected "
          f"{KERNEL_RANK[self.kind]} positive dimensions.")
    if self.spec.mapping == "kernel_aligned" and self.taps > self.spec.rows:
      raise GeometryError(
          f"layer {self.name!r}: its {self.taps} kernel taps per input channel do not fit in "
          f"{self.spec.rows} crossbar rows with mapping='kernel_aligned'; use mapping='flat' or "
          f"crossbars with at least {self.taps} rows.")

  @property
  def taps(self) -> int:
    """Kernel taps per input channel (1 for Dense)."""
    return math.prod(self.kernel_shape[:-2])

  @property
  def cin(self) -> int:
    return self.kernel_shape[-2]

  @property
  def cout(self) -> int:
    return self.kernel_shape[-1]

  @property
  def unit_rows(self) -> int:
    """Matrix rows in one grouping unit: a whole channel, or one row for `flat`."""
    return 1 if self.spec.mapping == "flat" else self.taps

  @property
  def units(self) -> int:
    return self.cin * self.taps // self.unit_rows

  @property
  def kin(self) -> int:
    """Units per input group: input channels per crossbar (`flat`: matrix rows)."""
    if self.spec.mapping == "direct":
      return self.spec.kin
    return self.spec.rows // self.unit_rows

  @property
  def kout(self) -> int:
    return self.spec.logical_cols

  @property
  def g_in(self) -> int:
    return -(-self.units // self.kin)

  @property
  def g_out(self) -> int:
    return -(-self.cout // self.kout)

  @property
  def dense_crossbars(self) -> int:
    """Crossbars of the unpruned layer, without replicas: the budget's upper bound."""
    return self.g_in * self.g_out

  @property
  def replicas(self) -> int:
    return self.spec.replicas_for(self.name)

  # --- TensorFlow views --------------------------------------------------------------------

  def unroll(self, kernel: tf.Tensor) -> tf.Tensor:
    """The `(cin*taps, cout)` matrix in channel-major row order."""
    rank = len(self.kernel_shape)
    perm = [rank - 2, *range(rank - 2), rank - 1]
    return tf.reshape(tf.transpose(kernel, perm), (self.cin * self.taps, self.cout))

  def fold(self, matrix: tf.Tensor) -> tf.Tensor:
    """Inverse of `unroll`."""
    rank = len(self.kernel_shape)
    spatial = self.kernel_shape[:-2]
    shaped = tf.reshape(matrix, (self.cin, *spatial, self.cout))
    return tf.transpose(shaped, [*range(1, rank - 1), 0, rank - 1])

  def unit_energy(self, kernel: tf.Tensor) -> tf.Tensor:
    """Sum of squares of each `(unit, output channel)` pair, shape `(units, cout)`."""
    if self.unit_rows == 1 and self.taps > 1:
      return tf.square(self.unroll(kernel))
    return tf.reduce_sum(tf.square(kernel), axis=list(range(len(self.kernel_shape) - 2)))

  def segment_energy(self, kernel: tf.Tensor) -> tf.Tensor:
    """Energy of each column segment `C(g, o)`, shape `(g_in, cout)`."""
    return self._sum_groups(self.unit_energy(kernel))

  def block_energy(self, kernel: tf.Tensor) -> tf.Tensor:
    """Energy of each crossbar block `B(g, h)`, shape `(g_in, g_out)`."""
    seg = tf.pad(self.segment_energy(kernel), [[0, 0], [0, self.g_out * self.kout - self.cout]])
    return tf.reduce_sum(tf.reshape(seg, (self.g_in, self.g_out, self.kout)), axis=2)

  def _sum_groups(self, per_unit: tf.Tensor) -> tf.Tensor:
    padded = tf.pad(per_unit, [[0, self.g_in * self.kin - self.units], [0, 0]])
    return tf.reduce_sum(tf.reshape(padded, (self.g_in, self.kin, self.cout)), axis=1)

  def block_to_segment_mask(self, block_mask: tf.Tensor) -> tf.Tensor:
    """`(g_in, g_out)` -> `(g_in, cout)`."""
    return tf.repeat(block_mask, self.kout, axis=1)[:, : self.cout]

  def segment_to_kernel_mask(self, segment_mask: tf.Tensor) -> tf.Tensor:
    """`(g_in, cout)` -> a mask of the kernel's shape."""
    spread = tf.broadcast_to(segment_mask[:, None, :], (self.g_in, self.kin, self.cout))
    per_unit = tf.reshape(spread, (self.g_in * self.kin, self.cout))[: self.units]
    if self.unit_rows == 1 and self.taps > 1:
      return self.fold(per_unit)
    per_channel = tf.reshape(per_unit, (1,) * (len(self.kernel_shape) - 2) + (self.cin, self.cout))
    return tf.broadcast_to(per_channel, self.kernel_shape)

  # --- counts from actual zeros ------------------------------------------------------------

  def nonzero_segments(self, kernel) -> np.ndarray:
    """Bool `(g_in, cout)`: which column segments hold a non-zero weight."""
    matrix = np.asarray(self.unroll(tf.convert_to_tensor(kernel))) != 0
    per_unit = matrix.reshape(self.units, self.unit_rows, self.cout).any(axis=1)
    padded = np.zeros((self.g_in * self.kin, self.cout), bool)
    padded[: self.units] = per_unit
    return padded.reshape(self.g_in, self.kin, self.cout).any(axis=1)

  def counts(self, kernel) -> Counts:
    """Crossbar counts of `kernel` as it is (its zeros decide), replicas included."""
    seg = self.nonzero_segments(kernel)
    padded = np.zeros((self.g_in, self.g_out * self.kout), bool)
    padded[:, : self.cout] = seg
    blocks = int(padded.reshape(self.g_in, self.g_out, self.kout).any(axis=2).sum())
    packed = int(np.sum(-(-seg.sum(axis=1) // self.kout)))
    r = self.replicas
    return Counts(
        dense=self.dense_crossbars * r,
        blocks=blocks * r,
        packed=packed * r,
        nonzero_weights=int(np.count_nonzero(np.asarray(kernel))) * r,
        cells_per_crossbar=self.kin * self.unit_rows * self.kout,
    )
