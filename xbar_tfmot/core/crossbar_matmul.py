"""The products of a crossbar layer, written so that every matmul TensorFlow runs is a plain one.

A crossbar layer multiplies `(..., n, rows)` inputs (any leading axes: batch, output positions)
by `(n, rows, cols)` weights, one matrix per crossbar, and later contracts the trailing axes of
the partial sums with small coefficient tables. Written as `tf.einsum("...nr,nrc->...nc")`,
TensorFlow hands such products to a broadcasting batched matmul of rank 4 or more; with
oneDNN's custom operations on (TensorFlow's default on x86 Linux) the AVX-512 kernel that
runs it reads and writes out of bounds when a leading axis has size 1 (`(5, 1, 16, 8) @ (8, 3)`
is wrong, and corrupts the heap: docs/reliability.md, "The oneDNN matmul crash"). The functions
here fold the leading axes into one, so the kernels only ever see a 2-D matmul or a 3-D batched
matmul whose batch axes are equal: no broadcasting, on every CPU.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def per_crossbar(inputs: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """`(..., n, r)` inputs times `(n, r, c)` weights, crossbar by crossbar: `(..., n, c)`."""
  n, r, c = (int(d) for d in weights.shape)
  lead = tf.shape(inputs)[:-2]
  x = tf.reshape(inputs, [-1, n, r])
  if n == 1:
    out = tf.matmul(x[:, 0], weights[0])[:, None]
  else:
    out = tf.transpose(tf.matmul(tf.transpose(x, [1, 0, 2]), weights), [1, 0, 2])
  return tf.reshape(out, tf.concat([lead, [n, c]], 0))


def contract_last(x: tf.Tensor, table: tf.Tensor, axes: int) -> tf.Tensor:
  """Contracts the last `axes` axes of `x` with the first `axes` of `table` (one 2-D matmul):
  `(..., *a)` with `(*a, *b)` gives `(..., *b)`."""
  size = int(np.prod(table.shape[:axes], dtype=np.int64))
  flat = tf.matmul(tf.reshape(x, [-1, size]), tf.reshape(table, [size, -1]))
  return tf.reshape(flat, tf.concat([tf.shape(x)[:-axes], table.shape[axes:]], 0))


class RowGroups:
  """Crossbars that read the same input rows, so that each input group is read once and all of
  its crossbars' columns come from one product (docs/hardware.md, "Simulation speed").

  Built from `index`, the `(n, r)` input index each crossbar row reads, `pad` (an index that
  reads zero) on unused rows. A group keeps only the rows some crossbar uses (an unused row
  carries no current), and its crossbars sit side by side in `slots` slots of `c` columns,
  empty slots holding zero weights. Two layouts compute the same sums:

  - grouped: the input is gathered per group, `(..., G, r')`, and multiplied group by group;
  - whole (`whole=True`): the input stays whole, `(..., depth)` with `depth = pad`, and one
    2-D product reads it against every group's weights placed at their rows (zeros elsewhere).
    It skips the gather at the price of multiplying zeros, so it is chosen where those are at
    most `whole_limit` times the useful multiply-accumulates (one group, or few).

  Attributes:
    index: `(G, r')` input index of each group row (`pad` fills short groups).
    member: `(n,)` the group of each crossbar.
    order: `(n,)` the slot `g * slots + m` of each crossbar.
    slots: the most crossbars in one group.
  """

  def __init__(self, index: np.ndarray, pad: int, whole_limit: float = 2.0):
    index = np.asarray(index, np.int64)
    n, r = index.shape
    unique, member = np.unique(index, axis=0, return_inverse=True)
    member = member.reshape(-1)
    # groups in the order of their first crossbar, so that contiguous groups of equal size
    # leave the crossbars in place (`products` then needs no reordering)
    first = np.full(len(unique), n, np.int64)
    np.minimum.at(first, member, np.arange(n))
    by_first = np.argsort(first, kind="stable")
    unique, self.member = unique[by_first], np.argsort(by_first)[member]
    groups = len(unique)
    self.slots = int(np.bincount(self.member, minlength=groups).max()) if n else 0
    slot = np.zeros(n, np.int64)
    self.crossbar = np.full((groups, self.slots), n, np.int64)  # n: the empty slot
    seen = np.zeros(groups, np.int64)
    for i, g in enumerate(self.member):
      slot[i] = seen[g]
      self.crossbar[g, seen[g]] = i
      seen[g] += 1
    self.order = self.member * self.slots + slot
    self.in_place = bool(np.array_equal(self.order, np.arange(groups * self.slots)))
    used = [np.flatnonzero(row != pad) for row in unique]
    width = max([len(u) for u in used] + [1])
    self.index = np.full((groups, width), pad, np.int64)
    self.position = np.full((groups, width), r, np.int64)  # r: a zero weight row
    for g, u in enumerate(used):
      self.index[g, :len(u)] = unique[g, u]
      self.position[g, :len(u)] = u
    self.depth = int(pad)
    useful = sum(len(u) for u in used)
    self.whole = bool(pad > 0 and useful and pad * groups <= whole_limit * useful)

  @classmethod
  def each(cls, n: int, r: int) -> "RowGroups":
    """`n` crossbars of `r` rows, each its own group reading all its rows (grouped layout)."""
    return cls(np.arange(n * r).reshape(n, r), -1)

  @property
  def input_rank(self) -> int:
    """Trailing axes of the input `products` takes: 1 whole, 2 grouped."""
    return 1 if self.whole else 2

  def inputs(self, patches: tf.Tensor) -> tf.Tensor:
    """`(..., depth)` patches -> the input `products` takes."""
    if self.whole:
      return patches
    if (self.index == self.depth).any():
      patches = tf.concat([patches, tf.zeros_like(patches[..., :1])], axis=-1)
    return tf.gather(patches, self.index, axis=-1)

  def weights(self, weights) -> tf.Tensor:
    """`(n, r, c)` crossbar weights laid out for `products`: `(G, r', slots * c)` grouped,
    `(depth, G * slots * c)` whole."""
    c = int(weights.shape[-1])
    groups, width = self.index.shape
    w = tf.pad(tf.convert_to_tensor(weights), [[0, 1], [0, 1], [0, 0]])
    w = tf.gather(w, self.crossbar)  # (G, slots, r + 1, c)
    w = tf.gather(w, np.repeat(self.position[:, None, :], self.slots, 1), axis=2, batch_dims=2)
    w = tf.transpose(w, [0, 2, 1, 3])  # (G, r', slots, c)
    if not self.whole:
      return tf.reshape(w, (groups, width, self.slots * c))
    # row index of every (group, row) in the whole input; padding rows land on row `depth`
    rows = np.repeat(self.index[:, :, None], self.slots * c, axis=2)
    cols = np.broadcast_to(np.arange(groups * self.slots * c).reshape(groups, 1, -1), rows.shape)
    keep = rows < self.depth
    return tf.scatter_nd(np.stack([rows[keep], cols[keep]], -1),
                         tf.boolean_mask(tf.reshape(w, rows.shape), keep),
                         (self.depth, groups * self.slots * c))

  @property
  def patches(self) -> "RowGroups":
    """The reader of patch rows (`calibrate_adc` samples rows): these groups themselves."""
    return self

  def products(self, inputs: tf.Tensor, laid_out: tf.Tensor, each=None) -> tf.Tensor:
    """`inputs(...)` times `weights(...)`: every crossbar's columns, `(..., n, c)` in crossbar
    order. `each(out, slots)`, if given, maps the `(..., len(slots) * c)` columns of a block of
    slots (`slots` a slice of the `G * slots` slots, empty ones included) to `(..., len(slots)
    * c')` before they are put in crossbar order: an elementwise converter and a per-column
    reduction then run on the product as it comes, with no copy (`(..., n, c')`)."""
    slots = len(self.index) * self.slots
    if self.whole:
      out = contract_last(inputs, laid_out, 1)
    else:
      out = per_crossbar(inputs, laid_out)  # (..., G, slots * c)
      width = len(self.index) * int(laid_out.shape[-1])
      out = tf.reshape(out, tf.concat([tf.shape(out)[:-2], [width]], 0))
    return self.split(out if each is None else each(out, slice(0, slots)))

  def split(self, out: tf.Tensor) -> tf.Tensor:
    """`(..., G * slots * c)` products, group by group -> `(..., n, c)` in crossbar order."""
    slots = len(self.index) * self.slots
    c = int(out.shape[-1]) // max(slots, 1)
    flat = tf.reshape(out, tf.concat([tf.shape(out)[:-1], [slots, c]], 0))
    return flat if self.in_place else tf.gather(flat, self.order, axis=-2)

  def slot_order(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """`(n, ...)` per-crossbar values -> `(G * slots, ...)` in slot order, `fill` in the empty
    slots."""
    values = np.asarray(values)
    padded = np.concatenate([values, np.full_like(values[:1], fill)])
    return padded[self.crossbar.reshape(-1)]

  def membership(self) -> np.ndarray:
    """`(depth, G)`: how many times each group reads each input row."""
    member = np.zeros((self.depth, len(self.index)), np.float32)
    for g, rows in enumerate(self.index):
      np.add.at(member, (rows[rows < self.depth], g), 1.0)
    return member

  def row_sums(self, values: tf.Tensor) -> tf.Tensor:
    """`values` shaped like `inputs(...)` -> `(..., n)` each crossbar's sum over its rows."""
    if self.whole:
      sums = contract_last(values, tf.constant(self.membership(), values.dtype), 1)
    else:
      sums = tf.reduce_sum(values, axis=-1)
    return tf.gather(sums, self.member, axis=-1)
