"""One-shot crossbar pruning: the exact projection of trained kernels, without training.

`one_shot_masks` computes each pruned layer's 0/1 kernel mask at once, the exact projection of
its trained kernel onto its budget at a reduction (the same projection LGD-RPP anneals
towards, `core.projection.project`); `one_shot_budgets` gives those budgets: the policy's plan,
with a `global_score` pool split by the score of the trained kernels, as its last mask update
would split it; `apply_masks` writes masks into a model's kernels. The `xbar-prune` pipeline uses them when `train.prune_epochs = 0` and
the benchmarks for their one-shot baselines and the exact zeros after a masked fine-tuning.
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


def apply_masks(model, masks: dict[str, np.ndarray]) -> None:
  """Multiplies each named layer's kernel (wrapped or not) by its mask in place.

  Why: masks from `one_shot_masks` (or a fine-tuning that kept masks fixed) become exact zeros
  in the kernels, so the crossbars they free are counted and exported as free.
  """
  kernels = introspection.mapped_kernels(model, masks, "apply_masks")
  for name, mask in masks.items():
    kernels[name].assign(np.asarray(kernels[name]) * mask)
