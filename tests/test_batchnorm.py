"""recalibrate_batchnorm: restores accuracy after the moving statistics were corrupted, on
plain, crossbar-wrapped and stripped models of both Keras flavours."""

import _pruning_models as pm
import numpy as np
import pytest

import xbar_tfmot as xt
from xbar_tfmot.models.batchnorm import batchnorm_layers
from xbar_tfmot.models.introspection import keras_module
from xbar_tfmot.pruning.api import FLAVOURS

X, Y = pm.digits()
TRAIN, TEST = slice(0, 1200), slice(1200, None)


def bn_cnn(flavour):
  keras = keras_module(flavour)
  keras.utils.set_random_seed(0)
  L = keras.layers
  inp = keras.Input((8, 8, 1))
  x = L.Conv2D(16, 3, padding="same", name="conv1")(inp)
  x = L.BatchNormalization(name="bn1")(x)
  x = L.ReLU()(x)
  x = L.Conv2D(32, 3, padding="same", name="conv2")(x)
  x = L.BatchNormalization(name="bn2")(x)
  x = L.ReLU()(x)
  x = L.MaxPooling2D()(x)
  x = L.Flatten()(x)
  out = L.Dense(10, name="fc")(x)
  return keras.Model(inp, out)


def corrupt(model):
  rng = np.random.default_rng(0)
  for layer in batchnorm_layers(model):
    layer.moving_mean.assign(np.asarray(layer.moving_mean)
                             + rng.normal(0, 3, layer.moving_mean.shape).astype("float32"))
    layer.moving_variance.assign(np.asarray(layer.moving_variance) * 50)


def held_out_accuracy(model):
  return pm.accuracy(model, X[TEST], Y[TEST])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_recalibration_restores_accuracy_after_corrupted_statistics(flavour):
  model = pm.compile_model(bn_cnn(flavour))
  model.fit(X[TRAIN], Y[TRAIN], batch_size=64, epochs=2, verbose=0)
  trained = held_out_accuracy(model)
  corrupt(model)
  corrupted = held_out_accuracy(model)
  assert corrupted < 0.3
  momenta = [l.momentum for l in batchnorm_layers(model)]
  assert xt.recalibrate_batchnorm(model, X[TRAIN], steps=10) == 10
  restored = held_out_accuracy(model)
  assert restored > 0.85 and restored >= trained - 0.02, (trained, corrupted, restored)
  assert [l.momentum for l in batchnorm_layers(model)] == momenta
  assert all("call" not in l.__dict__ for l in batchnorm_layers(model))
  # The moving statistics are the average of the batch statistics, whatever they were before.
  first = [np.asarray(l.moving_mean).copy() for l in batchnorm_layers(model)]
  corrupt(model)
  xt.recalibrate_batchnorm(model, (X[TRAIN], Y[TRAIN]), steps=10)
  for before, layer in zip(first, batchnorm_layers(model)):
    np.testing.assert_allclose(np.asarray(layer.moving_mean), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_recalibration_of_wrapped_and_stripped_models(flavour):
  pruned = xt.prune_crossbar(bn_cnn(flavour), spec=pm.SPEC, seed=0,
                             schedule=xt.CrossbarConstant(0.5, frequency=5))
  pm.compile_model(pruned)
  pruned.fit(X[TRAIN], Y[TRAIN], batch_size=64, epochs=2, verbose=0,
             callbacks=[xt.UpdateCrossbarPruning()])
  wrapper = xt.crossbar_wrappers(pruned)[0]
  state = [np.asarray(w).copy() for w in wrapper.weights]
  corrupt(pruned)
  assert held_out_accuracy(pruned) < 0.3
  batches = [(X[i:i + 64], Y[i:i + 64]) for i in range(0, 640, 64)]
  assert xt.recalibrate_batchnorm(pruned, batches) == 10
  assert held_out_accuracy(pruned) > 0.85
  for before, after in zip(state, wrapper.weights):  # mask, step, kernel: untouched
    np.testing.assert_array_equal(before, np.asarray(after))
  stripped = xt.strip_crossbar_pruning(pruned)
  corrupt(stripped)
  assert xt.recalibrate_batchnorm(stripped, X[TRAIN], steps=10) == 10
  assert held_out_accuracy(stripped) > 0.85


def test_no_batchnorm_and_bad_arguments():
  model = pm.cnn(flavour="keras3")
  assert xt.recalibrate_batchnorm(model, X[:64]) == 0
  with pytest.raises(ValueError, match="steps=0 is invalid"):
    xt.recalibrate_batchnorm(bn_cnn("keras3"), X[:64], steps=0)
  with pytest.raises(ValueError, match="no batch"):
    xt.recalibrate_batchnorm(bn_cnn("keras3"), X[:0])
