"""Input feature-map reorder (docs/design.md, "Input feature-map reorder").

Which input channels share a crossbar group decides how much energy the exact projection at
the target budget throws away. `reorder_model` chooses, per channel space (materialised) or per
mapped layer (mapping only), a permutation that raises the kept-energy ratio: it starts from
the better of the identity and an importance sort (channels by their energy), then takes the
best of a batch of random swaps while the kept energy rises, for a bounded number of rounds.
A space read by several mapped layers gets one permutation maximising their summed ratio. The
result never keeps less energy than the identity.

Materialised, the permutation is applied to a copy of the model: producers' output channels
(kernel, bias), channel-wise carriers (BatchNorm gamma, beta, moving mean and variance) and
consumers' input channels, so the copy computes the same function. Mapping only, the model is
left as is and the permutations are meant for `build_mapping(..., permutations=...)` and for
pruning with `project_permuted`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from xbar_tfmot.core.errors import ModelError
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.projection import GRANULARITIES, crossbar_budget, project
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import channels as channels_lib
from xbar_tfmot.models import introspection


@dataclasses.dataclass(frozen=True)
class ReorderResult:
  """What `reorder_model` did.

  Attributes:
    permutations: per mapped layer, the permutation of its input channels (kernel axis -2)
      relative to the original model: position `k` holds original input `permutations[k]`.
    kept_before: per mapped layer, kept-energy ratio of the exact projection without reorder.
    kept_after: the same with the permutations (materialised: of the returned copy, whose
      output channels are permuted too, which matters at crossbar grain).
    skipped: `{space or layer: reason}` for what could not be reordered.
    materialized: whether the returned model copy has the permutations applied.
  """

  permutations: dict[str, np.ndarray]
  kept_before: dict[str, float]
  kept_after: dict[str, float]
  skipped: dict[str, str]
  materialized: bool

  @property
  def mapping_permutations(self) -> dict[str, np.ndarray]:
    """What to pass to `build_mapping` for the returned model: nothing once materialised."""
    return {} if self.materialized else dict(self.permutations)


def kept_energy(geometry: LayerGeometry, unit_energy: np.ndarray, budget: int,
                granularity: str) -> np.ndarray:
  """Energy kept by the exact projection, for a batch of unit energies `(..., units, cout)`
  already in grouping order (numpy mirror of `projection.project`)."""
  lead = unit_energy.shape[:-2]
  pad = geometry.g_in * geometry.kin - geometry.units
  u = np.concatenate([unit_energy, np.zeros((*lead, pad, geometry.cout))], axis=-2)
  seg = u.reshape(*lead, geometry.g_in, geometry.kin, geometry.cout).sum(axis=-2)
  return _kept_from_segments(geometry, seg, budget, granularity)


def _kept_from_segments(geometry: LayerGeometry, seg: np.ndarray, budget: int,
                        granularity: str) -> np.ndarray:
  lead = seg.shape[:-2]
  width = geometry.g_out * geometry.kout
  if granularity == "column":
    seg = -np.sort(-seg, axis=-1)
  padded = np.concatenate([seg, np.zeros((*lead, geometry.g_in, width - geometry.cout))], -1)
  chunks = padded.reshape(*lead, geometry.g_in * geometry.g_out, geometry.kout).sum(axis=-1)
  return np.sort(chunks, axis=-1)[..., -budget:].sum(axis=-1)


class _Consumer:
  """One mapped layer's view of a search variable: where each variable slot's units sit."""

  def __init__(self, geometry: LayerGeometry, kernel: np.ndarray, budget: int,
               granularity: str, slot_units: np.ndarray, order: np.ndarray):
    self.geometry, self.budget, self.granularity = geometry, budget, granularity
    energy = np.asarray(geometry.unit_energy(tf.constant(kernel, tf.float64)))
    self.energy = energy
    self.total = float(energy.sum()) or 1.0
    self.slot_units = slot_units  # (slots, m) unit positions of each slot
    self.base = order.copy()  # position -> original unit, with the variable at identity
    self.order = order.copy()  # the same at the current permutation

  def segments(self) -> np.ndarray:
    g = self.geometry
    seg = np.zeros((g.g_in, g.cout))
    np.add.at(seg, np.arange(g.units) // g.kin, self.energy[self.order])
    return seg

  def ratio(self, seg: np.ndarray) -> np.ndarray:
    return _kept_from_segments(self.geometry, seg, self.budget, self.granularity) / self.total

  def swap_ratios(self, seg: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Kept ratio after swapping slots `i[b]` and `j[b]`, for each candidate `b`."""
    g = self.geometry
    pa, pb = self.slot_units[i], self.slot_units[j]  # (B, m)
    delta = self.energy[self.order[pb]] - self.energy[self.order[pa]]  # (B, m, cout)
    batch = np.broadcast_to(np.arange(i.size)[:, None], pa.shape)
    out = np.repeat(seg[None], i.size, axis=0)
    np.add.at(out, (batch, pa // g.kin), delta)
    np.add.at(out, (batch, pb // g.kin), -delta)
    return self.ratio(out)

  def apply_swap(self, i: int, j: int) -> None:
    pa, pb = self.slot_units[i], self.slot_units[j]
    self.order[pa], self.order[pb] = self.order[pb].copy(), self.order[pa].copy()


def _slot_units(geometry: LayerGeometry, layout: channels_lib.Layout, space: int) -> np.ndarray:
  """`(size, m)` unit positions of each channel of `space` in a consumer's unit order."""
  taps = geometry.taps if geometry.unit_rows == 1 else 1
  size = layout.size
  offs = np.array(layout.offsets(space))
  slots = np.arange(dict(layout.segments)[space])
  p = np.arange(layout.positions)
  channel_pos = (p[None, None, :] * size + offs[None, :, None] + slots[:, None, None])
  units = channel_pos[..., None] * taps + np.arange(taps)
  return units.reshape(slots.size, -1)


def _search(consumers: list[_Consumer], size: int, rng: np.random.Generator, rounds: int,
            patience: int, max_batch_cells: int) -> tuple[np.ndarray, float, float]:
  """Permutation of `size` slots maximising the summed kept ratio of `consumers`."""
  perm = np.arange(size)

  def objective() -> float:
    return float(sum(c.ratio(c.segments()) for c in consumers))

  def move_to(target: np.ndarray) -> None:
    nonlocal perm
    for c in consumers:
      c.order[c.slot_units] = c.base[c.slot_units[target]]
    perm = target.copy()

  before = objective()
  best = before
  signature = sum(c.energy[c.base[c.slot_units]].sum(axis=(1, 2)) / c.total for c in consumers)
  start = np.argsort(-signature, kind="stable")
  move_to(start)
  if objective() + 1e-12 < best:
    move_to(np.arange(size))
  best = objective()
  cells = max(c.geometry.g_in * c.geometry.cout for c in consumers)
  batch = int(np.clip(max_batch_cells // max(cells, 1), 4, 64))
  stale = 0
  for _ in range(rounds if size > 1 else 0):
    i = rng.integers(0, size, batch)
    j = (i + rng.integers(1, size, batch)) % size
    segs = [c.segments() for c in consumers]
    gains = sum(c.swap_ratios(s, i, j) for c, s in zip(consumers, segs)) - best
    b = int(np.argmax(gains))
    if gains[b] <= 1e-12:
      stale += 1
      if stale >= patience:
        break
      continue
    stale = 0
    for c in consumers:
      c.apply_swap(i[b], j[b])
    perm[[i[b], j[b]]] = perm[[j[b], i[b]]]
    best = objective()
  return perm, before, best


def _budgets(names, geometries, reduction) -> dict[str, int]:
  if isinstance(reduction, Mapping):
    unknown = sorted(set(reduction) - set(names))
    if unknown:
      raise ModelError(f"reduction given for {unknown}, which are not mapped layers; mapped "
                       f"layers: {sorted(names)}.")
    return {n: crossbar_budget(geometries[n].dense_crossbars, r) for n, r in reduction.items()}
  return {n: crossbar_budget(geometries[n].dense_crossbars, reduction) for n in names}


def reorder_model(model: Any, spec: CrossbarSpec, reduction: float | Mapping[str, float],
                  granularity: str = "column", materialize: bool = True, seed: int = 0,
                  rounds: int = 200, patience: int = 20,
                  max_batch_cells: int = 1 << 21) -> tuple[Any, ReorderResult]:
  """Reorders input feature maps so the projection at the target budget keeps more energy.

  Args:
    model: an unpruned Sequential or functional model (tf_keras or Keras 3).
    spec: the crossbar.
    reduction: target crossbar reduction, for all mapped layers or `{layer name: reduction}`
      (layers left out are not reordered).
    granularity: `crossbar` or `column`, as the pruning that follows.
    materialize: apply the permutations to a copy of the model (same function); otherwise
      return the model itself and record the permutations for the mapping only.
    seed: seeds the swap search; the result is deterministic for a seed.
    rounds, patience: at most `rounds` swap batches, stopping after `patience` without gain.
    max_batch_cells: bounds the memory of one batch of candidate swaps.

  Returns:
    `(model copy or model, ReorderResult)`.
  """
  if granularity not in GRANULARITIES:
    raise ModelError(f"granularity={granularity!r} is unknown; valid: {', '.join(GRANULARITIES)}.")
  rng = np.random.default_rng(seed)
  mapped = {layer.name: layer for layer in model.layers
            if introspection.is_mapped(layer)}
  geometries = {n: introspection.geometry_of(l, spec) for n, l in mapped.items()}
  kernels = {n: np.asarray(introspection.mapped_kernel(l), np.float64) for n, l in mapped.items()}
  budgets = _budgets(list(mapped), geometries, reduction)
  skipped: dict[str, str] = {}
  identity = {n: np.arange(g.cin) for n, g in geometries.items()}

  def consumer(name, layout, space, order):
    slot = _slot_units(geometries[name], layout, space)
    return _Consumer(geometries[name], kernels[name], budgets[name], granularity, slot, order)

  if not materialize:
    perms = {}
    for name in budgets:
      layout = channels_lib.Layout(((0, geometries[name].cin),))
      c = consumer(name, layout, 0, np.arange(geometries[name].units))
      perms[name], _, _ = _search([c], geometries[name].cin, rng, rounds, patience,
                                  max_batch_cells)
    permutations = {**identity, **perms}
    kept = _kept_ratios(geometries, kernels, budgets, granularity, permutations)
    before = _kept_ratios(geometries, kernels, budgets, granularity, identity)
    return model, ReorderResult(permutations, before, kept, skipped, False)

  graph = channels_lib.analyze(model)
  space_perms: dict[int, np.ndarray] = {}
  for sid, space in graph.spaces.items():
    readers = [n for n in space.consumers if n in budgets]
    if not readers:
      continue
    if space.pinned:
      skipped[space.label] = "; ".join(space.pinned)
      continue
    consumers = []
    for n in readers:
      layout = graph.inputs[n]
      order = _expand(geometries[n], layout.induced(space_perms))
      consumers.append(consumer(n, layout, sid, order))
    perm, _, _ = _search(consumers, space.size, rng, rounds, patience, max_batch_cells)
    if np.array_equal(perm, np.arange(space.size)):
      continue
    # At crossbar grain the producers' output groups move too: accept only a net gain.
    touched = sorted(set(readers) | {n for n in space.producers if n in budgets})
    now = _state_ratios(touched, graph, space_perms, geometries, kernels, budgets, granularity)
    trial = _state_ratios(touched, graph, {**space_perms, sid: perm}, geometries, kernels,
                          budgets, granularity)
    if sum(trial.values()) > sum(now.values()) + 1e-12:
      space_perms[sid] = perm
  permutations = {n: graph.inputs[n].induced(space_perms) if n in graph.inputs else identity[n]
                  for n in geometries}
  for n in geometries:
    if n not in graph.inputs:
      skipped.setdefault(n, "its input could not be analysed")
  before = _kept_ratios(geometries, kernels, budgets, granularity, identity)
  kept = _state_ratios(list(budgets), graph, space_perms, geometries, kernels, budgets,
                       granularity)
  copy = apply_permutations(model, graph, space_perms)
  return copy, ReorderResult(permutations, before, kept, skipped, True)


def _expand(geometry: LayerGeometry, channel_order: np.ndarray) -> np.ndarray:
  """Channel order -> unit order (row units of `flat` convolutions take all taps)."""
  if geometry.unit_rows == 1 and geometry.taps > 1:
    return (channel_order[:, None] * geometry.taps + np.arange(geometry.taps)).reshape(-1)
  return channel_order


def _kept_ratios(geometries, kernels, budgets, granularity, permutations) -> dict[str, float]:
  out = {}
  for n, budget in budgets.items():
    g = geometries[n]
    energy = np.asarray(g.unit_energy(tf.constant(kernels[n], tf.float64)))
    order = _expand(g, np.asarray(permutations[n]))
    total = energy.sum()
    out[n] = float(kept_energy(g, energy[order], budget, granularity) / total) if total else 1.0
  return out


def _state_ratios(names, graph, space_perms, geometries, kernels, budgets,
                  granularity) -> dict[str, float]:
  """Kept ratios of `names` with input and output channels permuted as the spaces are."""
  out = {}
  for n in names:
    kernel = kernels[n]
    if n in graph.inputs:
      kernel = np.take(kernel, graph.inputs[n].induced(space_perms), axis=-2)
    if n in graph.outputs and graph.outputs[n] in space_perms:
      kernel = np.take(kernel, space_perms[graph.outputs[n]], axis=-1)
    out.update(_kept_ratios({n: geometries[n]}, {n: kernel}, {n: budgets[n]}, granularity,
                            {n: np.arange(geometries[n].cin)}))
  return out


def apply_permutations(model: Any, graph: channels_lib.ChannelGraph,
                       space_perms: Mapping[int, np.ndarray]) -> Any:
  """A copy of `model` with the channel spaces permuted (same function)."""
  K = introspection.keras_module(introspection.flavour(model))
  copy = K.models.clone_model(model)
  outputs_of = {}
  for name, sid in graph.outputs.items():
    if sid in space_perms:
      outputs_of[name] = np.asarray(space_perms[sid])
  for old, new in zip(model.layers, copy.layers):
    weights = old.get_weights()
    if not weights:
      continue
    name = old.name
    if name in graph.inputs:
      index = graph.inputs[name].induced(space_perms)
      weights[0] = np.take(weights[0], index, axis=-2)
    if name in outputs_of:
      weights[0] = np.take(weights[0], outputs_of[name], axis=-1)
      if len(weights) > 1:
        weights[1] = np.take(weights[1], outputs_of[name], axis=0)
    if name in graph.carriers:
      index = graph.carriers[name].induced(space_perms)
      weights = [np.take(w, index, axis=0) if w.ndim == 1 else w for w in weights]
    new.set_weights(weights)
  return copy


def project_permuted(geometry: LayerGeometry, kernel, budget, granularity: str = "column",
                     permutation=None, temperature=0.0, seed=None) -> tf.Tensor:
  """`project` with the input channels grouped in `permutation` order (mapping-only reorder);
  the mask is returned in the kernel's own channel order."""
  kernel = tf.convert_to_tensor(kernel)
  if permutation is None:
    return project(geometry, kernel, budget, granularity, temperature, seed)
  perm = tf.constant(np.asarray(permutation), tf.int32)
  mask = project(geometry, tf.gather(kernel, perm, axis=len(geometry.kernel_shape) - 2), budget,
                 granularity, temperature, seed)
  return tf.gather(mask, tf.math.invert_permutation(perm), axis=len(geometry.kernel_shape) - 2)
