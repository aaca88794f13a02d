"""One-shot crossbar pruning: the exact projection of trained kernels, without training.

`one_shot_masks` computes each pruned layer's 0/1 kernel mask at once, the exact projection of
its trained kernel onto the budget `CrossbarPolicy.plan` gives it at a reduction (the same
projection LGD-RPP anneals towards, `core.projection.project`); `apply_masks` writes masks
into a model's kernels. The `xbar-prune` pipeline uses them when `train.prune_epochs = 0` and
the benchmarks for their one-shot baselines and the exact zeros after a masked fine-tuning.
"""

from __future__ import annotations

import numpy as np

from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import project
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection


def one_shot_masks(model, spec: CrossbarSpec, policy: CrossbarPolicy, reduction: float,
                   granularity: str = "crossbar") -> dict[str, np.ndarray]:
  """`{layer name: 0/1 kernel mask}`: the exact projection of each pruned layer's trained
  kernel onto its `policy` budget at `reduction` (layers left dense are absent).

  Why: a trained model pruned once, to exactly the crossbar count the budget allows, is the
  baseline every gradual procedure must beat, and the fallback when there is no time to train.
  """
  mapped = [l for l in introspection.iter_layers(model) if introspection.is_mapped(l)]
  geometries = [introspection.geometry_of(l, spec) for l in mapped]
  budgets = policy.plan(geometries, reduction)
  return {g.name: np.asarray(project(g, introspection.mapped_kernel(layer), budgets[g.name],
                                    granularity))
          for layer, g in zip(mapped, geometries) if budgets[g.name] is not None}


def apply_masks(model, masks: dict[str, np.ndarray]) -> None:
  """Multiplies each named layer's kernel (wrapped or not) by its mask in place.

  Why: masks from `one_shot_masks` (or a fine-tuning that kept masks fixed) become exact zeros
  in the kernels, so the crossbars they free are counted and exported as free.
  """
  kernels = introspection.mapped_kernels(model, masks, "apply_masks")
  for name, mask in masks.items():
    kernels[name].assign(np.asarray(kernels[name]) * mask)
