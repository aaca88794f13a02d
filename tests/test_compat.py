"""Pins every private upstream hook of `xbar_tfmot._compat`; each failure names what moved.

When one of these fails after an upgrade, the message says which package and version moved
the hook; fix `_compat.py` (the only place that touches it) and the pin in setup.py.
"""

import inspect

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot import _compat


def moved(package: str, version: str, what: str) -> str:
  return f"{package} {version} moved {what}; xbar_tfmot._compat was written against the pinned stack"


@pytest.fixture(scope="module")
def tfmot():
  return _compat.tfmot_sparsity()


def test_tfmot_version_and_mask_hook(tfmot):
  import tensorflow_model_optimization as tfmot_pkg
  version = tfmot_pkg.__version__
  assert version == _compat.TFMOT_VERSION, moved("tensorflow-model-optimization", version, "the pin")
  hook = getattr(tfmot.pruning_impl.Pruning, _compat.TFMOT_MASK_HOOK, None)
  assert hook is not None, moved("tensorflow-model-optimization", version, _compat.TFMOT_MASK_HOOK)
  assert list(inspect.signature(hook).parameters) == ["self", "weights"], moved(
      "tensorflow-model-optimization", version, f"the signature of {_compat.TFMOT_MASK_HOOK}")
  assert _compat.TFMOT_MASK_HOOK in inspect.getsource(
      tfmot.pruning_impl.Pruning.conditional_mask_update), moved(
          "tensorflow-model-optimization", version, "the call of the mask hook")


def test_tfmot_pruning_state(tfmot):
  import tensorflow_model_optimization as tfmot_pkg
  step_fn = lambda: tf.constant(0, tf.int64)  # noqa: E731
  schedule = object()
  triple = [(tf.Variable([1.0]), tf.Variable([1.0]), tf.Variable(0.0))]
  pruning = tfmot.pruning_impl.Pruning(training_step_fn=step_fn, pruning_vars=triple,
                                       pruning_schedule=schedule, block_size=(1, 1),
                                       block_pooling_type="AVG")
  state = _compat.tfmot_pruning_state(pruning)
  assert state[0] is step_fn and state[1] is schedule and state[2] is triple, moved(
      "tensorflow-model-optimization", tfmot_pkg.__version__,
      "Pruning._step_fn/_pruning_schedule/_pruning_vars")


def test_override_replaces_the_hook(tfmot):
  class Probe(tfmot.pruning_impl.Pruning):
    pass

  marker = lambda self, weights: ("threshold", "mask")  # noqa: E731
  _compat.override_tfmot_mask_hook(Probe, marker)
  assert getattr(Probe, _compat.TFMOT_MASK_HOOK) is marker


def _version(flavour: str) -> str:
  import importlib.metadata
  return importlib.metadata.version("tf-keras" if flavour == "tf_keras" else "keras")


def _models(keras):
  inputs = keras.Input((4,))
  shared = keras.layers.Dense(4, name="shared")
  outputs = shared(shared(inputs))
  functional = keras.Model(inputs, outputs)

  class Sub(keras.Model):
    def call(self, x):
      return x

  return functional, Sub(), shared, outputs


def test_tf_keras_graph_network(tfmot):
  keras = tfmot.keras
  functional, sub, _, _ = _models(keras)
  version = _version("tf_keras")
  assert _compat.tf_keras_is_graph_network(functional), moved("tf_keras", version,
                                                              "Model._is_graph_network")
  assert not _compat.tf_keras_is_graph_network(sub), moved("tf_keras", version,
                                                           "Model._is_graph_network")


def test_keras3_functional():
  functional, sub, _, _ = _models(keras3)
  assert _compat.keras3_is_functional(functional), moved("keras", keras3.__version__,
                                                         "the Functional class")
  assert not _compat.keras3_is_functional(sub)


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_keras_history_and_inbound_nodes(flavour, request):
  keras = request.getfixturevalue("tfmot").keras if flavour == "tf_keras" else keras3
  _, _, shared, outputs = _models(keras)
  layer, node, index = _compat.keras_history(outputs)
  assert layer is shared and (node, index) == (1, 0), moved(
      flavour, _version(flavour), "KerasTensor._keras_history")
  assert _compat.keras_history(np.zeros(2)) is None
  assert _compat.inbound_node_count(shared) == 2, moved(flavour, _version(flavour),
                                                        "Layer._inbound_nodes")


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_set_layer_attribute_bypasses_tracking(flavour, request):
  keras = request.getfixturevalue("tfmot").keras if flavour == "tf_keras" else keras3
  layer = keras.layers.Dense(2)
  layer.build((None, 3))
  weights = len(layer.weights)
  _compat.set_layer_attribute(layer, "probe", tf.Variable(1.0))
  assert len(layer.weights) == weights, moved(flavour, _version(flavour), "attribute tracking")


def test_export_archive_root():
  archive = keras3.export.ExportArchive()
  root = _compat.export_archive_root(archive)
  assert isinstance(root, tf.Module) or hasattr(root, "_track_trackable"), moved(
      "keras", keras3.__version__, "ExportArchive._tf_trackable")


def test_tflite_flatbuffer_modules():
  schema, flatbuffer_utils = _compat.tflite_flatbuffer_modules()
  for name in ("BufferT", "MetadataT"):
    assert hasattr(schema, name), moved("tensorflow", tf.__version__, f"the TFLite schema {name}")
  for name in ("convert_bytearray_to_object", "convert_object_to_bytearray"):
    assert hasattr(flatbuffer_utils, name), moved("tensorflow", tf.__version__,
                                                  f"flatbuffer_utils.{name}")


def test_random_layers_keep_their_streams_where_restart_reads_them():
  import tf_keras
  layer = keras3.layers.Dropout(0.5)
  generators = getattr(layer, "_seed_generators", None)
  assert generators and hasattr(generators[0], "state"), moved(
      "keras", keras3.__version__, "Layer._seed_generators / SeedGenerator.state")
  old = tf_keras.layers.Dropout(0.5)
  assert getattr(old, "_random_generator", None) is not None, moved(
      "tf-keras", tf_keras.__version__, "BaseRandomLayer._random_generator")
  model = tf_keras.Sequential([tf_keras.Input((2,)), old])
  model.compile("sgd", "mse")
  model.fit(np.zeros((4, 2)), np.zeros((4, 2)), verbose=0)
  assert model.train_function is not None, moved("tf-keras", tf_keras.__version__,
                                                 "Model.train_function (the cached fit step)")
  _compat.restart_random_layers(model, 0)
  assert model.train_function is None
