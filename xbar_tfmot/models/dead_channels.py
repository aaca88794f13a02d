"""Dead output channels: find them, and rebuild the model without them where that is exact
(docs/design.md, "Dead output channels (issue 28, item 4)").

After column-grain pruning a mapped layer can keep no weight at all in an output channel (its
kernel column is all zero). That channel then outputs a constant, `activation(bias)` (0 without
bias), at every position. Channel-wise layers carry it as a constant (BatchNorm maps it
affinely, pooling and dropout at inference keep it); a layer that mixes positions with zeros
(ZeroPadding) or channels with each other (Softmax, LayerNormalization) does not. Where the
constant `v` reaches a mapped consumer:

- `v == 0`: the consumer's rows for that channel multiply zeros everywhere (its own zero
  padding included), so the rows, the producer's column and the carriers' entries go, exactly;
- `v != 0`: the rows add `v * (sum of their weights over every tap)` to each output, the same at
  every position only if no zero padding enters a window: Dense (also after Flatten) and
  `padding='valid'` convolutions, where it is folded into the consumer's bias, exactly;
  `same` or `causal` padding differs at the border, so the channel is kept and reported.

A channel goes only if it is dead in every producer of its channel space (spaces tied by Add,
Concatenate, ... come from `channels.analyze`), the space is not pinned (it reaches no model
output and no layer the analysis does not follow: a SeparableConv2D, a pruning wrapper, so
strip first) and every consumer can drop it exactly. `remove_dead_channels` either rebuilds
the model without the channels (`how="remove"`: smaller layers, fewer dense crossbars) or only
zeroes the consumers' rows (`how="zero"`: same groups, so no packed count can rise).
Constants are followed by running each channel-wise layer itself at inference on probe
tensors (the constant in the channel, random values elsewhere, twice): a channel is constant
after the layer iff it is the same everywhere in both probes, so each layer's own maths
decides, with no formula per layer type.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from xbar_tfmot import _compat
from xbar_tfmot.core.errors import GeometryError, ModelError
from xbar_tfmot.core.geometry import Counts
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import channels as channels_lib
from xbar_tfmot.models import introspection

# Relative spread below which a probed channel counts as constant: ops such as average pooling
# with 'same' padding divide sums of different lengths, which differ by a rounding error.
_RELATIVE_TOLERANCE = 1e-6
_UNKNOWN_SIZE = 8  # stands in for an unknown spatial dimension in the probes


@dataclasses.dataclass(frozen=True)
class ConsumerVerdict:
  """What a dead channel does at one mapped layer that reads it.

  Attributes:
    layer: the consumer.
    value: the constant reaching it (None: not a constant there, see `reason`).
    action: `remove` (the constant is 0), `fold` (nonzero, added to the bias exactly) or
      `keep` (not exact).
    reason: why, in words.
  """

  layer: str
  value: float | None
  action: str
  reason: str


@dataclasses.dataclass(frozen=True)
class DeadChannel:
  """One dead output channel of a channel space and what can be done with it."""

  space: int
  channel: int
  producers: tuple[str, ...]
  outputs: tuple[float, ...]  # the constant each producer outputs in it
  verdicts: tuple[ConsumerVerdict, ...]
  removable: bool
  reason: str  # why it is kept, or "" when removable


@dataclasses.dataclass(frozen=True)
class DeadChannelReport:
  """Result of `find_dead_channels` / `remove_dead_channels`.

  Attributes:
    channels: every channel dead in every producer of its space (in a non-trivially analysable
      space), removable or not.
    partly_dead: `{space label: channels}` dead in some but not all producers of a tied space
      (kept: the other producers still feed them).
    lost: `{layer: what}` for layers after which a constant channel is no longer constant.
    removed: `{space id: channels}` removed (by `remove_dead_channels`) or removable (by
      `find_dead_channels`).
    counts_before, counts_after: `{mapped layer: Counts}` when a spec was given (after: of the
      rebuilt model; equal to before for `find_dead_channels`).
    skipped: `{mapped layer: why}` layers left out of the counts (they do not fit the spec).
  """

  channels: tuple[DeadChannel, ...]
  partly_dead: dict[str, tuple[int, ...]]
  lost: dict[str, str]
  removed: dict[int, tuple[int, ...]]
  counts_before: dict[str, Counts] = dataclasses.field(default_factory=dict)
  counts_after: dict[str, Counts] = dataclasses.field(default_factory=dict)
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)

  @property
  def dead(self) -> int:
    return len(self.channels)

  @property
  def removable(self) -> int:
    return sum(c.removable for c in self.channels)

  def total(self, count: str, after: bool = False) -> int:
    """Sum of one `Counts` field (`dense`, `blocks`, `packed`) over the mapped layers."""
    table = self.counts_after if after else self.counts_before
    return sum(getattr(c, count) for c in table.values())

  @property
  def grown(self) -> tuple[str, ...]:
    """Mapped layers whose packed count rose (removed rows shift units into other groups)."""
    return tuple(n for n, c in self.counts_after.items()
                 if n in self.counts_before and c.packed > self.counts_before[n].packed)

  def summary(self) -> str:
    """A few lines for a log: dead, removable, kept with reasons, crossbars before and after."""
    lines = [f"{self.dead} dead output channels, {self.removable} removable exactly"]
    kept: dict[tuple[str, str], list[int]] = {}
    for c in self.channels:
      if not c.removable:
        kept.setdefault(("+".join(c.producers), c.reason), []).append(c.channel)
    for (producers, reason), chans in kept.items():
      lines.append(f"  kept: channels {chans} of {producers}: {reason}")
    for label, chans in self.partly_dead.items():
      lines.append(f"  kept: channels {list(chans)} of {label}: dead in only some producers")
    if self.counts_before:
      lines.append("crossbars (dense, packed): "
                   f"{self.total('dense')}, {self.total('packed')} -> "
                   f"{self.total('dense', True)}, {self.total('packed', True)}")
    if self.grown:
      lines.append(f"  packed count rose in {', '.join(self.grown)} (rows regrouped)")
    return "\n".join(lines)


def _dead_columns(layer: Any) -> np.ndarray:
  """Output channels of a mapped layer whose kernel column is all zero."""
  kernel = introspection.effective_kernel(layer)
  return ~np.asarray(kernel).reshape(-1, kernel.shape[-1]).any(axis=0)


def _constant_entries(outputs: list[np.ndarray]) -> np.ndarray:
  """Per last-axis entry, the value if it is the same in every row of every output, else NaN."""
  rows = np.concatenate([np.asarray(o, np.float64).reshape(-1, o.shape[-1]) for o in outputs])
  lo, hi = rows.min(axis=0), rows.max(axis=0)
  scale = np.maximum(np.abs(lo), np.abs(hi))
  constant = (hi - lo) <= _RELATIVE_TOLERANCE * scale
  return np.where(constant, rows[0], np.nan)


def _producer_constants(layer: Any) -> np.ndarray:
  """`activation(bias)` in the dead columns of a mapped layer (NaN elsewhere, and where the
  activation mixes channels)."""
  dead = _dead_columns(layer)
  bias = np.asarray(layer.bias) if getattr(layer, "use_bias", False) else np.zeros(dead.size)
  activation = getattr(layer, "activation", None) or (lambda x: x)
  outs = []
  for seed in (0, 1):
    x = np.random.default_rng(seed).normal(size=(2, dead.size))
    x[:, dead] = bias[dead]
    outs.append(np.asarray(activation(tf.constant(x, tf.float32))))
  values = _constant_entries(outs)
  values[~dead] = np.nan
  return values


def _probe(layer: Any, ins: list[Any], constants: list[np.ndarray]) -> np.ndarray:
  """The constant channels of a channel-wise layer's output, by running it twice at inference
  on inputs that hold the known constants and random values elsewhere."""
  outs = []
  for seed in (0, 1):
    rng = np.random.default_rng(seed)
    xs = []
    for tensor, values in zip(ins, constants):
      shape = [2] + [_UNKNOWN_SIZE if d is None else int(d) for d in tensor.shape[1:]]
      x = rng.normal(size=shape)
      known = ~np.isnan(values)
      x[..., known] = values[known]
      xs.append(tf.constant(x, tf.float32))
    out = layer(xs if len(xs) > 1 else xs[0], training=False)
    outs.append(np.asarray(out))
  return _constant_entries(outs)


def _propagate_constants(model: Any, graph: channels_lib.ChannelGraph
                         ) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, tuple]]:
  """`{mapped layer: constant of each entry of its input axis (NaN: not constant)}`, `{layer:
  why}` for the layers after which a constant is lost, and `{mapped layer: those of them on
  the way to its input}`, following the graph `analyze` understood."""
  values: dict[tuple[str, int, int], np.ndarray] = {}
  upstream: dict[tuple[str, int, int], tuple[str, ...]] = {}
  at_inputs: dict[str, np.ndarray] = {}
  lost_before: dict[str, tuple[str, ...]] = {}
  lost: dict[str, str] = {}
  for tensor in channels_lib.flat(model.inputs):
    values[channels_lib.tensor_key(tensor)] = np.full(int(tensor.shape[-1] or 0), np.nan)
  for layer in model.layers:
    if type(layer).__name__ == "InputLayer":
      continue
    ins = [t for t in channels_lib.flat(layer.input) if _compat.keras_history(t) is not None]
    outs = channels_lib.flat(layer.output)
    known = [values.get(channels_lib.tensor_key(t)) for t in ins]
    before = tuple(dict.fromkeys(n for t in ins for n in upstream.get(channels_lib.tensor_key(t), ())))
    if layer.name in graph.inputs and known[0] is not None:
      at_inputs[layer.name] = known[0]
      lost_before[layer.name] = before
    result = None
    if layer.name not in graph.unsupported and all(k is not None for k in known):
      if layer.name in graph.outputs:
        result = _producer_constants(layer)
      elif any((~np.isnan(k)).any() for k in known):
        try:
          result = _probe(layer, ins, known)
        except Exception as error:  # noqa: BLE001  (a layer the probe cannot run: no constant)
          lost[layer.name] = f"could not be probed ({type(error).__name__}: {error})"
        if result is not None and int((~np.isnan(result)).sum()) < max(
            int((~np.isnan(k)).sum()) for k in known):
          lost[layer.name] = (f"{type(layer).__name__} mixes a constant channel with other "
                              "values (zero padding, another input, or a layer across channels)")
    for tensor in outs:
      upstream[channels_lib.tensor_key(tensor)] = before + ((layer.name,) if layer.name in lost else ())
      size = int(tensor.shape[-1] or 0) if len(tensor.shape) else 0
      values[channels_lib.tensor_key(tensor)] = (result if result is not None and result.size == size
                              else np.full(size, np.nan))
  return at_inputs, lost, lost_before


def _entries(layout: channels_lib.Layout, space: int, channel: int) -> np.ndarray:
  """Where `channel` of `space` sits on an input or carrier axis (every copy, every position)."""
  base = np.array([off + channel for off in layout.offsets(space)], np.int64)
  return (np.arange(layout.positions)[:, None] * layout.size + base[None, :]).reshape(-1)


def _fold_exact(layer: Any) -> tuple[bool, str]:
  """Whether a constant input's contribution is the same at every output position (no zero
  padding enters a window), and why."""
  kind = introspection.layer_kind(layer)
  if kind == "Dense":
    return True, "Dense"
  padding = getattr(layer, "padding", "valid")
  if padding == "valid":
    return True, f"{kind} with padding='valid'"
  return False, (f"{kind} with padding={padding!r}: the zero padding enters the border windows, "
                 "so the constant's contribution differs there")


def _verdict(layer: Any, entries: np.ndarray, constants: np.ndarray | None,
             lost: tuple[str, ...]) -> ConsumerVerdict:
  """The rule for one dead channel at one consumer; `lost`: layers on the way that lose a
  constant."""
  name = layer.name
  if constants is None:
    return ConsumerVerdict(name, None, "keep", "its input was not followed")
  vals = constants[entries]
  if np.isnan(vals).any():
    where = f" (lost after {', '.join(map(repr, lost))})" if lost else ""
    return ConsumerVerdict(name, None, "keep", f"the constant does not reach {name!r}{where}")
  value = float(vals[0]) if np.all(vals == vals[0]) else float("nan")
  if np.all(vals == 0):
    return ConsumerVerdict(name, 0.0, "remove", f"reaches {name!r} as 0: its rows add nothing")
  exact, why = _fold_exact(layer)
  if exact:
    return ConsumerVerdict(name, value, "fold",
                           f"reaches {name!r} as a nonzero constant; {why}: folded into its bias")
  return ConsumerVerdict(name, value, "keep", f"reaches {name!r} as a nonzero constant; {why}")


def _analyse(model: Any) -> tuple[channels_lib.ChannelGraph, dict[str, np.ndarray],
                                   DeadChannelReport]:
  graph = channels_lib.analyze(model)
  at_inputs, lost, lost_before = _propagate_constants(model, graph)
  layers = {l.name: l for l in model.layers}
  found, partly, removed = [], {}, {}
  for sid, space in graph.spaces.items():
    if not space.producers:
      continue
    dead_each = [_dead_columns(layers[p]) for p in space.producers]
    dead = np.logical_and.reduce(dead_each)
    some = np.logical_or.reduce(dead_each) & ~dead
    if some.any():
      partly[space.label] = tuple(int(c) for c in np.flatnonzero(some))
    constants = [_producer_constants(layers[p]) for p in space.producers] if dead.any() else []
    for c in np.flatnonzero(dead):
      c = int(c)
      outputs = [values[c] for values in constants]
      verdicts = tuple(
          _verdict(layers[name], _entries(graph.inputs[name], sid, c), at_inputs.get(name),
                   lost_before.get(name, ()))
          for name in space.consumers)
      reason = ""
      if space.pinned:
        reason = "its space is pinned: " + "; ".join(space.pinned)
      elif not space.consumers:
        reason = "no mapped layer reads it"
      elif any(v.action == "keep" for v in verdicts):
        reason = "; ".join(v.reason for v in verdicts if v.action == "keep")
      found.append(DeadChannel(sid, c, space.producers, tuple(map(float, outputs)), verdicts,
                               not reason, reason))
      if not reason:
        removed.setdefault(sid, []).append(c)
  report = DeadChannelReport(tuple(found), partly, lost,
                             {k: tuple(v) for k, v in removed.items()})
  return graph, at_inputs, report


def _counts(model: Any, spec: CrossbarSpec | None
            ) -> tuple[dict[str, Counts], dict[str, str]]:
  if spec is None:
    return {}, {}
  counts, skipped = {}, {}
  for layer in model.layers:
    inner = introspection.unwrap(layer)
    if not introspection.is_mapped(inner):
      continue
    try:
      geometry = introspection.geometry_of(inner, spec)
    except GeometryError as error:
      skipped[inner.name] = str(error)
      continue
    counts[inner.name] = geometry.counts(introspection.effective_kernel(layer))
  return counts, skipped


def find_dead_channels(model: Any, spec: CrossbarSpec | None = None) -> DeadChannelReport:
  """The dead output channels of a (pruned, stripped) model and, for each, the constant it
  reaches each consumer with and whether removing it is exact (see the module docstring).
  With `spec`, the report also holds every mapped layer's crossbar counts."""
  _, _, report = _analyse(model)
  counts, skipped = _counts(model, spec)
  return dataclasses.replace(report, counts_before=counts, counts_after=counts, skipped=skipped)


def _without(array: np.ndarray, rows: np.ndarray, delete: bool) -> np.ndarray:
  """`array` without the entries `rows` of axis -2, or with them zeroed."""
  if delete:
    return np.delete(array, rows, axis=-2)
  array = array.copy()
  array[..., rows, :] = 0
  return array


def _consumer_weights(layer: Any, weights: list[np.ndarray], rows: np.ndarray,
                      fold: np.ndarray | None, delete: bool) -> list[np.ndarray]:
  """A consumer's weights (Conv1D, Conv2D, Dense: `channels.analyze` pins the spaces around a
  SeparableConv2D) without, or with zeros in, the input entries `rows`; `fold` added to its
  bias."""
  kernel, *rest = weights
  if fold is not None:
    rest = [rest[0] + fold] if rest else [fold.astype(kernel.dtype)]
  return [_without(kernel, rows, delete), *rest]


HOWS = ("remove", "zero")


def remove_dead_channels(model: Any, spec: CrossbarSpec | None = None, how: str = "remove"
                         ) -> tuple[Any, DeadChannelReport]:
  """A copy of `model` without its removable dead channels, and the report.

  The copy computes the same function: a nonzero constant is first folded into the consumer's
  bias (a consumer without bias gets one); then, with `how="remove"`, the channel goes from its
  producers' kernels and biases, from every BatchNorm (or other carrier) on its way and from
  its consumers' input rows. With `how="zero"` the architecture stays and only the consumers'
  rows are zeroed: the input groups stay where they are, so no layer's packed crossbar count
  can rise, whereas removing rows shifts the later units into other groups, which frees whole
  row tiles but can, rarely, raise a layer's packed count (`DeadChannelReport.grown` names
  such layers). Channels whose removal would not be exact are left in place and reported.
  With `spec`, the report holds the crossbar counts of every mapped layer before and after.
  """
  if how not in HOWS:
    raise ModelError(f"remove_dead_channels: how={how!r} is unknown; valid: {', '.join(HOWS)}.")
  graph, at_inputs, report = _analyse(model)
  counts_before, skipped = _counts(model, spec)
  layers = {l.name: l for l in model.layers}
  drop_out: dict[str, list[int]] = {}
  drop_in: dict[str, list[np.ndarray]] = {}
  drop_carrier: dict[str, list[np.ndarray]] = {}
  folds: dict[str, np.ndarray] = {}
  for dead in report.channels:
    if not dead.removable:
      continue
    for name in dead.producers:
      drop_out.setdefault(name, []).append(dead.channel)
    for name in graph.spaces[dead.space].carriers:
      drop_carrier.setdefault(name, []).append(
          _entries(graph.carriers[name], dead.space, dead.channel))
    for verdict in dead.verdicts:
      name = verdict.layer
      rows = _entries(graph.inputs[name], dead.space, dead.channel)
      drop_in.setdefault(name, []).append(rows)
      if verdict.action == "fold":
        layer = layers[name]
        kernel = np.asarray(introspection.mapped_kernel(layer), np.float64)
        per_row = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=0)
        constants = at_inputs[name][rows]
        delta = (constants[:, None] * per_row[rows]).sum(axis=0)
        folds[name] = folds.get(name, 0.0) + delta
  if how == "zero":
    drop_out, drop_carrier = {}, {}
  if not drop_in:
    return model, dataclasses.replace(report, counts_before=counts_before,
                                      counts_after=counts_before, skipped=skipped)

  K = introspection.keras_module(introspection.flavour(model))

  def clone(layer):
    config = layer.get_config()
    if layer.name in drop_out:
      key = "units" if introspection.layer_kind(layer) == "Dense" else "filters"
      config[key] = int(config[key]) - len(drop_out[layer.name])
      if config[key] < 1:
        raise ModelError(f"remove_dead_channels: layer {layer.name!r} would keep no output "
                         "channel; every one is dead, so the model's output is a constant.")
    if layer.name in folds and not config.get("use_bias", True):
      config["use_bias"] = True
    return type(layer).from_config(config)

  copy = K.models.clone_model(model, clone_function=clone)
  for old, new in zip(model.layers, copy.layers):
    weights = old.get_weights()
    if not weights:
      continue
    name = old.name
    if name in drop_in:
      rows = np.unique(np.concatenate(drop_in[name]))
      fold = folds.get(name)
      weights = _consumer_weights(old, weights, rows,
                                  None if fold is None else fold.astype(weights[0].dtype),
                                  delete=how == "remove")
    if name in drop_out:
      cols = sorted(drop_out[name])
      weights[0] = np.delete(weights[0], cols, axis=-1)
      if len(weights) > 1:
        weights[1] = np.delete(weights[1], cols, axis=0)
    if name in drop_carrier:
      entries = np.unique(np.concatenate(drop_carrier[name]))
      weights = [np.delete(w, entries, axis=0) if w.ndim == 1 else w for w in weights]
    try:
      new.set_weights(weights)
    except ValueError as error:
      raise ModelError(f"remove_dead_channels: the rebuilt layer {name!r} does not take the "
                       f"reduced weights ({error}).") from error
  counts_after, _ = _counts(copy, spec)
  return copy, dataclasses.replace(report, counts_before=counts_before,
                                   counts_after=counts_after, skipped=skipped)

