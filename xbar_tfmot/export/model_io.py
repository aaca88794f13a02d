"""Loading Keras models from files or built-in names, in whichever flavour wrote them."""

from __future__ import annotations

import importlib
import inspect
import os
import re
from typing import Any, Mapping

from xbar_tfmot.core.errors import ModelError

# Keras 3 applications built with weights=None: for mapping, counting and speed only.
BUILTINS = {
    "vgg16": "VGG16",
    "vgg19": "VGG19",
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "mobilenet_v2": "MobileNetV2",
}


# How each Keras names a class it cannot find in a saved config.
_UNKNOWN_CLASS = (r"Could not locate (?:class|function) '([\w.]+)'", r"Unknown \w+: '([\w.]+)'",
                  r"Received: layer=([\w.]+) of type <class 'str'>")  # tf_keras Sequential
ERROR_CHARS = 300  # how much of a loader's message (often a whole config) an error quotes


def load_custom_objects(modules: str) -> dict[str, Any]:
  """`{name: class or function}` defined in the comma-separated importable `modules` (for
  the command lines' `--custom-objects`); a module that does not import is a ValueError."""
  out: dict[str, Any] = {}
  for name in [m.strip() for m in modules.split(",") if m.strip()]:
    try:
      module = importlib.import_module(name)
    except ImportError as e:
      raise ModelError(f"custom objects module {name!r} does not import: {e}; valid: a module "
                       f"on the Python path that defines the model's custom layers.") from None
    out.update({k: v for k, v in vars(module).items()
                if (inspect.isclass(v) or inspect.isfunction(v)) and v.__module__ == name})
  return out


def unknown_class(message: str) -> str | None:
  """The class a Keras loading error says it cannot find, if it says so."""
  for pattern in _UNKNOWN_CLASS:
    found = re.search(pattern, message)
    if found:
      return found.group(1)
  return None


def load_model(source: str, custom_objects: Mapping[str, Any] | None = None) -> Any:
  """A model from `builtin:NAME`, a `.keras` or `.h5` file, or a SavedModel folder.

  `custom_objects` (`{name: class}`) are the model's own layers and functions, as for
  `keras.saving.load_model`; a model that needs one not given fails naming the class.

  `.keras` files are tried with Keras 3 first, then tf_keras; `.h5` files and SavedModel
  folders with tf_keras first. The tf_keras loader knows the crossbar pruning wrappers (it
  loads TFMOT, as the tf_keras path does); the Keras 3 wrappers are registered serialisables
  (importing `xbar_tfmot` registers them), so Keras 3 needs no scope.
  """
  if source.startswith("builtin:"):
    name = source.split(":", 1)[1].lower()
    if name not in BUILTINS:
      raise ModelError(f"model {source!r}: unknown built-in; valid: "
                       f"{', '.join('builtin:' + n for n in BUILTINS)}.")
    import keras
    return getattr(keras.applications, BUILTINS[name])(weights=None)
  if not os.path.exists(source):
    raise FileNotFoundError(f"model file {source!r} does not exist; give a .keras or .h5 file, "
                            f"a SavedModel folder, or builtin:NAME.")
  if os.path.isdir(source):
    if not os.path.exists(os.path.join(source, "saved_model.pb")):
      raise ModelError(f"model folder {source!r} holds no saved_model.pb; it is not a SavedModel.")
    loaders = ("tf_keras",)
  elif source.endswith(".keras"):
    loaders = ("keras3", "tf_keras")
  elif source.endswith((".h5", ".hdf5")):
    loaders = ("tf_keras", "keras3")
  else:
    raise ModelError(f"model file {source!r}: unknown format; valid: .keras, .h5, a SavedModel "
                     f"folder, or builtin:NAME.")
  errors, unknown = [], None
  for flavour in loaders:
    try:
      return load_with(flavour, source, custom_objects)
    except Exception as err:  # noqa: BLE001 - each loader's failure is reported below
      unknown = unknown or unknown_class(str(err))
      errors.append(f"{flavour}: {type(err).__name__}: {str(err)[:ERROR_CHARS]}")
  if unknown:
    raise ModelError(
        f"model file {source!r} uses the class {unknown!r}, which is not known here; pass its "
        f"class as custom_objects={{{unknown!r}: ...}} (library) or the module defining it as "
        f"--custom-objects MODULE (command line).")
  raise ModelError(f"model file {source!r} could not be loaded:\n  " + "\n  ".join(errors))


def load_with(flavour: str, source: str, custom_objects: Mapping[str, Any] | None = None,
              compile: bool = False) -> Any:
  """`source` loaded by one flavour's Keras, crossbar wrappers and `custom_objects` known;
  `compile=True` restores the optimizer and its state too (to resume training)."""
  custom_objects = dict(custom_objects or {})
  if flavour == "keras3":
    import keras
    return keras.saving.load_model(source, custom_objects=custom_objects, compile=compile)
  import tf_keras

  from xbar_tfmot.pruning.api import crossbar_pruning_scope
  with crossbar_pruning_scope():
    return tf_keras.models.load_model(source, custom_objects=custom_objects, compile=compile)
