"""Channel-space analysis of Sequential and functional Keras graphs (docs/design.md, "Input feature-map reorder").

A *channel space* is a set of channels that must be permuted together for the network function
to stay the same: the output channels of the mapped layers that produce it (tied by Add,
Multiply, ... into one space), carried through channel-wise layers (BatchNormalization,
activations, pooling, padding, dropout), sliced into Concatenate, strided by Flatten into a
Dense, and read by the input channels of the mapped layers that consume it.

A space cannot be permuted in the graph ("pinned", with the reasons) when the model input or a
layer that is not channel-wise produces it, when it reaches a model output, or when a layer
that is not understood here reads it. Such layers are reported in `ChannelGraph.unsupported`,
never guessed. Both Keras flavours are read through their Keras tensors' history
(`xbar_tfmot._compat.keras_history`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from xbar_tfmot import _compat
from xbar_tfmot.core.geometry import KERNEL_RANK
from xbar_tfmot.models import introspection

# Layers that keep every channel where it is and have no per-channel parameters.
PASSTHROUGH = frozenset({
    "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Softmax", "Identity",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization", "MaxPooling1D", "MaxPooling2D",
    "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D",
    "Cropping2D", "UpSampling1D", "UpSampling2D",
})
# Channel-wise layers whose 1-D weights (one entry per channel) move with the channels.
CARRIERS = frozenset({"BatchNormalization", "LayerNormalization"})
# Element-wise merges: their inputs' channels are tied one to one.
TIED_MERGES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})
GLOBAL_POOLS = frozenset({"GlobalAveragePooling1D", "GlobalAveragePooling2D",
                          "GlobalMaxPooling1D", "GlobalMaxPooling2D"})


@dataclasses.dataclass(frozen=True)
class Layout:
  """The channel axis of a tensor: whole spaces side by side (Concatenate), repeated
  `positions` times with stride `size` after a Flatten (`positions == 1` otherwise)."""

  segments: tuple[tuple[int, int], ...]  # (space id, channels)
  positions: int = 1
  flattened: bool = False

  @property
  def size(self) -> int:
    return sum(n for _, n in self.segments)

  @property
  def length(self) -> int:
    """Entries of the axis: `positions * size`."""
    return self.positions * self.size

  def offsets(self, space: int) -> list[int]:
    """Where `space` starts in the channel axis (several places if concatenated twice)."""
    starts = np.cumsum([0] + [n for _, n in self.segments])[:-1]
    return [int(s) for s, (sid, _) in zip(starts, self.segments) if sid == space]

  def induced(self, permutations: dict[int, np.ndarray]) -> np.ndarray:
    """The permutation of the whole axis induced by per-space permutations (identity for
    spaces not given): new entry `k` holds old entry `induced[k]`."""
    starts = np.cumsum([0] + [n for _, n in self.segments])[:-1]
    base = np.concatenate(
        [start + np.asarray(permutations.get(sid, np.arange(n)), np.int64)
         for start, (sid, n) in zip(starts, self.segments)] or [np.zeros(0, np.int64)])
    return (np.arange(self.positions)[:, None] * self.size + base[None, :]).reshape(-1)


@dataclasses.dataclass(frozen=True)
class ChannelSpace:
  """One set of channels permuted together."""

  id: int
  size: int
  producers: tuple[str, ...]  # mapped layers whose output channels form the space
  consumers: tuple[str, ...]  # mapped layers reading it through their input channels
  carriers: tuple[str, ...]  # channel-wise layers with per-channel weights on the way
  pinned: tuple[str, ...]  # reasons it cannot be permuted in the graph; empty if it can

  @property
  def permutable(self) -> bool:
    return not self.pinned

  @property
  def label(self) -> str:
    if self.producers:
      return "output of " + "+".join(self.producers)
    return f"space {self.id} ({self.pinned[0] if self.pinned else 'no producer'})"


@dataclasses.dataclass(frozen=True)
class ChannelGraph:
  """Result of `analyze`: spaces, and how each layer sees them."""

  spaces: dict[int, ChannelSpace]
  inputs: dict[str, Layout]  # mapped layer -> layout of its input channels
  outputs: dict[str, int]  # mapped layer -> space of its output channels
  carriers: dict[str, Layout]  # channel-wise layer with weights -> layout of its channels
  unsupported: dict[str, str]  # layer -> why it pins the spaces around it

  def input_spaces(self, layer: str) -> list[ChannelSpace]:
    return [self.spaces[sid] for sid in dict.fromkeys(s for s, _ in self.inputs[layer].segments)]


class _UnionFind:
  def __init__(self):
    self.parent: list[int] = []
    self.size: list[int] = []
    self.pins: dict[int, list[str]] = {}

  def new(self, size: int, pin: str | None = None) -> int:
    self.parent.append(len(self.parent))
    self.size.append(size)
    if pin:
      self.pins.setdefault(len(self.parent) - 1, []).append(pin)
    return len(self.parent) - 1

  def find(self, i: int) -> int:
    while self.parent[i] != i:
      self.parent[i] = self.parent[self.parent[i]]
      i = self.parent[i]
    return i

  def union(self, a: int, b: int) -> None:
    a, b = self.find(a), self.find(b)
    if a != b:
      self.parent[max(a, b)] = min(a, b)

  def pin(self, i: int, reason: str) -> None:
    self.pins.setdefault(i, []).append(reason)


def tensor_key(tensor: Any) -> tuple[str, int, int]:
  """A Keras tensor's (layer name, node, index): one key per tensor in either flavour."""
  layer, node, index = _compat.keras_history(tensor)
  return layer.name, node, index


def flat(value: Any) -> list[Any]:
  """A layer's input or output as a list of tensors."""
  return tf.nest.flatten(value)


def _channels_last(layer: Any) -> bool:
  if getattr(layer, "data_format", "channels_last") not in (None, "channels_last"):
    return False
  if type(layer).__name__ in CARRIERS | {"Concatenate", "Softmax"}:
    axis = getattr(layer, "axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    rank = len(layer.input.shape) if not isinstance(layer.input, list) else len(
        layer.input[0].shape)
    return axis in (-1, rank - 1)
  return True


def analyze(model: Any) -> ChannelGraph:
  """The channel spaces of a Sequential or functional model (both Keras flavours)."""
  uf = _UnionFind()
  layouts: dict[tuple[str, int, int], Layout] = {}
  inputs: dict[str, Layout] = {}
  outputs: dict[str, int] = {}
  carriers: dict[str, Layout] = {}
  unsupported: dict[str, str] = {}

  def fresh(tensor: Any, reason: str | None) -> Layout:
    size = tensor.shape[-1] if len(tensor.shape) else None
    layout = Layout(((uf.new(int(size or 0), reason), int(size or 0)),))
    layouts[tensor_key(tensor)] = layout
    return layout

  def pin_all(layout: Layout, reason: str) -> None:
    for sid, _ in layout.segments:
      uf.pin(sid, reason)

  for tensor in flat(model.inputs):
    fresh(tensor, f"produced by the model input {_compat.keras_history(tensor)[0].name!r}")

  for layer in model.layers:
    kind_name = type(layer).__name__
    if kind_name == "InputLayer":
      continue
    ins = [t for t in flat(layer.input) if _compat.keras_history(t) is not None]
    outs = flat(layer.output)
    known = [layouts.get(tensor_key(t)) for t in ins]
    reason = None
    if _compat.inbound_node_count(layer) != 1:
      reason = "is called more than once (shared layer)"
    elif any(k is None for k in known) or not ins:
      reason = "reads a tensor produced outside the analysed graph"
    elif len(outs) != 1:
      reason = "has several outputs"
    elif not _channels_last(layer):
      reason = "does not work on the last (channels_last) axis"
    kind = introspection.layer_kind(introspection.unwrap(layer))
    if reason is None:
      reason = _propagate(layer, kind_name, kind, known, outs[0], uf, layouts, inputs, outputs,
                          carriers)
    if reason is not None:
      unsupported[layer.name] = f"{kind_name} {reason}"
      for layout in filter(None, known):
        pin_all(layout, f"read by {layer.name!r}, which {reason}")
      for tensor in outs:
        fresh(tensor, f"produced by {layer.name!r}, which {reason}")

  for tensor in flat(model.outputs):
    pin_all(layouts[tensor_key(tensor)], "reaches a model output")

  return _resolve(uf, inputs, outputs, carriers, unsupported)


def _propagate(layer, kind_name, kind, known, out, uf, layouts, inputs, outputs,
               carriers) -> str | None:
  """Records one supported layer; returns why not if it is not supported."""
  key = tensor_key(out)
  if kind in KERNEL_RANK:
    if layer is not introspection.unwrap(layer):
      return "is a wrapped layer (reorder before pruning)"
    if introspection.unmapped_reason(layer):
      return introspection.unmapped_reason(layer)
    (layout,) = known
    if kind != "Dense" and layout.flattened:
      return "convolves a flattened tensor"
    inputs[layer.name] = layout
    sid = uf.new(int(out.shape[-1]))
    outputs[layer.name] = sid
    layouts[key] = Layout(((sid, int(out.shape[-1])),))
    return None
  if kind_name in PASSTHROUGH or kind_name in CARRIERS:
    (layout,) = known
    if layout.flattened and kind_name not in ("Dropout", "GaussianNoise", "GaussianDropout",
                                              "AlphaDropout", "Activation", "ReLU", "Identity",
                                              "LeakyReLU", "ELU", "ActivityRegularization"):
      return "needs a channel axis but reads a flattened tensor"
    if kind_name in CARRIERS:
      if layout.flattened:
        return "normalises a flattened tensor"
      carriers[layer.name] = layout
    if kind_name in GLOBAL_POOLS:
      layout = Layout(layout.segments)
    layouts[key] = layout
    return None
  if kind_name in TIED_MERGES:
    first = known[0]
    shape = lambda l: ([n for _, n in l.segments], l.positions, l.flattened)
    if any(shape(l) != shape(first) for l in known[1:]):
      return "merges tensors whose channel layouts differ"
    for other in known[1:]:
      for (a, _), (b, _) in zip(first.segments, other.segments):
        uf.union(a, b)
    layouts[key] = first
    return None
  if kind_name == "Concatenate":
    if any(l.flattened for l in known):
      return "concatenates flattened tensors"
    layouts[key] = Layout(tuple(s for l in known for s in l.segments))
    return None
  if kind_name == "Flatten":
    (layout,) = known
    if layout.flattened:
      layouts[key] = layout
      return None
    spatial = layer.input.shape[1:-1]
    if any(d is None for d in spatial):
      return "flattens a tensor of unknown spatial size"
    layouts[key] = Layout(layout.segments, int(np.prod(spatial, dtype=np.int64)), True)
    return None
  weights_reason = introspection.unmapped_reason(layer)
  if weights_reason:
    return f"is not a channel-wise layer this analysis knows ({weights_reason})"
  return "is not a channel-wise layer this analysis knows"


def _resolve(uf, inputs, outputs, carriers, unsupported) -> ChannelGraph:
  root = uf.find
  relabel = lambda layout: Layout(tuple((root(s), n) for s, n in layout.segments),
                                  layout.positions, layout.flattened)
  inputs = {k: relabel(v) for k, v in inputs.items()}
  carriers = {k: relabel(v) for k, v in carriers.items()}
  outputs = {k: root(v) for k, v in outputs.items()}
  pins: dict[int, list[str]] = {}
  for sid, reasons in uf.pins.items():
    pins.setdefault(root(sid), []).extend(reasons)
  roots = sorted({root(i) for i in range(len(uf.parent))})

  def users(table: dict[str, Layout], sid: int) -> tuple[str, ...]:
    return tuple(name for name, layout in table.items() if any(s == sid for s, _ in
                                                                layout.segments))

  spaces = {
      sid: ChannelSpace(
          id=sid, size=uf.size[sid],
          producers=tuple(name for name, s in outputs.items() if s == sid),
          consumers=users(inputs, sid), carriers=users(carriers, sid),
          pinned=tuple(dict.fromkeys(pins.get(sid, ()))))
      for sid in roots
  }
  return ChannelGraph(spaces, inputs, outputs, carriers, dict(unsupported))
