"""Every private or version-specific upstream API xbar_tfmot relies on, in one place.

Each function names the upstream release it was written against; `tests/test_compat.py` pins
each hook and fails with a message naming the upstream package and version that moved it.
Nothing here is imported at module level: TFMOT (which sets `TF_USE_LEGACY_KERAS=1`) and the
Keras packages load only when a hook is used.
"""

from __future__ import annotations

from typing import Any

TFMOT_VERSION = "0.8.1"
TFMOT_MASK_HOOK = "_maybe_update_block_mask"  # Pruning's mask update, called inside tf.cond


def tfmot_sparsity():
  """TFMOT 0.8.1's sparsity modules and its Keras (`tf_keras`), as one namespace.

  Raises ImportError naming the pinned version when TFMOT differs or its mask hook moved.
  """
  import types

  import tensorflow_model_optimization as tfmot
  from tensorflow_model_optimization.python.core.keras.compat import keras
  from tensorflow_model_optimization.python.core.sparsity.keras import (pruning_callbacks,
                                                                        pruning_impl,
                                                                        pruning_schedule,
                                                                        pruning_wrapper)

  if tfmot.__version__ != TFMOT_VERSION or not callable(
      getattr(pruning_impl.Pruning, TFMOT_MASK_HOOK, None)):
    raise ImportError(
        f"xbar_tfmot's tf_keras path overrides the private Pruning.{TFMOT_MASK_HOOK} of "
        f"tensorflow-model-optimization {TFMOT_VERSION}; found {tfmot.__version__}. Install "
        f"tensorflow-model-optimization=={TFMOT_VERSION}.")
  return types.SimpleNamespace(
      keras=keras, pruning_callbacks=pruning_callbacks, pruning_impl=pruning_impl,
      pruning_schedule=pruning_schedule, pruning_wrapper=pruning_wrapper)


def override_tfmot_mask_hook(cls: type, method) -> None:
  """Makes `method(self, weights) -> (threshold, mask)` the mask update of a TFMOT `Pruning`."""
  setattr(cls, TFMOT_MASK_HOOK, method)


def tfmot_pruning_state(pruning: Any) -> tuple[Any, Any, list]:
  """`(step function, schedule, [(weight, mask, threshold)])` of a TFMOT 0.8.1 `Pruning`."""
  return pruning._step_fn, pruning._pruning_schedule, pruning._pruning_vars


def tf_keras_is_graph_network(model: Any) -> bool:
  """tf_keras 2.21: True for functional models (`Model._is_graph_network`)."""
  return bool(model._is_graph_network)


def keras3_is_functional(model: Any) -> bool:
  """Keras 3: a `Functional` model (subclasses included); the class lives in `keras.src`."""
  return any(c.__name__ == "Functional" and c.__module__.startswith("keras.")
             for c in type(model).__mro__)


def restart_random_layers(model: Any, seed: int) -> None:
  """Restarts the random streams of `model`'s layers (dropout, noise) from `seed`, so that a
  `fit` after a save and reload draws what an uninterrupted run draws.

  Keras 3.15: each layer's `SeedGenerator`s (private `_seed_generators`) restart at
  `[a seed from (seed, layer, generator), 0]`. tf_keras 2.21: a random layer's ops
  ("legacy_stateful", the default) live in the traced train function and keep their state
  across `fit` calls, so the function is dropped (`fit` rebuilds it, its ops seeded from the
  global seed `set_random_seed` just set); a "stateful" layer's generator is reset.
  """
  import numpy as np

  def start(*key: int) -> int:
    return int(np.random.SeedSequence([seed, *key]).generate_state(1)[0])

  rebuild = False
  for i, layer in enumerate(model._flatten_layers()):
    for k, generator in enumerate(getattr(layer, "_seed_generators", None) or ()):
      generator.state.assign(np.array([start(i, k), 0], generator.state.dtype))
    random = getattr(layer, "_random_generator", None)
    if random is not None:
      rebuild = True
      if getattr(random, "_generator", None) is not None:
        random._generator.reset_from_seed(start(i))
  if rebuild and hasattr(model, "train_function"):
    model.train_function = None


def set_layer_attribute(layer: Any, name: str, value: Any) -> None:
  """Sets a layer attribute past Keras's tracking `__setattr__` (for a temporary kernel swap)."""
  object.__setattr__(layer, name, value)


def keras_history(tensor: Any) -> tuple[Any, int, int] | None:
  """`(layer, node index, tensor index)` that produced a symbolic Keras tensor (both flavours)."""
  history = getattr(tensor, "_keras_history", None)
  if history is None:
    return None
  layer, node, index = history[:3]
  return layer, int(node), int(index)


def inbound_node_count(layer: Any) -> int:
  """How many times a layer was called in building the graph (both flavours)."""
  return len(getattr(layer, "_inbound_nodes", [None]))


def export_archive_root(archive: Any) -> Any:
  """Keras 3's `ExportArchive` saved root (`_tf_trackable`), where an Asset must hang."""
  root = getattr(archive, "_tf_trackable", None)
  if root is None:
    raise RuntimeError("keras.export.ExportArchive has no _tf_trackable root in this Keras "
                       "version (written against Keras 3.15); the mapping asset cannot be "
                       "attached.")
  return root


def tflite_flatbuffer_modules():
  """TensorFlow 2.21's TFLite schema classes and flatbuffer helpers (not public API)."""
  from tensorflow.lite.python import schema_py_generated
  from tensorflow.lite.tools import flatbuffer_utils
  return schema_py_generated, flatbuffer_utils
