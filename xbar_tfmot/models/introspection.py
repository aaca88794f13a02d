"""Keras-flavour-neutral layer introspection: which layers map, and why the others do not.

Works on tf_keras and Keras 3 objects alike by looking at class names along the MRO, so it
never imports TFMOT or either Keras package.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np

from xbar_tfmot.core.errors import ModelError, NotKerasObjectError
from xbar_tfmot.core.geometry import KERNEL_RANK, LayerGeometry
from xbar_tfmot.core.spec import CrossbarSpec

# Known Keras layer classes with weights that are not mapped, and why. Listed before the
# mapped kinds because tf_keras derives DepthwiseConv2D and Conv2DTranspose from Conv2D.
UNMAPPED_REASONS = {
    "DepthwiseConv2D": "depthwise convolution (one filter per channel) is not mapped",
    "SeparableConv1D": "1-D separable convolution is not mapped",
    "Conv2DTranspose": "transposed convolution is not mapped",
    "Conv1DTranspose": "transposed convolution is not mapped",
    "Conv3DTranspose": "transposed convolution is not mapped",
    "Conv3D": "3-D convolution is not mapped",
    "Embedding": "embedding lookups are not a vector-matrix product",
    "BatchNormalization": "normalisation parameters stay digital",
    "LayerNormalization": "normalisation parameters stay digital",
}


# Layers of which one kernel maps and the rest stays digital: `{class name: (attribute of the
# mapped kernel, the kind that kernel maps as, attribute of the digital kernel)}`. A separable
# convolution's pointwise kernel `(1, 1, cin * depth_multiplier, cout)` is an ordinary 1x1
# convolution over the depthwise outputs; its depthwise kernel (one filter per channel) is not
# a vector-matrix product and is computed digitally.
PARTLY_MAPPED = {"SeparableConv2D": ("pointwise_kernel", "Conv2D", "depthwise_kernel")}

FLAVOURS = ("tf_keras", "keras3")


def keras_module(flavour: str):
  """The Keras package of a flavour: `tf_keras`, or Keras 3 (`import keras`). Imported lazily."""
  if flavour == "tf_keras":
    import tf_keras
    return tf_keras
  if flavour == "keras3":
    import keras
    return keras
  raise ModelError(f"flavour={flavour!r} is unknown; valid: {', '.join(FLAVOURS)}.")


def flavour(obj: Any) -> str:
  """`tf_keras` or `keras3`, from the module of the object's class."""
  for cls in type(obj).__mro__:
    root = cls.__module__.split(".")[0]
    if root == "tf_keras":
      return "tf_keras"
    if root == "keras":
      return "keras3"
  raise NotKerasObjectError(f"{type(obj).__name__} is neither a tf_keras nor a Keras 3 object.")


def unwrap(layer: Any) -> Any:
  """The layer inside pruning wrappers (TFMOT's and ours), or the layer itself."""
  while hasattr(layer, "layer") and type(layer).__name__ not in UNMAPPED_REASONS:
    layer = layer.layer
  return layer


def kernel_attribute(layer: Any) -> str:
  """The attribute holding the kernel crossbars hold: `pointwise_kernel` of a separable
  convolution, `kernel` otherwise."""
  for cls in type(layer).__mro__:
    if cls.__name__ in PARTLY_MAPPED:
      return PARTLY_MAPPED[cls.__name__][0]
  return "kernel"


def mapped_kernel(layer: Any) -> Any:
  """The (unwrapped) layer's kernel variable that crossbars hold."""
  return getattr(layer, kernel_attribute(layer))


def mapped_kernels(model: Any, names: Iterable[str], owner: str) -> dict[str, Any]:
  """`{name: mapped kernel variable}` of the named mapped layers, wrapped or not; `owner`
  names the caller in the error a missing or unmapped name raises."""
  names = list(names)
  by_name = {unwrap(l).name: unwrap(l) for l in iter_layers(model) if is_mapped(unwrap(l))}
  missing = [n for n in names if n not in by_name]
  if missing:
    raise ModelError(f"{owner}: no mapped layer {', '.join(map(repr, missing))} in model "
                     f"{model.name!r}; valid: {', '.join(by_name)}.")
  return {n: mapped_kernel(by_name[n]) for n in names}


def mapped_kind(layer: Any) -> str | None:
  """The kind the mapped kernel is tiled as: `Conv2D` for a separable convolution's pointwise
  kernel, else `layer_kind`."""
  kind = layer_kind(layer)
  return PARTLY_MAPPED[kind][1] if kind in PARTLY_MAPPED else kind


def digital_part(layer: Any) -> str | None:
  """For a partly mapped layer (a separable convolution), what stays digital and why; else None."""
  kind = layer_kind(layer)
  if kind not in PARTLY_MAPPED:
    return None
  attribute, mapped_as, digital = PARTLY_MAPPED[kind]

  def named(name: str) -> str:
    variable = getattr(layer, name, None)
    return name if variable is None else f"{name} {'x'.join(str(int(d)) for d in variable.shape)}"

  return (f"{named(digital)} stays digital (one filter per input channel, not a vector-matrix "
          f"product); {named(attribute)} is on crossbars, mapped as a 1x1 {mapped_as}")


def effective_kernel(layer: Any) -> np.ndarray:
  """The mapped kernel a layer computes with: a pruning wrapper's kernel times its mask, if any."""
  inner = unwrap(layer)
  variable = mapped_kernel(inner)
  kernel = np.asarray(variable)
  if layer is inner:
    return kernel
  for triple in getattr(layer, "pruning_vars", ()):  # TFMOT: (weight, mask, threshold)
    if triple[0] is variable or np.shape(triple[1]) == kernel.shape:
      return kernel * np.asarray(triple[1])
  for weight in layer.weights:
    name = weight.name.split("/")[-1].split(":")[0]
    if name.endswith("mask") and tuple(weight.shape) == kernel.shape:
      return kernel * np.asarray(weight)
  return kernel


def layer_kind(layer: Any) -> str | None:
  """`Dense`, `Conv1D`, `Conv2D`, `SeparableConv2D`, the name of a known unmapped class, or None."""
  for cls in type(layer).__mro__:
    if (cls.__name__ in UNMAPPED_REASONS or cls.__name__ in KERNEL_RANK
        or cls.__name__ in PARTLY_MAPPED):
      return cls.__name__
  return None


def unmapped_reason(layer: Any) -> str | None:
  """Why a layer with weights is not mapped, or None if it is mapped (or has no weights)."""
  kind = layer_kind(layer)
  if kind in PARTLY_MAPPED:
    return None
  if kind in KERNEL_RANK:
    if getattr(layer, "groups", 1) != 1:
      return f"grouped convolution (groups={layer.groups}) is not mapped"
    return None
  if not layer.weights:
    return None
  return UNMAPPED_REASONS.get(kind, f"layer type {type(layer).__name__} is not supported")


def is_mapped(layer: Any) -> bool:
  """True for a Conv2D, Conv1D or Dense layer that maps onto crossbars, and for a
  SeparableConv2D, whose pointwise kernel does (`digital_part` says what does not)."""
  kind = layer_kind(layer)
  return (kind in KERNEL_RANK or kind in PARTLY_MAPPED) and unmapped_reason(layer) is None


def geometry_of(layer: Any, spec: CrossbarSpec) -> LayerGeometry:
  """The crossbar tiling of a mapped layer's mapped kernel (ValueError if it cannot be mapped)."""
  if not is_mapped(layer):
    raise ModelError(f"layer {layer.name!r}: {unmapped_reason(layer) or 'has no kernel to map'}.")
  return LayerGeometry(layer.name, mapped_kind(layer), tuple(mapped_kernel(layer).shape), spec)


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
    raise ModelError(f"{owner}: the loss {loss!r} is not one callable; compile the model with "
                     f"a single loss (or pass loss=).")
  return loss
