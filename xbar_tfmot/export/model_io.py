"""Loading Keras models from files or built-in names, in whichever flavour wrote them."""

from __future__ import annotations

import os
from typing import Any

# Keras 3 applications built with weights=None: for mapping, counting and speed only.
BUILTINS = {
    "vgg16": "VGG16",
    "vgg19": "VGG19",
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "mobilenet_v2": "MobileNetV2",
}


def load_model(source: str) -> Any:
  """A model from `builtin:NAME`, a `.keras` or `.h5` file, or a SavedModel folder.

  `.keras` files are tried with Keras 3 first, then tf_keras; `.h5` files and SavedModel
  folders with tf_keras first. The tf_keras loader knows the crossbar pruning wrappers (it
  loads TFMOT, as the tf_keras path does); the Keras 3 wrappers are registered serialisables
  (importing `xbar_tfmot` registers them), so Keras 3 needs no scope.
  """
  if source.startswith("builtin:"):
    name = source.split(":", 1)[1].lower()
    if name not in BUILTINS:
      raise ValueError(f"model {source!r}: unknown built-in; valid: "
                       f"{', '.join('builtin:' + n for n in BUILTINS)}.")
    import keras
    return getattr(keras.applications, BUILTINS[name])(weights=None)
  if not os.path.exists(source):
    raise FileNotFoundError(f"model file {source!r} does not exist; give a .keras or .h5 file, "
                            f"a SavedModel folder, or builtin:NAME.")
  if os.path.isdir(source):
    if not os.path.exists(os.path.join(source, "saved_model.pb")):
      raise ValueError(f"model folder {source!r} holds no saved_model.pb; it is not a SavedModel.")
    loaders = ("tf_keras",)
  elif source.endswith(".keras"):
    loaders = ("keras3", "tf_keras")
  elif source.endswith((".h5", ".hdf5")):
    loaders = ("tf_keras", "keras3")
  else:
    raise ValueError(f"model file {source!r}: unknown format; valid: .keras, .h5, a SavedModel "
                     f"folder, or builtin:NAME.")
  errors = []
  for flavour in loaders:
    try:
      return _load_with(flavour, source)
    except Exception as err:  # noqa: BLE001 - each loader's failure is reported below
      errors.append(f"{flavour}: {type(err).__name__}: {err}")
  raise ValueError(f"model file {source!r} could not be loaded:\n  " + "\n  ".join(errors))


def _load_with(flavour: str, source: str) -> Any:
  if flavour == "keras3":
    import keras
    return keras.saving.load_model(source, compile=False)
  import tf_keras
  from xbar_tfmot.pruning.api import crossbar_pruning_scope
  with crossbar_pruning_scope():
    return tf_keras.models.load_model(source, compile=False)
