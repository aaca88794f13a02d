"""The tf.data input of training (`datasets.input_pipeline`) and `training.fit_epochs` on it:
seeded permutations checked against the indices themselves, and a checkpointed, resumed
training that ends with the weights of a straight one."""

import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot.app import datasets, training
from xbar_tfmot.models.introspection import FLAVOURS, keras_module


def _order(dataset) -> list[int]:
  return [int(v) for _, y in dataset for v in y.numpy()]


def test_one_epoch_is_a_seeded_permutation_in_batches():
  n, batch = 103, 16
  x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  y = np.arange(n, dtype=np.int64)
  dataset = datasets.input_pipeline(x, y, batch, seed=7)
  sizes = [len(b[1]) for b in dataset]
  assert sizes == [batch] * (n // batch) + [n % batch]
  order = _order(dataset)
  assert sorted(order) == list(range(n)) and order != list(range(n))
  for images, labels in dataset:  # every image travels with its own label
    np.testing.assert_array_equal(images.numpy()[:, 0], labels.numpy().astype(np.float32))
  assert _order(dataset) == order  # the same order every time it is read
  assert _order(datasets.input_pipeline(x, y, batch, seed=7)) == order
  assert _order(datasets.input_pipeline(x, y, batch, seed=8)) != order
  assert _order(datasets.input_pipeline(x, y, batch)) == list(range(n))  # no seed: kept


def test_reshuffling_draws_a_new_permutation_every_epoch():
  y = np.arange(50, dtype=np.int64)
  dataset = datasets.input_pipeline(y[:, None].astype(np.float32), y, 8, seed=3,
                                    reshuffle_each_iteration=True)
  first, second = _order(dataset), _order(dataset)
  assert sorted(first) == sorted(second) == list(range(50)) and first != second
  again = datasets.input_pipeline(y[:, None].astype(np.float32), y, 8, seed=3,
                                  reshuffle_each_iteration=True)
  assert [_order(again), _order(again)] == [first, second]


def test_sharding_splits_by_data_and_bad_arguments_say_what_is_valid():
  x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
  options = datasets.input_pipeline(x, y, 2, seed=0).options()
  assert options.experimental_distribute.auto_shard_policy == \
      tf.data.experimental.AutoShardPolicy.DATA
  with pytest.raises(ValueError, match="4 images but 3 labels"):
    datasets.input_pipeline(x, y[:3], 2)
  with pytest.raises(ValueError, match="batch_size=0; valid: an int >= 1"):
    datasets.input_pipeline(x, y, 0)


def _model(keras):
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
  training.compile_classifier(model, keras, 1e-2)
  return model


@pytest.mark.parametrize("data", ["tf_data", "numpy"])
def test_fit_epochs_resumed_ends_with_the_straight_weights(data, tmp_path):
  import tf_keras as keras
  (x, y), _ = datasets.load_digits()
  x, y = x[:300], y[:300]
  load = lambda path: keras.models.load_model(path)  # noqa: E731

  def fit(folder, epochs):
    return training.fit_epochs(_model(keras) if not (folder / "progress.json").exists() else None,
                               x, y, keras, epochs=epochs, batch_size=32, seed=5, phase=2,
                               run_folder=training.RunFolder(folder, load),
                               learning_rate=lambda e: 1e-2 / (e + 1), input=data)

  straight, history = fit(tmp_path / "straight", 3)
  assert len(history["loss"]) == 3 and history["loss"][-1] < history["loss"][0]
  fit(tmp_path / "resumed", 1)  # stopped after one epoch, then resumed to three
  resumed, resumed_history = fit(tmp_path / "resumed", 3)
  assert resumed_history["loss"] == pytest.approx(history["loss"], rel=1e-6)
  for a, b in zip(resumed.get_weights(), straight.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_reloaded_model_draws_the_same_dropout(flavour, tmp_path):
  """Dropout's random stream restarts at every seeded fit: saved and reloaded between two
  fits, a model ends with the weights of one trained straight through."""
  keras = keras_module(flavour)
  (x, y), _ = datasets.load_digits()
  x, y = x[:256].reshape(256, -1), y[:256]

  def model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dropout(0.5), keras.layers.Dense(10)])
    training.compile_classifier(m, keras, 1e-2)
    return m

  straight = model()
  for seed in (1, 2):
    training.fit_seeded(straight, x, y, keras, 1, 32, seed)
  first = model()
  training.fit_seeded(first, x, y, keras, 1, 32, 1)
  first.save(tmp_path / "after_one.keras")
  keras.utils.set_random_seed(99)  # whatever ran in between
  resumed = keras.models.load_model(tmp_path / "after_one.keras")
  training.fit_seeded(resumed, x, y, keras, 1, 32, 2)
  for a, b in zip(resumed.get_weights(), straight.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_unknown_input_names_the_choices():
  import tf_keras as keras
  with pytest.raises(ValueError, match="input='arrays' is unknown; valid: tf_data, numpy"):
    training.fit_seeded(None, None, None, keras, 1, 8, 0, input="arrays")
