"""Small VGG- and ResNet-style models in both Keras flavours, and a pruning helper, for tests."""

from __future__ import annotations

import numpy as np

from xbar_tfmot.core.projection import crossbar_budget, project
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.models.introspection import (FLAVOURS,  # noqa: F401  (used by the tests)
                                             keras_module)


def vgg(flavour: str, seed: int = 0):
  """Conv-BN-ReLU stacks, pooling, Flatten into two Dense layers."""
  K = keras_module(flavour)
  K.utils.set_random_seed(seed)
  L = K.layers
  inp = L.Input((12, 12, 3), name="image")
  x = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
  x = L.BatchNormalization(name="bn1")(x)
  x = L.ReLU(name="relu1")(x)
  x = L.Conv2D(12, 3, padding="same", use_bias=False, name="conv2")(x)
  x = L.BatchNormalization(name="bn2")(x)
  x = L.Activation("relu", name="relu2")(x)
  x = L.MaxPooling2D(2, name="pool1")(x)
  x = L.Conv2D(16, 3, strides=2, padding="valid", activation="relu", name="conv3")(x)
  x = L.Dropout(0.2, name="drop")(x)
  x = L.Flatten(name="flatten")(x)
  x = L.Dense(20, activation="relu", name="fc1")(x)
  out = L.Dense(5, name="fc2")(x)
  return _randomize(K.Model(inp, out, name="vgg_small"), seed)


def resnet(flavour: str, seed: int = 0):
  """Residual blocks with Add shortcuts and BatchNorm, a Concatenate branch, GAP into Dense."""
  K = keras_module(flavour)
  K.utils.set_random_seed(seed)
  L = K.layers
  inp = L.Input((10, 10, 4), name="image")
  x = L.Conv2D(8, 3, padding="same", name="stem")(inp)
  x = L.BatchNormalization(name="stem_bn")(x)
  x = L.ReLU(name="stem_relu")(x)
  y = L.Conv2D(8, 3, padding="same", use_bias=False, name="b1_conv1")(x)
  y = L.BatchNormalization(name="b1_bn1")(y)
  y = L.ReLU(name="b1_relu")(y)
  y = L.Conv2D(8, 3, padding="same", dilation_rate=2, name="b1_conv2")(y)
  y = L.BatchNormalization(name="b1_bn2")(y)
  x = L.Add(name="b1_add")([x, y])
  x = L.ReLU(name="b1_out")(x)
  a = L.Conv2D(6, 1, name="br_a")(x)
  b = L.Conv2D(5, 3, padding="same", name="br_b")(x)
  b = L.ZeroPadding2D(1, name="br_pad")(b)
  b = L.Cropping2D(1, name="br_crop")(b)
  x = L.Concatenate(name="concat")([a, x, b])
  x = L.BatchNormalization(name="concat_bn")(x)
  s = L.Conv2D(12, 1, strides=2, name="b2_short")(x)
  y = L.Conv2D(12, 3, strides=2, padding="same", name="b2_conv1")(x)
  y = L.ReLU(name="b2_relu")(y)
  y = L.Conv2D(12, 3, padding="same", name="b2_conv2")(y)
  x = L.Add(name="b2_add")([s, y])
  x = L.AveragePooling2D(1, name="b2_pool")(x)
  x = L.GlobalAveragePooling2D(name="gap")(x)
  x = L.Dense(9, activation="relu", name="fc1")(x)
  out = L.Dense(3, name="fc2")(x)
  return _randomize(K.Model(inp, out, name="resnet_small"), seed)


def conv1d(flavour: str, seed: int = 0):
  """Conv1D with causal and same padding, Sequential."""
  K = keras_module(flavour)
  K.utils.set_random_seed(seed)
  L = K.layers
  model = K.Sequential([
      L.Input((16, 5)),
      L.Conv1D(7, 3, padding="causal", dilation_rate=2, name="c1"),
      L.Conv1D(6, 3, strides=2, padding="same", activation="tanh", name="c2"),
      L.GlobalMaxPooling1D(name="gmp"),
      L.Dense(4, name="fc"),
  ], name="seq1d")
  return _randomize(model, seed)


BUILDERS = {"vgg": vgg, "resnet": resnet, "conv1d": conv1d}


def _randomize(model, seed: int):
  """Non-trivial BatchNorm statistics and biases, so permutation mistakes show."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    weights = layer.get_weights()
    if not weights:
      continue
    kind = type(layer).__name__
    if kind == "BatchNormalization":
      gamma, beta, mean, var = weights
      layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.3, beta.shape),
                         rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    else:
      layer.set_weights([w if w.ndim > 1 else rng.normal(0, 0.2, w.shape) for w in weights])
  return model


def prune(model, spec: CrossbarSpec, reduction: float, granularity: str, permutations=None):
  """Zeroes every mapped kernel outside its exact projection (in place); returns the model."""
  import tensorflow as tf
  permutations = permutations or {}
  for layer in model.layers:
    if introspection.layer_kind(layer) not in ("Dense", "Conv1D", "Conv2D"):
      continue
    geometry = introspection.geometry_of(layer, spec)
    kernel = np.asarray(layer.kernel)
    perm = permutations.get(layer.name, np.arange(geometry.cin))
    permuted = np.take(kernel, perm, axis=-2)
    budget = crossbar_budget(geometry.dense_crossbars, reduction)
    mask = np.asarray(project(geometry, tf.constant(permuted), budget, granularity))
    unpermuted = np.take(mask, np.argsort(perm), axis=-2)  # argsort inverts a permutation
    layer.kernel.assign(kernel * unpermuted)
  return model


def random_inputs(model, n: int = 3, seed: int = 1) -> np.ndarray:
  shape = tuple(model.input_shape[1:])
  return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def max_rel_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
