"""Data and small CNNs in both Keras flavours for the crossbar-pruning tests (sklearn digits)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.models.introspection import keras_module

# tests/test_distillation.py still reads `pm.xlayers` (its owner switches it to
# `pm.introspection`); remove this name then.
xlayers = introspection

# Kin = 4 channels of 3x3 (36 rows) or 36 Dense inputs, Kout = 8: every layer spans several
# crossbars even in a small CNN.
SPEC = CrossbarSpec(rows=36, cols=8)


def digits(limit: int | None = None):
  """sklearn's 8x8 digits as `(x, y)` in [0, 1], NHWC, shuffled once with a fixed seed."""
  from sklearn.datasets import load_digits
  data = load_digits()
  order = np.random.default_rng(0).permutation(len(data.target))[:limit]
  x = (data.images[order] / 16.0).astype("float32")[..., None]
  return x, data.target[order].astype("int64")


def cnn(seed: int = 0, name: str = "digits_cnn", flavour: str = "tf_keras"):
  """Conv-Conv-Pool-Dense-Dense for 8x8x1 inputs, functional."""
  keras = keras_module(flavour)
  keras.utils.set_random_seed(seed)
  L = keras.layers
  inp = keras.Input((8, 8, 1), name="image")
  x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
  x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
  x = L.MaxPooling2D(name="pool")(x)
  x = L.Flatten(name="flatten")(x)
  x = L.Dense(64, activation="relu", name="fc1")(x)
  out = L.Dense(10, name="fc2")(x)
  return keras.Model(inp, out, name=name)


def two_branch(flavour: str = "keras3"):
  """conv1 feeding two parallel convolutions, concatenated, pooled, into one Dense (8x8x1)."""
  keras = keras_module(flavour)
  keras.utils.set_random_seed(0)
  L = keras.layers
  inp = keras.Input((8, 8, 1))
  x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
  a = L.Conv2D(16, 3, padding="same", activation="relu", name="branch_a")(x)
  b = L.Conv2D(16, 3, padding="same", activation="relu", name="branch_b")(x)
  x = L.Flatten()(L.MaxPooling2D()(L.Concatenate()([a, b])))
  return keras.Model(inp, L.Dense(10, name="fc")(x))


def compile_model(model, lr: float = 3e-3):
  keras = keras_module(introspection.flavour(model))
  model.compile(keras.optimizers.Adam(lr),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def accuracy(model, x, y) -> float:
  logits = model.predict(x, batch_size=256, verbose=0)
  return float(np.mean(np.argmax(logits, axis=1) == y))


def mapped_counts(model, spec: CrossbarSpec = SPEC) -> dict:
  """`{name: Counts}` of every mapped layer of a plain (stripped) model."""
  out = {}
  for layer in introspection.iter_layers(model):
    if (introspection.layer_kind(layer) in ("Conv1D", "Conv2D", "Dense")
        and not introspection.unmapped_reason(layer)):
      g = introspection.geometry_of(layer, spec)
      out[layer.name] = g.counts(layer.kernel.numpy())
  return out


def structured(geometry, mask: np.ndarray, granularity: str) -> bool:
  """Whether a 0/1 mask is constant over every column segment (and every block at crossbar grain).

  Judged from the spec and the row order of docs/design.md alone (channel-major rows
  `c * taps + t`, input groups of `Kin` units, `Kout = cols // q`), not from the geometry's own
  unroll and segment functions, which are under test.
  """
  spec, mask = geometry.spec, np.asarray(mask)
  cin, cout = mask.shape[-2:]
  taps = int(np.prod(mask.shape[:-2]))
  matrix = np.moveaxis(mask, -2, 0).reshape(cin * taps, cout)
  q = -(-spec.weight_bits // spec.cell_bits) * (2 if spec.differential else 1)
  if spec.mapping == "direct":
    group_rows, kout = spec.kin * taps, spec.kout
  elif spec.mapping == "flat":
    group_rows, kout = spec.rows, spec.cols // q
  else:  # kernel_aligned: whole channels, as many as fit in the rows
    group_rows, kout = spec.rows // taps * taps, spec.cols // q
  for start in range(0, cin * taps, group_rows):
    group = matrix[start:start + group_rows]
    if not (group == group[0]).all():  # a column segment is cut
      return False
    if granularity == "crossbar":
      for first in range(0, cout, kout):
        block = group[0, first:first + kout]
        if not (block == block[0]).all():  # a crossbar is partly kept
          return False
  return True
