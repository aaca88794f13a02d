"""Building a crossbar mapping from a Keras model, and checking a mapping against one.

Either flavour, wrapped or stripped: a wrapped layer is read as its kernel times its mask
(`introspection.effective_kernel`), so the mapping always describes the zeros the model
computes with. A SeparableConv2D is mapped by its pointwise kernel, as a 1x1 `Conv2D` entry
under the layer's name, and also listed in `unmapped` for its depthwise kernel, which stays
digital. The document itself is `xbar_tfmot.core.mapping`.
"""

from __future__ import annotations

from typing import Any, Mapping

from xbar_tfmot.core import packing
from xbar_tfmot.core.errors import ModelError
from xbar_tfmot.core.mapping import CrossbarMapping, document, layer_entry
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection


def mapped_layers(model: Any) -> list[tuple[Any, Any]]:
  """`(layer as in the model, unwrapped layer)` for every mapped leaf layer, in model order."""
  out = []
  for layer in introspection.iter_layers(model):
    inner = introspection.unwrap(layer)
    if introspection.is_mapped(inner):
      out.append((layer, inner))
  return out


def unmapped_layers(model: Any) -> list[dict[str, str]]:
  """`{name, type, reason}` of every leaf layer with weights that crossbars do not hold, or
  hold only in part (the reason then says which part stays digital)."""
  out = []
  for layer in introspection.iter_layers(model):
    inner = introspection.unwrap(layer)
    reason = introspection.unmapped_reason(inner) or introspection.digital_part(inner)
    if reason:
      out.append({"name": inner.name, "type": type(inner).__name__, "reason": reason})
  return out


def jsonable_shape(shape: Any) -> Any:
  """A Keras input shape as the mapping's `model.input_shape` holds it: nested lists of
  ints, None for an unknown dimension (public for tools/bench_mapping.py, which builds the
  document of another commit's mapping module from the same info)."""
  if isinstance(shape, (list, tuple)):
    return [jsonable_shape(s) for s in shape]
  return None if shape is None else int(shape)


def build_mapping(model: Any, spec: CrossbarSpec, granularity: str = "column",
                  permutations: Mapping[str, Any] | None = None) -> CrossbarMapping:
  """The crossbar mapping of a (pruned) model.

  Args:
    model: a tf_keras or Keras 3 model; pruning wrappers are read through their masks.
    spec: the crossbar.
    granularity: `crossbar` (one crossbar per non-zero block) or `column` (packed columns).
    permutations: `{layer name: input permutation}` recorded for the mapping only, e.g.
      `ReorderResult.permutations` of a mapping-only reorder; identity for absent layers.
  """
  permutations = dict(permutations or {})
  names = [inner.name for _, inner in mapped_layers(model)]
  unknown = sorted(set(permutations) - set(names))
  if unknown:
    raise ModelError(f"permutations given for {unknown}, which are not mapped layers of model "
                     f"{model.name!r}; mapped layers: {names}.")
  entries = []
  for layer, inner in mapped_layers(model):
    kernel = introspection.effective_kernel(layer)
    geometry = introspection.geometry_of(inner, spec)
    pack = packing.pack_layer(geometry, kernel, granularity, permutations.get(inner.name))
    entries.append(layer_entry(pack, kernel))
  info = {"name": model.name, "input_shape": jsonable_shape(model.input_shape)}
  return document(spec, granularity, info, entries, unmapped_layers(model))


def validate_mapping(mapping: CrossbarMapping, model: Any) -> None:
  """Raises MappingError (first bad path) unless `mapping` fits `model`'s mapped layers."""
  kernels = {inner.name: (introspection.mapped_kind(inner), introspection.effective_kernel(outer))
             for outer, inner in mapped_layers(model)}
  mapping.check_kernels(kernels, model.name)
