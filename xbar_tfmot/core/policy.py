"""Which mapped layers are pruned, and to how many crossbars (docs/design.md, "The policy").

Flavour-neutral: a plan is computed from the layers' `LayerGeometry` only, so it serves the
tf_keras and Keras 3 adapters alike.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from xbar_tfmot.core.cost import dense_cost
from xbar_tfmot.core.errors import PolicyError
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.hardware import HardwareSpec
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.schedules import _check_reduction

MODES = ("per_layer", "global", "global_score", "sensitivity")
SHARED_MODES = ("global_score",)  # budgets re-split among layers at every mask update
SCORES = ("magnitude", "saliency", "relative_magnitude", "fisher")
# How `allocate_by_score` makes a score comparable across layers: over the layer's total
# ("layer": every unit of a layer with N units is worth about 1/N, the size bias), over the
# layer's mean unit ("mean": about 1 for an average unit of any layer), or not at all ("none":
# the score is already in loss units).
NORMALISATION = {"magnitude": "layer", "saliency": "layer", "relative_magnitude": "mean",
                 "fisher": "none"}
GRADIENT_SCORES = ("saliency", "fisher")  # need batches (`UpdateCrossbarPruning(allocation_data=)`)
# Former score names, still accepted: each warns (`DeprecationWarning`) and means its new name.
DEPRECATED_SCORES = {"energy": "magnitude"}
CONV_KINDS = ("Conv1D", "Conv2D")
# What a shared pool's budget counts (`CrossbarPolicy.objective`): crossbars, or energy per
# inference (pJ) from the cost model; latency is refused (`LATENCY_REFUSED`).
OBJECTIVES = ("crossbars", "energy", "latency")
COST_OBJECTIVES = ("energy",)  # objectives with a cost per crossbar (`layer_costs`)
COST_MODES = ("global_score",)  # modes that can split a pool by cost
# Relative slack of a cost budget's floating-point comparisons (`fits`).
COST_TOLERANCE = 1e-9
LATENCY_REFUSED = (
    "objective='latency' cannot be allocated by pruning: in the cost model (core/cost.py) a "
    "layer's latency is ceil(positions / replicas) x input cycles x cycle_ns, the same whatever "
    "number of crossbars it keeps (they work in parallel, and every layer keeps at least one), "
    "so no split of a crossbar budget lowers it; only replicas (CrossbarSpec.layer_replicas) "
    "do, and the policy does not choose them. Valid objectives: crossbars, energy.")


@dataclasses.dataclass(frozen=True)
class CrossbarPolicy:
  """Per-layer targets, layers left dense, and the per-layer or global budget mode.

  Attributes:
    targets: `{name or regex: final reduction}`; a key matches a layer whose name equals it
      or fully matches it as a regular expression. The first matching key wins. Layers without
      a target take the schedule's `final_reduction`.
    leave_dense: names or regexes of layers never pruned. `None` (default) leaves the first
      convolution of a model dense: its few input channels fill few crossbar rows, so pruning
      it frees little and hurts accuracy most. Pass `()` to prune every mapped layer.
    mode: `per_layer`: each layer meets `N = max(1, round((1 - s) * dense))` for its own
      target `s`. `global`: the schedule's `final_reduction` is one model-wide target,
      `N_total = max(1, round((1 - s) * D))` over all mapped layers `D` (dense-left layers
      included). Left-dense layers and layers with an explicit target keep their budgets;
      the rest of `N_total` is spread over the other layers in proportion to their dense
      counts (the same reduction everywhere), rounded by largest remainder so the budgets sum
      to `N_total` exactly. Uniform spreading is predictable and needs no pretrained weights;
      it is not sensitivity-aware.
      `global_score`: the same model-wide `N_total`, but the pool's share (what the
      dense-left and explicitly targeted layers leave) is re-split at every mask update: all
      pool layers' candidate units (blocks, or column chunks at column grain) compete in one
      ranking of a score normalised per layer (`score`), every layer keeping at least one
      crossbar (`allocate_by_score`). The budgets are set by `UpdateCrossbarPruning`.
      `sensitivity`: the same pool share, split once before training to minimise the summed
      loss increase over measured per-layer curves (`curves`, from
      `xbar_tfmot.sensitivity_curves`; `allocate_by_curves`, an exact knapsack).
    score: `global_score` only: `magnitude` (a unit's sum of squared weights over its layer's
      total), `saliency` (a unit's sum of `|w * dL/dw|` over a few batches given to
      `UpdateCrossbarPruning(allocation_data=...)`, over its layer's total),
      `relative_magnitude` (a unit's sum of squared weights over its layer's mean unit: no
      size bias) or `fisher` (OBD with the empirical Fisher diagonal: a unit's sum of
      `w^2 * mean(dL/dw^2)` over the batches, an estimate of the loss increase of removing it,
      comparable across layers as it is). The first two are normalised per layer, so every
      unit of a large layer looks small (`NORMALISATION`). `energy`, the former name of
      `magnitude`, still works but warns (`DeprecationWarning`).
    curves: `sensitivity` only: `{layer name: [[budget, loss], ...]}`, measured on held-out
      batches after the one-shot projection of that layer alone to each budget.
    objective: what the model-wide budget counts. `crossbars` (default): the count above.
      `energy` (`global_score` only): energy per inference from the cost model; the budget is
      `(1 - s) * E` (`E` the dense model's energy over all mapped layers), and the pool's
      units are taken by score per unit of energy while they fit (`allocate_by_score` with
      `costs`), so a crossbar that is activated at many output positions must be worth more
      to stay. `latency` is refused (`LATENCY_REFUSED`: pruning cannot lower it).
    layer_costs: `energy` only: `{layer name: energy (pJ) per inference of one crossbar of the
      layer}` for every mapped layer, from the cost model: `unit_costs` on geometries, or
      `xbar_tfmot.pruning.allocation.crossbar_costs(model, spec, hw)` on a model.
  """

  targets: Any = ()
  leave_dense: Any = None
  mode: str = "per_layer"
  score: str = "magnitude"
  curves: Any = None
  objective: str = "crossbars"
  layer_costs: Any = None

  def __post_init__(self):
    targets = self.targets.items() if isinstance(self.targets, Mapping) else self.targets
    checked = []
    for pattern, value in targets:
      _compile(f"targets[{pattern!r}]", pattern)
      checked.append((pattern, _check_reduction("CrossbarPolicy", f"targets[{pattern!r}]", value,
                                                PolicyError)))
    object.__setattr__(self, "targets", tuple(checked))
    if self.leave_dense is not None:
      names = (self.leave_dense,) if isinstance(self.leave_dense, str) else tuple(self.leave_dense)
      for pattern in names:
        _compile("leave_dense", pattern)
      object.__setattr__(self, "leave_dense", names)
    if self.mode not in MODES:
      raise PolicyError(f"CrossbarPolicy.mode={self.mode!r} is unknown; valid: {', '.join(MODES)}.")
    if self.score in DEPRECATED_SCORES:
      new = DEPRECATED_SCORES[self.score]
      warnings.warn(f"CrossbarPolicy(score={self.score!r}) is deprecated; use score={new!r} "
                    f"(the same score: a unit's sum of squared weights).", DeprecationWarning,
                    stacklevel=3)
      object.__setattr__(self, "score", new)
    if self.score not in SCORES:
      raise PolicyError(f"CrossbarPolicy.score={self.score!r} is unknown; valid: "
                        f"{', '.join(SCORES)}.")
    if self.mode == "sensitivity":
      if not isinstance(self.curves, Mapping) or not self.curves:
        raise PolicyError("CrossbarPolicy(mode='sensitivity') needs curves={layer: [[budget, "
                          "loss], ...]}; measure them with xbar_tfmot.sensitivity_curves.")
      object.__setattr__(self, "curves", {
          str(k): tuple((int(b), float(v)) for b, v in points) for k, points in self.curves.items()})
    elif self.curves is not None:
      raise PolicyError(f"CrossbarPolicy: curves are for mode='sensitivity', not {self.mode!r}.")
    self._check_objective()

  def _check_objective(self) -> None:
    if self.objective not in OBJECTIVES:
      raise PolicyError(f"CrossbarPolicy.objective={self.objective!r} is unknown; valid: "
                        f"{', '.join(OBJECTIVES)}.")
    if self.objective == "latency":
      raise PolicyError(f"CrossbarPolicy.{LATENCY_REFUSED}")
    if self.objective == "crossbars":
      if self.layer_costs is not None:
        raise PolicyError("CrossbarPolicy: layer_costs are for objective='energy', not "
                          "'crossbars'.")
      return
    if self.mode not in COST_MODES:
      raise PolicyError(
          f"CrossbarPolicy(objective={self.objective!r}) splits a model-wide budget by score "
          f"per unit of cost; valid: mode={' or '.join(map(repr, COST_MODES))}, not "
          f"{self.mode!r} (per_layer cuts every layer by the same fraction, in any unit; global "
          f"and sensitivity split crossbar counts).")
    object.__setattr__(self, "layer_costs", check_costs(
        f"CrossbarPolicy(objective={self.objective!r}).layer_costs", self.layer_costs))

  def get_config(self) -> dict[str, Any]:
    return {"targets": dict(self.targets),
            "leave_dense": None if self.leave_dense is None else list(self.leave_dense),
            "mode": self.mode, "score": self.score,
            "curves": None if self.curves is None else {
                k: [list(p) for p in v] for k, v in self.curves.items()},
            "objective": self.objective,
            "layer_costs": None if self.layer_costs is None else dict(self.layer_costs)}

  def __hash__(self):
    costs = None if self.layer_costs is None else tuple(sorted(self.layer_costs.items()))
    return hash((self.targets, self.leave_dense, self.mode, self.score, self.objective, costs))

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "CrossbarPolicy":
    return cls(**config)

  def plan(self, geometries: Sequence[LayerGeometry], reduction: float,
           default_leave_dense: bool = True) -> dict[str, int | None]:
    """Final crossbar budget of each layer (in model order), `None` for layers left dense.

    `reduction` is the schedule's final reduction; `default_leave_dense=False` turns off the
    first-convolution default (used for single layers and lists).
    """
    reduction = _check_reduction("schedule", "final_reduction", reduction)
    names = [g.name for g in geometries]
    dense_names = self._dense_names(geometries, default_leave_dense)
    explicit = {}
    for pattern, value in self.targets:
      hits = [n for n in names if _matches(pattern, n)]
      if not hits:
        raise PolicyError(
            f"CrossbarPolicy.targets: {pattern!r} matches no mapped layer; mapped layers: {names}.")
      for name in hits:
        if name in dense_names:
          raise PolicyError(
              f"CrossbarPolicy: layer {name!r} has a target ({pattern!r}) and is also left dense; "
              f"valid: one or the other.")
        explicit.setdefault(name, value)
    budgets: dict[str, int | None] = {}
    for g in geometries:
      if g.name in dense_names:
        budgets[g.name] = None
      elif g.name in explicit:
        budgets[g.name] = crossbar_budget(g.dense_crossbars, explicit[g.name])
      elif self.mode == "per_layer":
        budgets[g.name] = crossbar_budget(g.dense_crossbars, reduction)
    if self.mode != "per_layer":
      free = [g for g in geometries if g.name not in budgets]
      if self.mode != "global":  # a one-crossbar layer cannot be cut: it stays out of the pool
        for g in free:
          if g.dense_crossbars == 1:
            budgets[g.name] = 1
        free = [g for g in free if g.dense_crossbars > 1]
      if self.objective in COST_OBJECTIVES:
        spread = self._spread_cost(geometries, budgets, free, reduction)
      else:
        spread = _spread_global(geometries, budgets, free, reduction, self.mode)
      if self.mode == "sensitivity" and free:
        missing = [g.name for g in free if g.name not in self.curves]
        if missing:
          raise PolicyError(f"CrossbarPolicy(mode='sensitivity'): no curve for layers {missing}; "
                            f"curves cover {sorted(self.curves)}.")
        values = allocate_by_curves([self.curves[g.name] for g in free],
                                    [g.dense_crossbars for g in free], sum(spread.values()))
        spread = {g.name: b for g, b in zip(free, values)}
      budgets.update(spread)
    return {g.name: budgets[g.name] for g in geometries}

  def shared_pool(self, geometries: Sequence[LayerGeometry], reduction: float,
                  default_leave_dense: bool = True) -> dict[str, int | float]:
    """`{layer name: pool total}` of the layers whose budgets are re-split at every mask update
    (`global_score`; empty for other modes). The pool total is the same for all of them: in
    crossbars, or for `objective="energy"` in pJ (what the layers outside the pool leave of
    `(1 - s) * E`)."""
    if self.mode not in SHARED_MODES:
      return {}
    budgets = self.plan(geometries, reduction, default_leave_dense)
    fixed = self._fixed_names(geometries, default_leave_dense)
    pool = [g.name for g in geometries
            if g.name not in fixed and budgets[g.name] is not None and g.dense_crossbars > 1]
    if self.objective in COST_OBJECTIVES:
      outside = {g.name: budgets[g.name] for g in geometries if g.name not in pool}
      total = self._cost_total(geometries, reduction) - self._cost_of(geometries, outside)
    else:
      total = sum(budgets[n] for n in pool)
    return {n: total for n in pool}

  def _costs_for(self, geometries: Sequence[LayerGeometry]) -> dict[str, float]:
    missing = [g.name for g in geometries if g.name not in self.layer_costs]
    if missing:
      raise PolicyError(f"CrossbarPolicy(objective={self.objective!r}): no layer_costs for "
                        f"mapped layers {missing}; layer_costs cover {sorted(self.layer_costs)}. "
                        f"Compute them for this model (pruning.allocation.crossbar_costs).")
    return {g.name: self.layer_costs[g.name] for g in geometries}

  def _cost_total(self, geometries: Sequence[LayerGeometry], reduction: float) -> float:
    """The model-wide cost budget `(1 - s) * E`, `E` the dense cost of every mapped layer."""
    costs = self._costs_for(geometries)
    return (1.0 - reduction) * sum(g.dense_crossbars * costs[g.name] for g in geometries)

  def _cost_of(self, geometries: Sequence[LayerGeometry],
               budgets: Mapping[str, int | None]) -> float:
    """Cost of `budgets` (None: the layer dense)."""
    costs = self._costs_for(geometries)
    dense = {g.name: g.dense_crossbars for g in geometries}
    return sum(costs[n] * (dense[n] if b is None else b) for n, b in budgets.items())

  def _spread_cost(self, geometries, fixed: Mapping[str, int | None], free,
                   reduction: float) -> dict[str, int]:
    """A cost pool's split before any score is known: the most crossbars the pool's cost share
    buys, cheapest first (every unit scored alike); `UpdateCrossbarPruning` replaces it at the
    first mask update, `one_shot_budgets` by the kernels' scores."""
    if not free:
      return {}
    total = self._cost_total(geometries, reduction)
    taken = self._cost_of(geometries, fixed)
    left = total - taken
    costs = self._costs_for(free)
    low = sum(costs.values())
    high = sum(g.dense_crossbars * costs[g.name] for g in free)
    unit = {"energy": "pJ"}[self.objective]
    if not (fits(low, left) and left < high):
      raise PolicyError(
          f"CrossbarPolicy(mode={self.mode!r}, objective={self.objective!r}): a model-wide "
          f"reduction of {reduction} allows {total:.6g} of the dense "
          f"{total / (1 - reduction):.6g} {unit}, "
          f"but the dense-left and explicitly targeted layers take {taken:.6g}, leaving "
          f"{left:.6g} for {len(free)} layers, which need {low:.6g} to keep one crossbar each "
          f"and {high:.6g} to keep all; valid: a share between the two. Lower the targets or "
          f"leave fewer layers dense.")
    budgets = allocate_by_score([np.ones(g.dense_crossbars) for g in free], left, "mean",
                                costs=[costs[g.name] for g in free])
    return {g.name: b for g, b in zip(free, budgets)}

  def _fixed_names(self, geometries, default_leave_dense):
    names = [g.name for g in geometries]
    out = set(self._dense_names(geometries, default_leave_dense))
    for pattern, _ in self.targets:
      out.update(n for n in names if _matches(pattern, n))
    return out

  def reduction_for(self, name: str, reduction: float) -> float | None:
    """Final reduction of one layer known by name only (an unbuilt layer of a list), or None
    if it is left dense. Per-layer mode only; no first-convolution default."""
    if self.mode != "per_layer":
      raise PolicyError(
          f"CrossbarPolicy(mode={self.mode!r}) needs built layers to spread the budget; layer "
          f"{name!r} is not built. Build it (give it an input shape) or use mode='per_layer'.")
    if any(_matches(p, name) for p in self.leave_dense or ()):
      return None
    for pattern, value in self.targets:
      if _matches(pattern, name):
        return value
    return _check_reduction("schedule", "final_reduction", reduction)

  def _dense_names(self, geometries: Sequence[LayerGeometry], default: bool) -> set[str]:
    if self.leave_dense is None:
      convs = [g.name for g in geometries if g.kind in CONV_KINDS]
      return {convs[0]} if default and convs else set()
    names = [g.name for g in geometries]
    out = set()
    for pattern in self.leave_dense:
      hits = [n for n in names if _matches(pattern, n)]
      if not hits:
        raise PolicyError(
            f"CrossbarPolicy.leave_dense: {pattern!r} matches no mapped layer; mapped layers: "
            f"{names}.")
      out.update(hits)
    return out


def _spread_global(geometries, fixed: Mapping[str, int | None], free, reduction: float,
                   mode: str = "global"):
  total_dense = sum(g.dense_crossbars for g in geometries)
  total = crossbar_budget(total_dense, reduction)
  by_name = {g.name: g for g in geometries}
  taken = sum(by_name[n].dense_crossbars if b is None else b for n, b in fixed.items())
  left = total - taken
  free_dense = sum(g.dense_crossbars for g in free)
  if not free:
    return {}
  if not len(free) <= left <= free_dense:
    raise PolicyError(
        f"CrossbarPolicy(mode={mode!r}): a model-wide reduction of {reduction} allows {total} of "
        f"{total_dense} crossbars, but the dense-left and explicitly targeted layers take {taken}, "
        f"leaving {left} for {len(free)} layers with {free_dense} dense crossbars; valid: "
        f"between {len(free)} and {free_dense}. Lower the targets or leave fewer layers dense.")
  shares = [left * g.dense_crossbars / free_dense for g in free]
  budgets = [max(1, min(g.dense_crossbars, math.floor(s))) for g, s in zip(free, shares)]
  # Largest remainder first (ties by model order), one crossbar per layer per pass; more
  # passes only when clipping to [1, dense] moved the sum.
  order = sorted(range(len(free)), key=lambda i: (-(shares[i] - math.floor(shares[i])), i))
  missing = left - sum(budgets)
  while missing:
    step = 1 if missing > 0 else -1
    for i in order if step > 0 else reversed(order):
      if missing and 1 <= budgets[i] + step <= free[i].dense_crossbars:
        budgets[i] += step
        missing -= step
  return {g.name: b for g, b in zip(free, budgets)}


def unit_scores(geometry: LayerGeometry, magnitude, granularity: str) -> np.ndarray:
  """Scores of a layer's candidate units, sorted decreasing (`dense_crossbars` of them).

  `magnitude` is kernel-shaped; a unit's score is the sum of its squares over the unit (the
  energy when `magnitude` is the kernel; pass `sqrt(|w * dL/dw|)` for the saliency). Units are
  blocks at crossbar grain, and at column grain the chunks of `Kout` segments of each input
  group's segments sorted by score, as the projection forms them; keeping a layer's `b` best
  units is what the exact projection to `b` crossbars keeps.
  """
  import tensorflow as tf  # core may use TensorFlow (not Keras)
  magnitude = tf.convert_to_tensor(magnitude, tf.float32)
  if granularity == "crossbar":
    units = geometry.block_energy(magnitude)
  else:
    seg = tf.sort(geometry.segment_energy(magnitude), axis=1, direction="DESCENDING")
    seg = tf.pad(seg, [[0, 0], [0, geometry.g_out * geometry.kout - geometry.cout]])
    units = tf.reduce_sum(tf.reshape(seg, (geometry.g_in, geometry.g_out, geometry.kout)), 2)
  return -np.sort(-np.asarray(units, np.float64).ravel())


def canonical_score(score: str) -> str:
  """`score` under its current name (`energy` -> `magnitude`), without warning: for scores read
  back from saved models."""
  return DEPRECATED_SCORES.get(score, score)


def allocate_by_score(scores: Sequence[np.ndarray], total: int | float,
                      normalisation: str = "layer",
                      costs: Sequence[float] | None = None) -> list[int]:
  """Per-layer crossbar budgets from one ranking of normalised unit scores.

  `scores[l]` are layer `l`'s unit scores (any order, `dense_l` of them). Each score is divided
  by its layer's sum (`normalisation="layer"`; a layer with no score counts its units alike),
  by its layer's mean unit (`"mean"`) or by nothing (`"none"`); every layer keeps its best
  unit.

  Without `costs`, `total` counts crossbars: the other `total - L` places go to the best
  remaining units of all layers, so the budgets sum to `total`; ties go to the earlier layer,
  then the earlier unit. With `costs` (`costs[l] > 0`: the cost of one crossbar of layer `l`),
  `total` is a budget in that unit: after each layer's first unit, the remaining units are
  visited by score per unit of cost (decreasing; the same ties) and each is kept if it still
  fits (`fits`), the knapsack greedy: the budgets cost at most `total`, no layer could keep
  one more crossbar within it, and the kept score is within one unit's score of the best any
  split within `total` keeps. Equal costs give the ranking without costs. Deterministic.
  """
  if normalisation not in ("layer", "mean", "none"):
    raise PolicyError(f"allocate_by_score: normalisation={normalisation!r} is unknown; valid: "
                      f"layer, mean, none.")
  dense = [len(s) for s in scores]
  if costs is None:
    if not len(scores) <= total <= sum(dense):
      raise PolicyError(f"allocate_by_score: total={total} is invalid; valid: between "
                        f"{len(scores)} (one crossbar per layer) and {sum(dense)} (all dense).")
  else:
    costs = [float(c) for c in costs]
    if len(costs) != len(scores) or not all(math.isfinite(c) and c > 0 for c in costs):
      raise PolicyError(f"allocate_by_score: costs={costs} are invalid; valid: one finite cost "
                        f"> 0 per layer ({len(scores)}).")
    low = sum(costs)
    if not fits(low, total):
      raise PolicyError(f"allocate_by_score: total={total!r} is invalid; valid: at least {low} "
                        f"(one crossbar per layer).")
  values, layers, ranks = [], [], []
  for index, s in enumerate(scores):
    s = -np.sort(-np.asarray(s, np.float64).ravel())
    norm = {"layer": s.sum(), "mean": s.mean(), "none": 1.0}[normalisation]
    s = s / norm if norm > 0 else np.full_like(s, 1.0 / len(s))
    values.append(s[1:] if costs is None else s[1:] / costs[index])
    layers.append(np.full(len(s) - 1, index))
    ranks.append(np.arange(1, len(s)))
  values, layers, ranks = (np.concatenate(a) for a in (values, layers, ranks))
  order = np.lexsort((ranks, layers, -values))
  if costs is None:
    order = order[: total - len(scores)]
    return [1 + int(np.sum(layers[order] == i)) for i in range(len(scores))]
  budgets, spent, cheapest = [1] * len(scores), sum(costs), min(costs)
  for layer in layers[order]:
    if not fits(spent + cheapest, total):
      break
    if fits(spent + costs[layer], total):
      budgets[layer] += 1
      spent += costs[layer]
  return budgets


def fits(cost: float, budget: float) -> bool:
  """`cost <= budget` up to `COST_TOLERANCE` of the budget (sums of floats in another order)."""
  return cost <= budget + COST_TOLERANCE * abs(budget)


def check_costs(field: str, costs: Any) -> dict[str, float]:
  """`{layer name: cost > 0}` as floats; an error names `field`."""
  if not isinstance(costs, Mapping) or not costs:
    raise PolicyError(f"{field}={costs!r} is invalid; valid: {{layer name: cost of one crossbar "
                      f"> 0}} for every mapped layer (pruning.allocation.crossbar_costs).")
  out = {}
  for name, value in costs.items():
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
        math.isfinite(value) and value > 0):
      raise PolicyError(f"{field}[{name!r}]={value!r} is invalid; valid: a finite number > 0.")
    out[str(name)] = float(value)
  return out


def unit_costs(geometries: Sequence[LayerGeometry], hw: HardwareSpec,
               positions: Mapping[str, int], objective: str = "energy") -> dict[str, float]:
  """`{layer name: cost of one crossbar}` for `CrossbarPolicy(layer_costs=...)`: for `energy`,
  the cost model's energy per inference (pJ) of the dense layer over its dense crossbars
  (`core.cost.estimate_cost`: its output positions x input cycles activations of the array,
  ADC and DAC). Exact per crossbar unless `hw.skip_idle_columns` (then the layer's average:
  a partly used crossbar converts fewer columns). `positions`: output positions per layer."""
  if objective == "latency":
    raise PolicyError(f"unit_costs: {LATENCY_REFUSED}")
  if objective not in COST_OBJECTIVES:
    raise PolicyError(f"unit_costs: objective={objective!r} has no cost per crossbar; valid: "
                      f"{', '.join(COST_OBJECTIVES)}.")
  return {g.name: dense_cost(g, hw, positions[g.name]).energy_pj / g.dense_crossbars
          for g in geometries}


def allocate_by_curves(curves: Sequence[Sequence[tuple[int, float]]], dense: Sequence[int],
                       total: int) -> list[int]:
  """Per-layer budgets summing to `total` that minimise the summed interpolated curve values.

  `curves[l]` holds `(budget, loss)` points of layer `l`; the loss at other budgets is
  interpolated linearly (held constant outside the measured range). An exact min-plus knapsack
  over budgets `1..dense_l`; ties go to the larger budget of the later layer (deterministic).
  """
  if not len(dense) <= total <= sum(dense):
    raise PolicyError(f"allocate_by_curves: total={total} is invalid; valid: between "
                      f"{len(dense)} and {sum(dense)}.")
  costs = []
  for points, d in zip(curves, dense):
    points = sorted(points)
    xs = np.array([p[0] for p in points], np.float64)
    ys = np.array([p[1] for p in points], np.float64)
    costs.append(np.interp(np.arange(1, d + 1), xs, ys))  # cost[b - 1]
  inf = np.inf
  best = np.zeros(1)  # best[t]: least summed cost of the layers so far using t crossbars
  choices = []
  for cost in costs:
    d = len(cost)
    new = np.full(len(best) + d, inf)
    pick = np.zeros(len(best) + d, np.int64)
    for b in range(1, d + 1):
      cand = best + cost[b - 1]
      better = cand <= new[b:b + len(best)]
      new[b:b + len(best)] = np.where(better, cand, new[b:b + len(best)])
      pick[b:b + len(best)] = np.where(better, b, pick[b:b + len(best)])
    best = new
    choices.append(pick)
  out, t = [], total
  for pick in reversed(choices):
    b = int(pick[t])
    out.append(b)
    t -= b
  return out[::-1]


def _compile(field: str, pattern: Any) -> re.Pattern:
  if not isinstance(pattern, str):
    raise PolicyError(f"CrossbarPolicy.{field}: {pattern!r} is not a layer name or regex string.")
  try:
    return re.compile(pattern)
  except re.error as err:
    raise PolicyError(
        f"CrossbarPolicy.{field}: {pattern!r} is not a valid regex ({err}).") from None


def _matches(pattern: str, name: str) -> bool:
  return pattern == name or re.fullmatch(pattern, name) is not None
