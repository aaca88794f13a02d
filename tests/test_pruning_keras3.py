"""prune_crossbar on Keras 3, what is Keras-3-specific: import hygiene (no TFMOT, no
`TF_USE_LEGACY_KERAS`, `tf.keras` stays Keras 3), registered serialisables, the harmless scope.
The shared behaviour of both flavours is in test_pruning.py.
"""

import os
import subprocess
import sys

import _pruning_models as pm
import keras
import numpy as np
import pytest

import xbar_tfmot as xt
from xbar_tfmot.core import schedules as xschedules


def test_using_xbar_tfmot_on_keras3_leaves_tf_keras_alone():
  """In a fresh process: TFMOT imported by a pytest worker sets TF_USE_LEGACY_KERAS=1."""
  code = (
      "import os, sys\n"
      "import xbar_tfmot as xt\n"
      "import keras, numpy as np\n"
      "m = keras.Sequential([keras.Input((72,)), keras.layers.Dense(16), keras.layers.Dense(3)])\n"
      "p = xt.prune_crossbar(m, spec='36x8', schedule=xt.CrossbarConstant(0.5, frequency=1),\n"
      "                      policy=xt.CrossbarPolicy(leave_dense=()), seed=0)\n"
      "p.compile('sgd', 'mse')\n"
      "p.fit(np.ones((8, 72)), np.ones((8, 3)), verbose=0, callbacks=[xt.UpdateCrossbarPruning()],\n"
      "      batch_size=4)\n"
      "s = xt.strip_crossbar_pruning(p)\n"
      "xt.crossbar_report(s, xt.CrossbarSpec(36, 8))\n"
      "assert 'tensorflow_model_optimization' not in sys.modules, 'TFMOT was imported'\n"
      "assert 'tf_keras' not in sys.modules, 'tf_keras was imported'\n"
      "assert 'TF_USE_LEGACY_KERAS' not in os.environ, 'TF_USE_LEGACY_KERAS was set'\n"
      "import tensorflow as tf\n"
      "assert tf.keras.__name__.startswith('keras'), tf.keras.__name__\n"
      "assert tf.keras.Model is keras.Model, 'tf.keras is not Keras 3'\n"
      "print('ok')\n")
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  run = subprocess.run([sys.executable, "-c", code], env=env, timeout=300, capture_output=True,
                       text=True)
  assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def test_schedules_are_registered_keras3_serialisables():
  for schedule in (xt.CrossbarConstant(0.4, 5, 50, 7),
                   xt.CrossbarPolynomialDecay(0.7, 0, 100, 0.1, 2.0, 10),
                   xt.CrossbarTemperatureDecay(2.0, 0, 100)):
    config = keras.saving.serialize_keras_object(schedule)
    assert config["registered_name"] == f"xbar_tfmot>{type(schedule).__name__}"
    assert keras.saving.deserialize_keras_object(config) == schedule


def test_wrapper_config_round_trip_and_scope_is_harmless(tmp_path):
  pruned = xt.prune_crossbar(pm.cnn(flavour="keras3"), spec=pm.SPEC, granularity="column",
                             schedule=xt.CrossbarPolynomialDecay(0.7, 0, 40, frequency=5), seed=3)
  wrapper = xt.crossbar_wrappers(pruned)[0]
  clone = type(wrapper).from_config(wrapper.get_config())
  assert clone.pruning_schedule == wrapper.pruning_schedule
  assert (clone.spec, clone.granularity, clone.seed, clone.layer_index, clone.final_budget) == (
      wrapper.spec, wrapper.granularity, wrapper.seed, wrapper.layer_index, wrapper.final_budget)
  path = str(tmp_path / "pruned.keras")
  pruned.save(path)
  with xt.crossbar_pruning_scope("keras3"):
    loaded = keras.saving.load_model(path)
  assert [type(l).__name__ for l in loaded.layers].count("CrossbarPrune") == 3
  x = pm.digits(8)[0]
  np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0),
                             rtol=1e-6, atol=1e-6)


def test_keras3_errors_name_the_fix():
  with pytest.raises(ValueError, match="flavour='keras2' is unknown; valid: tf_keras, keras3"):
    xt.crossbar_pruning_scope("keras2")
  with pytest.raises(ValueError, match="flavour='jax'"):
    xt.UpdateCrossbarPruning(flavour="jax")
  dense = keras.layers.DepthwiseConv2D(3)
  with pytest.raises(ValueError, match="cannot be mapped"):
    from xbar_tfmot.pruning.keras3 import CrossbarPrune
    CrossbarPrune(dense, spec=pm.SPEC, final_budget=1)
  assert isinstance(xt.UpdateCrossbarPruning(flavour="keras3"), keras.callbacks.Callback)
  assert isinstance(xt.UpdateCrossbarPruning(flavour="keras3"), xt.UpdateCrossbarPruning)
  assert set(xschedules.SCHEDULES) == {"CrossbarConstant", "CrossbarPolynomialDecay",
                                       "CrossbarTemperatureDecay"}
