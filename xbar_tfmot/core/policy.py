"""Which mapped layers are pruned, and to how many crossbars (docs/design.md, "The policy").

Flavour-neutral: a plan is computed from the layers' `LayerGeometry` only, so it serves the
tf_keras and Keras 3 adapters alike.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.schedules import _check_reduction

MODES = ("per_layer", "global")
CONV_KINDS = ("Conv1D", "Conv2D")


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
  """

  targets: Any = ()
  leave_dense: Any = None
  mode: str = "per_layer"

  def __post_init__(self):
    targets = self.targets.items() if isinstance(self.targets, Mapping) else self.targets
    checked = []
    for pattern, value in targets:
      _compile(f"targets[{pattern!r}]", pattern)
      checked.append((pattern, _check_reduction("CrossbarPolicy", f"targets[{pattern!r}]", value)))
    object.__setattr__(self, "targets", tuple(checked))
    if self.leave_dense is not None:
      names = (self.leave_dense,) if isinstance(self.leave_dense, str) else tuple(self.leave_dense)
      for pattern in names:
        _compile("leave_dense", pattern)
      object.__setattr__(self, "leave_dense", names)
    if self.mode not in MODES:
      raise ValueError(f"CrossbarPolicy.mode={self.mode!r} is unknown; valid: {', '.join(MODES)}.")

  def get_config(self) -> dict[str, Any]:
    return {"targets": dict(self.targets),
            "leave_dense": None if self.leave_dense is None else list(self.leave_dense),
            "mode": self.mode}

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
        raise ValueError(
            f"CrossbarPolicy.targets: {pattern!r} matches no mapped layer; mapped layers: {names}.")
      for name in hits:
        if name in dense_names:
          raise ValueError(
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
    if self.mode == "global":
      free = [g for g in geometries if g.name not in budgets]
      budgets.update(_spread_global(geometries, budgets, free, reduction))
    return {g.name: budgets[g.name] for g in geometries}

  def reduction_for(self, name: str, reduction: float) -> float | None:
    """Final reduction of one layer known by name only (an unbuilt layer of a list), or None
    if it is left dense. Per-layer mode only; no first-convolution default."""
    if self.mode == "global":
      raise ValueError(
          f"CrossbarPolicy(mode='global') needs built layers to spread the budget; layer "
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
        raise ValueError(
            f"CrossbarPolicy.leave_dense: {pattern!r} matches no mapped layer; mapped layers: "
            f"{names}.")
      out.update(hits)
    return out


def _spread_global(geometries, fixed: Mapping[str, int | None], free, reduction: float):
  total_dense = sum(g.dense_crossbars for g in geometries)
  total = crossbar_budget(total_dense, reduction)
  by_name = {g.name: g for g in geometries}
  taken = sum(by_name[n].dense_crossbars if b is None else b for n, b in fixed.items())
  left = total - taken
  free_dense = sum(g.dense_crossbars for g in free)
  if not free:
    return {}
  if not len(free) <= left <= free_dense:
    raise ValueError(
        f"CrossbarPolicy(mode='global'): a model-wide reduction of {reduction} allows {total} of "
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


def _compile(field: str, pattern: Any) -> re.Pattern:
  if not isinstance(pattern, str):
    raise ValueError(f"CrossbarPolicy.{field}: {pattern!r} is not a layer name or regex string.")
  try:
    return re.compile(pattern)
  except re.error as err:
    raise ValueError(f"CrossbarPolicy.{field}: {pattern!r} is not a valid regex ({err}).") from None


def _matches(pattern: str, name: str) -> bool:
  return pattern == name or re.fullmatch(pattern, name) is not None
