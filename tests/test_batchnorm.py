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


def twin_branches(flavour):
  """Two BatchNormalization layers of the same width on parallel branches: each one's input is
  its own convolution of the image, so its statistics can be computed without the library."""
  keras = keras_module(flavour)
  keras.utils.set_random_seed(1)
  L = keras.layers
  inp = keras.Input((8, 8, 1))
  a = L.BatchNormalization(name="bn_a")(L.Conv2D(6, 3, name="conv_a")(inp))
  b = L.BatchNormalization(name="bn_b")(L.Conv2D(6, 3, name="conv_b")(inp))
  out = L.Dense(10, name="fc")(L.Flatten()(L.Concatenate()([a, b])))
  return keras.Model(inp, out)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_each_layer_gets_the_average_of_its_own_batch_means(flavour):
  """After `n` batches every BN layer's moving mean is the plain average of the `n` batch means
  of *its* input, whatever it held before. Same widths on purpose: a layer updated with another
  layer's call or inputs then gives wrong numbers instead of a shape error."""
  keras = keras_module(flavour)
  model = twin_branches(flavour)
  corrupt(model)
  x = X[:256]
  probe = keras.Model(model.inputs, [model.get_layer("conv_a").output,
                                     model.get_layer("conv_b").output])
  expected = [np.mean([np.asarray(o).mean(axis=(0, 1, 2)) for o in
                       (probe(x[i:i + 64])[k] for i in range(0, 256, 64))], axis=0)
              for k in range(2)]
  assert not np.allclose(expected[0], expected[1], atol=1e-3)  # the branches differ
  assert xt.recalibrate_batchnorm(model, x, steps=4, batch_size=64) == 4
  for name, mean in zip(("bn_a", "bn_b"), expected):
    np.testing.assert_allclose(np.asarray(model.get_layer(name).moving_mean), mean,
                               rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_frozen_layers_are_left_alone_and_list_batches_are_read(flavour):
  model = twin_branches(flavour)
  model.get_layer("bn_b").trainable = False  # Keras runs a frozen BN in inference mode
  frozen = np.asarray(model.get_layer("bn_b").moving_mean).copy()
  batches = [[X[i:i + 32], Y[i:i + 32]] for i in range(0, 96, 32)]  # lists, not tuples
  assert xt.recalibrate_batchnorm(model, batches) == 3
  np.testing.assert_array_equal(np.asarray(model.get_layer("bn_b").moving_mean), frozen)
  conv = keras_module(flavour).Model(model.inputs, model.get_layer("conv_a").output)
  expected = np.mean([np.asarray(conv(x)).mean(axis=(0, 1, 2)) for x, _ in batches], axis=0)
  np.testing.assert_allclose(np.asarray(model.get_layer("bn_a").moving_mean), expected,
                             rtol=1e-4, atol=1e-5)
