"""The pipeline's loss follows the model (probabilities after a softmax, else logits; a config
field overrides) and its optimizer is a config field, in both Keras flavours."""

import numpy as np
import pytest

from xbar_tfmot.app import pipeline, training
from xbar_tfmot.app.configuration import ConfigError, defaults
from xbar_tfmot.models.introspection import FLAVOURS, keras_module


def heads(k):
  """(model, ends in a softmax?) for the ways a classifier ends."""
  def model(*last):
    return k.Sequential([k.Input((6,)), k.layers.Dense(8, activation="relu"), *last])

  inner = k.Sequential([k.Input((8,)), k.layers.Dense(3, activation="softmax")])
  return [
      (model(k.layers.Dense(3)), False),
      (model(k.layers.Dense(3, activation="softmax")), True),
      (model(k.layers.Dense(3), k.layers.Softmax()), True),
      (model(k.layers.Dense(3), k.layers.Activation("softmax")), True),
      (model(inner), True),
  ]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_loss_is_computed_on_what_the_model_outputs(flavour):
  if flavour == "tf_keras":
    import tensorflow_model_optimization  # noqa: F401  (the tf_keras path as the pipeline has it)
  k = keras_module(flavour)
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(32, 6)).astype(np.float32), rng.integers(0, 3, 32)
  for model, probabilities in heads(k):
    assert training.outputs_probabilities(model) == probabilities, model.layers[-1]
    training.compile_classifier(model, k, 1e-3)
    out = model.predict(x, verbose=0).astype(np.float64)
    if not probabilities:
      out = np.exp(out - out.max(axis=1, keepdims=True))
      out /= out.sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(np.clip(out[np.arange(32), y], 1e-7, 1.0)))
    loss = model.evaluate(x, y, verbose=0)[0]
    assert loss == pytest.approx(expected, rel=1e-4), model.layers[-1]


def test_outputs_field_overrides_the_detection():
  import keras
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
  training.compile_classifier(model, keras, 1e-3, outputs="logits")
  assert model.loss.get_config()["from_logits"] is True
  training.compile_classifier(model, keras, 1e-3, optimizer="sgd")
  assert model.loss.get_config()["from_logits"] is False
  assert type(model.optimizer).__name__ == "SGD" and float(model.optimizer.momentum) == 0.9
  with pytest.raises(ValueError, match="optimizer='lion' is unknown; valid: adam"):
    training.compile_classifier(model, keras, 1e-3, optimizer="lion")


@pytest.mark.parametrize("field, value", [("optimizer", "lion"), ("outputs", "softmax")])
def test_bad_training_fields_name_the_field(tmp_path, field, value):
  config = defaults()
  config.workdir = str(tmp_path)
  config.train[field] = value
  with pytest.raises(ConfigError, match=f"config.train.{field}='{value}'"):
    pipeline.Pipeline(config)
