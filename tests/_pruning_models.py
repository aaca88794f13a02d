"""Data and small CNNs in both Keras flavours for the crossbar-pruning tests (sklearn digits)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from xbar_tfmot.models import introspection as xlayers
from xbar_tfmot.models.introspection import keras_module
from xbar_tfmot.core.spec import CrossbarSpec

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


def compile_model(model, lr: float = 3e-3):
  keras = keras_module(xlayers.flavour(model))
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
  for layer in xlayers.iter_layers(model):
    if xlayers.layer_kind(layer) in ("Conv1D", "Conv2D", "Dense") and not xlayers.unmapped_reason(layer):
      g = xlayers.geometry_of(layer, spec)
      out[layer.name] = g.counts(layer.kernel.numpy())
  return out


def structured(geometry, mask: np.ndarray, granularity: str) -> bool:
  """Whether a 0/1 mask is constant over every column segment (and every block at crossbar grain)."""
  seg = geometry.nonzero_segments(mask)
  rebuilt = np.asarray(geometry.segment_to_kernel_mask(tf.constant(seg.astype("float32"))))
  if not np.array_equal(rebuilt, mask):
    return False
  if granularity == "crossbar":
    blocks = np.zeros((geometry.g_in, geometry.g_out * geometry.kout), bool)
    blocks[:, : geometry.cout] = seg
    blocks = blocks.reshape(geometry.g_in, geometry.g_out, geometry.kout)
    whole = blocks.all(axis=2) | ~blocks.any(axis=2)
    # The last output group may be partial: judge it on its real columns only.
    last = seg[:, (geometry.g_out - 1) * geometry.kout:]
    whole[:, -1] = last.all(axis=1) | ~last.any(axis=1)
    return bool(whole.all())
  return True
