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
