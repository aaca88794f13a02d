"""BatchNorm re-estimation: `recalibrate_batchnorm(model, data, steps)` (either Keras flavour).

Pruning changes the kernels under a BatchNormalization layer, so its moving mean and variance
(collected while the kernel was still changing) no longer describe what the layer sees. This
re-estimates them on a few batches: every BatchNormalization layer of the model (nested models
included) runs in training mode, so it normalises with batch statistics and updates its moving
statistics, while everything else runs in inference mode (pruning wrappers compute with their
masked kernel and advance no step, dropout is off). The momentum is set, batch by batch, to
`(n - 1) / n`, so after `n` batches the moving statistics are the plain average of the `n`
batch statistics (a cumulative average, not an exponential one), independent of where they
started. Momentum and `call` are restored afterwards, also on error.

Works on plain, crossbar-wrapped and stripped models, tf_keras and Keras 3, and only touches
the BatchNormalization layers' moving statistics. Frozen BatchNormalization layers
(`trainable=False`) are left alone: Keras runs them in inference mode on purpose.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

import numpy as np
import tensorflow as tf

from xbar_tfmot.core.errors import ModelError

BATCHNORM_CLASSES = ("BatchNormalization", "SyncBatchNormalization")


def batchnorm_layers(model: Any) -> list:
  """The BatchNormalization layers of a model, nested models and wrappers looked into."""
  out = []

  def visit(layer):
    if any(cls.__name__ in BATCHNORM_CLASSES for cls in type(layer).__mro__):
      if not any(layer is seen for seen in out):
        out.append(layer)
      return
    if hasattr(layer, "layers"):
      for child in layer.layers:
        visit(child)
    elif hasattr(layer, "layer"):  # a wrapper
      visit(layer.layer)

  visit(model)
  return out


def _batches(data: Any, steps: int | None, batch_size: int) -> Iterator[Any]:
  """Input batches (the `x` of `(x, y)` or `(x, y, w)` elements) from arrays, a dataset or any
  iterable of batches, at most `steps` of them."""
  if isinstance(data, np.ndarray) or tf.is_tensor(data):
    n = int(data.shape[0])
    it: Iterable = (data[i:i + batch_size] for i in range(0, n, batch_size))
  elif isinstance(data, tuple) and data and (isinstance(data[0], np.ndarray)
                                             or tf.is_tensor(data[0])):
    yield from _batches(data[0], steps, batch_size)
    return
  else:
    it = data
  for batch in itertools.islice(iter(it), steps):
    if isinstance(batch, (tuple, list)):
      batch = batch[0]
    yield batch


def recalibrate_batchnorm(model: Any, data: Any, steps: int | None = None,
                          batch_size: int = 64) -> int:
  """Re-estimates the moving mean and variance of every BatchNormalization layer of `model`.

  Args:
    model: a tf_keras or Keras 3 model (Sequential, functional, nested), crossbar-wrapped or
      stripped. Changed in place: only the BN layers' moving statistics.
    data: input images as a numpy array or tensor (cut into `batch_size` batches), an `(x, y)`
      pair of arrays, a `tf.data.Dataset` or any iterable of batches (`x` or `(x, y, ...)`).
      Use training images, never the test set.
    steps: at most this many batches (`None`: all of `data`; a dataset must then be finite).
    batch_size: batch size for array inputs.

  Returns:
    The number of batches used (0 if the model has no trainable BatchNormalization layer).
  """
  if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
    raise ModelError(f"recalibrate_batchnorm: steps={steps!r} is invalid; valid: a positive "
                     f"integer or None.")
  layers = [l for l in batchnorm_layers(model) if l.trainable]
  if not layers:
    return 0
  saved = [(l, l.momentum, l.__dict__.get("call")) for l in layers]
  for layer in layers:
    original = layer.call

    def forced(inputs, *args, _call=original, **kwargs):
      kwargs["training"] = True
      return _call(inputs, *args, **kwargs)

    object.__setattr__(layer, "call", forced)
  used = 0
  try:
    for batch in _batches(data, steps, batch_size):
      used += 1
      for layer in layers:
        layer.momentum = (used - 1) / used
      model(batch, training=False)
  finally:
    for layer, momentum, call in saved:
      layer.momentum = momentum
      if call is None:
        object.__delattr__(layer, "call")
      else:
        object.__setattr__(layer, "call", call)
  if not used:
    raise ModelError("recalibrate_batchnorm: data holds no batch; valid: at least one batch of "
                     "inputs.")
  return used
