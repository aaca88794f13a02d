"""Batches every replica of a `tf.distribute` strategy can take: equal and never empty.

A strategy splits each global batch over its replicas; the last, partial batch of a dataset is
split in order, so some replicas receive fewer images than the others or none at all. An empty
batch reaches kernels that are not written for one (with oneDNN on, a convolution or a
BatchNormalization given a `(0, h, w, c)` tensor fails or crashes on some CPUs:
docs/reliability.md). The rule of this project (docs/design.md, "Training under a strategy"):

- evaluation and prediction pad the data to whole batches of a multiple of the replicas, and
  mask the padding out (prediction: dropped; evaluation: sample weight 0);
- training drops the last, partial batch of each epoch (a different one each epoch, since the
  order is reshuffled), because padded images would enter BatchNorm's batch statistics.

With one replica nothing changes: batches are as given, the last one partial.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xbar_tfmot.core.errors import XbarError


class ReplicaBatchError(XbarError, ValueError):
  """The data or batch size cannot give every replica an equal, non-empty batch."""


def replicas_of(model: Any = None) -> int:
  """Replicas the model runs on: its own strategy's (either flavour), else the current one's."""
  import tensorflow as tf
  strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
  return int(strategy.num_replicas_in_sync)


def check_batch(batch_size: int, replicas: int) -> None:
  """A global batch splits evenly over the replicas, or `ReplicaBatchError` naming both."""
  if replicas > 1 and batch_size % replicas:
    raise ReplicaBatchError(
        f"batch_size={batch_size} does not split over {replicas} replicas; valid: a multiple of "
        f"{replicas} (the global batch is divided equally among the replicas).")


def eval_batch(batch_size: int, replicas: int) -> int:
  """`batch_size` rounded up to a multiple of `replicas`."""
  return -(-batch_size // replicas) * replicas


def padded_length(n: int, batch_size: int, replicas: int) -> int:
  """`n` rounded up to whole batches when there are several replicas (else `n`)."""
  return n if replicas == 1 else -(-n // batch_size) * batch_size


def predict(model: Any, x: Any, batch_size: int = 256) -> np.ndarray:
  """`model.predict(x)` that gives every replica of the model's strategy a full batch: `x` is
  padded to whole batches of a multiple of the replicas and the padding's outputs dropped."""
  x = np.asarray(x)
  replicas = replicas_of(model)
  batch = eval_batch(batch_size, replicas)
  n = len(x)
  if n == 0:
    raise ReplicaBatchError("predict: no images; valid: at least one (an empty batch is not "
                            "handed to the model's kernels).")
  total = padded_length(n, batch, replicas)
  if total > n:
    x = np.concatenate([x, np.repeat(x[-1:], total - n, axis=0)])
  return np.asarray(model.predict(x, batch_size=batch, verbose=0))[:n]
