"""Keras-flavour-neutral layer introspection: which layers map, and why the others do not.

Works on tf_keras and Keras 3 objects alike by looking at class names along the MRO, so it
never imports TFMOT or either Keras package.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from xbar_tfmot.core.geometry import KERNEL_RANK, LayerGeometry
from xbar_tfmot.core.spec import CrossbarSpec

# Known Keras layer classes with weights that are not mapped, and why. Listed before the
# mapped kinds because tf_keras derives DepthwiseConv2D and Conv2DTranspose from Conv2D.
UNMAPPED_REASONS = {
    "DepthwiseConv2D": "depthwise convolution (one filter per channel) is not mapped",
    "SeparableConv2D": "separable convolution is not mapped",
    "SeparableConv1D": "separable convolution is not mapped",
    "Conv2DTranspose": "transposed convolution is not mapped",
    "Conv1DTranspose": "transposed convolution is not mapped",
    "Conv3DTranspose": "transposed convolution is not mapped",
    "Conv3D": "3-D convolution is not mapped",
    "Embedding": "embedding lookups are not a vector-matrix product",
    "BatchNormalization": "normalisation parameters stay digital",
    "LayerNormalization": "normalisation parameters stay digital",
}


FLAVOURS = ("tf_keras", "keras3")


def keras_module(flavour: str):
  """The Keras package of a flavour: `tf_keras`, or Keras 3 (`import keras`). Imported lazily."""
  if flavour == "tf_keras":
    import tf_keras
    return tf_keras
  if flavour == "keras3":
    import keras
    return keras
  raise ValueError(f"flavour={flavour!r} is unknown; valid: {', '.join(FLAVOURS)}.")


def flavour(obj: Any) -> str:
  """`tf_keras` or `keras3`, from the module of the object's class."""
  for cls in type(obj).__mro__:
    root = cls.__module__.split(".")[0]
    if root == "tf_keras":
      return "tf_keras"
    if root == "keras":
      return "keras3"
  raise TypeError(f"{type(obj).__name__} is neither a tf_keras nor a Keras 3 object.")


def unwrap(layer: Any) -> Any:
  """The layer inside pruning wrappers (TFMOT's and ours), or the layer itself."""
  while hasattr(layer, "layer") and type(layer).__name__ not in UNMAPPED_REASONS:
    layer = layer.layer
  return layer


def effective_kernel(layer: Any) -> np.ndarray:
  """The kernel a layer computes with: a pruning wrapper's kernel times its mask, if any."""
  inner = unwrap(layer)
  kernel = np.asarray(inner.kernel)
  if layer is inner:
    return kernel
  for triple in getattr(layer, "pruning_vars", ()):  # TFMOT: (weight, mask, threshold)
    if triple[0] is inner.kernel or np.shape(triple[1]) == kernel.shape:
      return kernel * np.asarray(triple[1])
  for weight in layer.weights:
    name = weight.name.split("/")[-1].split(":")[0]
    if name.endswith("mask") and tuple(weight.shape) == kernel.shape:
      return kernel * np.asarray(weight)
  return kernel


def layer_kind(layer: Any) -> str | None:
  """`Dense`, `Conv1D`, `Conv2D`, the name of a known unmapped class, or None."""
  for cls in type(layer).__mro__:
    if cls.__name__ in UNMAPPED_REASONS or cls.__name__ in KERNEL_RANK:
      return cls.__name__
  return None


def unmapped_reason(layer: Any) -> str | None:
  """Why a layer with weights is not mapped, or None if it is mapped (or has no weights)."""
  kind = layer_kind(layer)
  if kind in KERNEL_RANK:
    if getattr(layer, "groups", 1) != 1:
      return f"grouped convolution (groups={layer.groups}) is not mapped"
    return None
  if not layer.weights:
    return None
  return UNMAPPED_REASONS.get(kind, f"layer type {type(layer).__name__} is not supported")


def is_mapped(layer: Any) -> bool:
  """True for a Conv2D, Conv1D or Dense layer that maps onto crossbars."""
  return layer_kind(layer) in KERNEL_RANK and unmapped_reason(layer) is None


def geometry_of(layer: Any, spec: CrossbarSpec) -> LayerGeometry:
  """The crossbar tiling of a mapped layer (raises ValueError if it cannot be mapped)."""
  if not is_mapped(layer):
    raise ValueError(f"layer {layer.name!r}: {unmapped_reason(layer) or 'has no kernel to map'}.")
  return LayerGeometry(layer.name, layer_kind(layer), tuple(layer.kernel.shape), spec)


def iter_layers(model: Any) -> Iterator[Any]:
  """Every leaf layer of a model, nested models flattened, in model order."""
  for layer in getattr(model, "layers", [model]):
    inner = unwrap(layer)
    if hasattr(inner, "layers") and inner is not model:
      yield from iter_layers(inner)
    else:
      yield layer


def compiled_loss(model: Any, owner: str, loss: Any = None) -> Any:
  """`loss`, or the one loss `model` was compiled with, as a callable `(y, y_pred)`."""
  loss = getattr(model, "loss", None) if loss is None else loss
  if isinstance(loss, str):
    loss = keras_module(flavour(model)).losses.get(loss)
  if not callable(loss):
    raise ValueError(f"{owner}: the loss {loss!r} is not one callable; compile the model with "
                     f"a single loss (or pass loss=).")
  return loss
