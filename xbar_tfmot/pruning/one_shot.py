"""One-shot crossbar pruning: the exact projection of trained kernels, without training.

`one_shot_masks` computes each pruned layer's 0/1 kernel mask at once, the exact projection of
its trained kernel onto its budget at a reduction (the same projection LGD-RPP anneals
towards, `core.projection.project`); `one_shot_budgets` gives those budgets: the policy's plan,
with a `global_score` pool split by the score of the trained kernels, as its last mask update
would split it; `gradual_cut` cuts along the pruning schedule's ramp instead (the validated
choice's candidates); `apply_masks` writes masks into a model's kernels. The `xbar-prune`
pipeline uses them when `train.prune_epochs = 0` and the benchmarks for their one-shot
baselines and the exact zeros after a masked fine-tuning.
"""

from __future__ import annotations

import numpy as np

from typing import Any

from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.core.policy import (GRADIENT_SCORES, NORMALISATION, CrossbarPolicy,
                                    allocate_by_score, unit_scores)
from xbar_tfmot.core.projection import project
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection


def one_shot_masks(model, spec: CrossbarSpec, policy: CrossbarPolicy, reduction: float,
                   granularity: str = "crossbar", data: Any = None) -> dict[str, np.ndarray]:
  """`{layer name: 0/1 kernel mask}`: the exact projection of each pruned layer's trained
  kernel onto its `one_shot_budgets` budget at `reduction` (layers left dense are absent).

  Why: a trained model pruned once, to exactly the crossbar count the budget allows, is the
  baseline every gradual procedure must beat, and the fallback when there is no time to train.
  """
  mapped = [l for l in introspection.iter_layers(model) if introspection.is_mapped(l)]
  geometries = [introspection.geometry_of(l, spec) for l in mapped]
  budgets = one_shot_budgets(model, spec, policy, reduction, granularity, data)
  return {g.name: np.asarray(project(g, introspection.mapped_kernel(layer), budgets[g.name],
                                    granularity))
          for layer, g in zip(mapped, geometries) if budgets[g.name] is not None}


def one_shot_budgets(model, spec: CrossbarSpec, policy: CrossbarPolicy, reduction: float,
                     granularity: str = "crossbar", data: Any = None) -> dict[str, int | None]:
  """Each mapped layer's crossbar budget (None: left dense) for a one-shot cut: `policy.plan`,
  except that a `global_score` pool is split by the score of the current kernels
  (`allocate_by_score`), the gradient scores over the batches of `data` (`[(x, y), ...]`, the
  compiled loss), as `UpdateCrossbarPruning` splits it at its last mask update (by score per
  unit of cost under `objective="energy"`)."""
  mapped = [l for l in introspection.iter_layers(model) if introspection.is_mapped(l)]
  geometries = {g.name: g for g in (introspection.geometry_of(l, spec) for l in mapped)}
  budgets = policy.plan(list(geometries.values()), reduction)
  pool = policy.shared_pool(list(geometries.values()), reduction)
  if not pool:
    return budgets
  names = list(pool)
  kernels = introspection.mapped_kernels(model, names, "one_shot_budgets")
  if policy.score in GRADIENT_SCORES:
    from xbar_tfmot.pruning.allocation import gradient_magnitudes
    if data is None:
      raise PruningConfigError(f"one_shot_budgets: CrossbarPolicy(score={policy.score!r}) "
                               f"needs batches; valid: data=[(x, y), ...] of training images.")
    magnitudes = gradient_magnitudes(model, [kernels[n] for n in names], policy.score, data)
  else:
    magnitudes = [np.asarray(kernels[n]) for n in names]
  scores = [unit_scores(geometries[n], m, granularity) for n, m in zip(names, magnitudes)]
  costs = None if policy.layer_costs is None else [policy.layer_costs[n] for n in names]
  split = allocate_by_score(scores, pool[names[0]], NORMALISATION[policy.score], costs)
  return {**budgets, **dict(zip(names, split))}


def ramp_reductions(reduction: float, steps: int, power: int = 3) -> list[float]:
  """The reductions of `steps` mask updates evenly spaced along `CrossbarPolynomialDecay`'s
  ramp from 0 to `reduction` (`s_k = s (1 - (1 - k / steps) ** power)`, k = 1..steps)."""
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise PruningConfigError(f"ramp steps={steps!r} is invalid; valid: an integer >= 1.")
  return [reduction * (1.0 - (1.0 - k / steps) ** power) for k in range(1, steps + 1)]


def gradual_cut(model, spec: CrossbarSpec, policy: CrossbarPolicy, reduction: float,
                granularity: str = "crossbar", data: Any = None,
                steps: int = 1) -> tuple[dict[str, int | None], dict[str, np.ndarray]]:
  """Cuts `model`'s kernels in place to `reduction` and returns `(budgets, masks)`.

  A `global_score` pool is re-split at each of `steps` updates along the pruning schedule's
  ramp (`ramp_reductions`) on the kernels the previous update left, as `UpdateCrossbarPruning`
  re-splits it during training (without the training between updates); other modes, and
  `steps=1`, cut once at `reduction` (`one_shot_budgets`, then the exact projection).

  Why: the split depends on the path. Each layer's scores are normalised by the layer's
  current total, which shrinks as the layer is cut, so a gradual cut evens out where a cut
  at once from the dense kernels does not (VGG8 width 0.5 at 90%, magnitude: 8/16/18/1/1/1
  crossbars in conv2-conv4, conv5, conv6, fc1 at once; 6-9 each along 16 steps; training
  ends at 7-8 each). A candidate scored on a split its training would not reach is scored
  on the wrong thing (docs/bench_quality.md, "Issue 28: the deep cuts").
  """
  mapped = {l.name: l for l in introspection.iter_layers(model) if introspection.is_mapped(l)}
  geometries = {n: introspection.geometry_of(l, spec) for n, l in mapped.items()}
  ramp = (ramp_reductions(reduction, steps)
          if policy.shared_pool(list(geometries.values()), reduction) else [reduction])
  for r in ramp:
    budgets = one_shot_budgets(model, spec, policy, r, granularity, data)
    masks = {n: np.asarray(project(geometries[n], introspection.mapped_kernel(mapped[n]), b,
                                   granularity)) for n, b in budgets.items() if b is not None}
    apply_masks(model, masks)
  return budgets, masks


def apply_masks(model, masks: dict[str, np.ndarray]) -> None:
  """Multiplies each named layer's kernel (wrapped or not) by its mask in place.

  Why: masks from `one_shot_masks` (or a fine-tuning that kept masks fixed) become exact zeros
  in the kernels, so the crossbars they free are counted and exported as free.
  """
  kernels = introspection.mapped_kernels(model, masks, "apply_masks")
  for name, mask in masks.items():
    kernels[name].assign(np.asarray(kernels[name]) * mask)
