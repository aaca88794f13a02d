"""Network-level crossbar allocation during training (`CrossbarPolicy(mode="global_score")`).

The wrappers of a `global_score` model carry the same `allocation` field (`plan.allocation_of`):
they share one pool of crossbars. Before each training batch whose step is a mask update,
`UpdateCrossbarPruning` calls `before_batch`: the pool's budget at that step falls along the
schedule like a layer's (`plan.budget_at` over the pool's dense total), all pool layers'
candidate units are ranked together by a score normalised per layer
(`core.policy.allocate_by_score`), and each wrapper's budget variable is set to its share. The
wrappers' mask update then projects to that budget (RPP or exact). So the budgets change only
at mask updates, the pool total is met exactly at every update, and everything is a function
of the weights and the step: deterministic for a seed. Flavour-neutral (both adapters call it).

Under `CrossbarPolicy(objective="energy")` the pool is counted in pJ per inference: the field
carries each layer's cost per crossbar (`costs`, from `crossbar_costs`), the pool's budget
falls from its dense cost to `total` along the schedule, units are taken by score per unit of
cost while they fit, and the pool's cost stays at or under its budget (it cannot be met
exactly: crossbars come whole).

Scores: `magnitude` and `relative_magnitude` read the kernels; `saliency` accumulates
`|w * dL/dw|` and `fisher` averages `(dL/dw)^2` (times `w^2`) over the batches given as
`UpdateCrossbarPruning(allocation_data=...)` (the compiled loss, inference mode).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.core.hardware import HardwareSpec
from xbar_tfmot.core.policy import (GRADIENT_SCORES, NORMALISATION, allocate_by_score,
                                    canonical_score, fits, unit_costs, unit_scores)
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning import plan


def shared_groups(wrappers: Sequence[Any]) -> list[list[Any]]:
  """Wrappers sharing a pool, grouped by their `allocation` field, in model order."""
  groups: dict[Any, list] = {}
  for w in wrappers:
    if getattr(w, "allocation", None):
      groups.setdefault(_frozen(w.allocation), []).append(w)
  return list(groups.values())


def _frozen(value: Any) -> Any:
  """A hashable copy of an `allocation` field (nested mappings, such as the layer attribute
  trackers Keras wraps dicts in, become sorted tuples)."""
  if hasattr(value, "items"):
    return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
  return value


def crossbar_costs(model: Any, spec: CrossbarSpec, hw: HardwareSpec,
                   objective: str = "energy") -> dict[str, float]:
  """`{layer name: cost of one crossbar}` of every mapped layer of `model` (plain, before
  pruning) on `hw`, for `CrossbarPolicy(objective=..., layer_costs=...)`: for `energy`, pJ
  per inference from the cost model (`core.policy.unit_costs`), the layer's output positions
  read from the model (`models.analog_model.output_positions`)."""
  from xbar_tfmot.models.analog_model import output_positions
  mapped = [introspection.unwrap(l) for l in introspection.iter_layers(model)
            if introspection.is_mapped(l)]
  geometries = [introspection.geometry_of(l, spec) for l in mapped]
  positions = output_positions(model, [g.name for g in geometries])
  return unit_costs(geometries, hw, positions, objective)


def _costs(group: Sequence[Any]) -> list[float] | None:
  """Each wrapper's cost per crossbar in a cost pool; None in a crossbar pool."""
  if group[0].allocation.get("objective", "crossbars") == "crossbars":
    return None
  return [float(group[0].allocation["costs"][w.geometry.name]) for w in group]


def pool_cost(group: Sequence[Any], budgets: Sequence[int]) -> int | float:
  """What `budgets` of the group's wrappers cost in the pool's unit (crossbars or pJ)."""
  costs = _costs(group)
  if costs is None:
    return sum(int(b) for b in budgets)
  return sum(c * b for c, b in zip(costs, budgets))


def check_fit(model: Any, wrappers: Sequence[Any], data: Any) -> None:
  """Refuses a fit in which shared pools could not be split: saliency without batches, or
  several batches per execution (the callback sees one batch of each)."""
  groups = shared_groups(wrappers)
  per_call = getattr(model, "steps_per_execution", None)  # both Kerases; mirrored under a strategy
  steps = 1 if per_call is None or not groups else int(_read(per_call))
  if steps > 1:
    raise PruningConfigError(
        f"UpdateCrossbarPruning: a shared crossbar budget (CrossbarPolicy(mode='global_score')) "
        f"is re-split before every mask-update batch, but the model was compiled with "
        f"steps_per_execution={steps}, which runs batches the callback never sees; valid: "
        f"compile with steps_per_execution=1.")
  for group in groups:
    score = group[0].allocation.get("score")
    if score in GRADIENT_SCORES and data is None:
      raise PruningConfigError(
          f"UpdateCrossbarPruning: CrossbarPolicy(score={score!r}) needs a few batches to take "
          "gradients on; pass UpdateCrossbarPruning(allocation_data=[(x, y), ...]) (training "
          "or validation images, not the test set).")


def check_pools_met(wrappers: Sequence[Any]) -> None:
  """Raises if a shared pool whose schedule has ended does not hold exactly its total.

  Only `UpdateCrossbarPruning` splits a pool; fit with another step callback (TFMOT's
  `UpdatePruningStep`), the layers keep their dense budgets and nothing is pruned.
  """
  for group in shared_groups(wrappers):
    first = group[0]
    end, step = first.pruning_schedule.end_step, int(_read(first.pruning_step))
    held = pool_cost(group, [w.current_budget() for w in group])
    total = first.allocation["total"]
    if _costs(group) is None:
      met, unit = held == total, "crossbars"
    else:  # a cost pool holds at most its budget
      met, unit = fits(held, total), f"pJ of {first.allocation['objective']}"
    if 0 <= end <= step and not met:
      raise PruningConfigError(
          f"strip_crossbar_pruning: layers {', '.join(w.layer.name for w in group)} share a "
          f"{first.allocation['mode']} budget of {total} {unit} but hold {held} after the "
          f"schedule's end_step {end}: they were fit without xbar_tfmot.UpdateCrossbarPruning, "
          f"the only callback that splits a model-wide budget (TFMOT's UpdatePruningStep does "
          f"not); valid: fit with callbacks=[xbar_tfmot.UpdateCrossbarPruning()].")


def _read(variable) -> np.ndarray:
  """A variable's value (the primary copy of a mirrored one), either flavour."""
  return np.asarray(tf.convert_to_tensor(variable))


def next_step(wrapper: Any) -> int:
  """The step of the wrapper's next training call (the wrapper adds 1 before updating)."""
  return int(_read(wrapper.pruning_step)) + 1


def pool_budget(group: Sequence[Any], step: int) -> int | float:
  """The pool's budget at `step`: its dense total down to `allocation.total` along the
  schedule, as `budget_at` does for one layer; in crossbars, or (a cost pool) in its cost
  unit, linear in the schedule's progress and not rounded."""
  schedule, total = group[0].pruning_schedule, group[0].allocation["total"]
  dense = pool_cost(group, [w.geometry.dense_crossbars for w in group])
  if _costs(group) is None:
    return int(plan.budget_at(schedule, dense, total, step))
  progress = min(float(schedule.progress(step)), 1.0)
  return dense - (dense - total) * progress


def set_budget(wrapper: Any, budget: int) -> None:
  if hasattr(wrapper, "pruning_vars"):  # tf_keras: TFMOT's threshold variable holds it
    wrapper.pruning_vars[0][2].assign(tf.cast(budget, wrapper.pruning_vars[0][2].dtype))
  else:
    wrapper.budget.assign(budget)


def magnitudes(model: Any, group: Sequence[Any], score: str, data: Any) -> list:
  """Per wrapper, a kernel-shaped array whose squares summed over a unit give its score."""
  kernels = [w._kernel() for w in group]
  score = canonical_score(score)  # `energy` in models saved before the rename
  if score not in GRADIENT_SCORES:
    return [_read(k) for k in kernels]
  return gradient_magnitudes(model, kernels, score, data)


def gradient_magnitudes(model: Any, kernels: Sequence[Any], score: str, data: Any) -> list:
  """`saliency`: `sqrt(sum |w * g|)`; `fisher`: `|w| * sqrt(mean g^2)`, over the batches of
  `data` (the compiled loss, inference mode); kernel-shaped, squared and summed per unit."""
  loss_fn = introspection.compiled_loss(model, f"CrossbarPolicy(score={score!r})")
  total = [np.zeros(tuple(k.shape), np.float64) for k in kernels]
  strategy = getattr(model, "distribute_strategy", None)
  replicated = strategy is not None and strategy.num_replicas_in_sync > 1
  batches = 0
  for batch in data:
    x, y = batch[0], batch[1]
    batches += 1

    def gradients():
      with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=False))
      return tape.gradient(loss, kernels)

    if replicated:  # mirrored kernels: every replica takes the same batch; read the first
      with strategy.scope():
        grads = [strategy.experimental_local_results(g)[0] for g in strategy.run(gradients)]
    else:
      grads = gradients()
    for acc, k, g in zip(total, kernels, grads):
      if g is not None:
        g = np.asarray(g, np.float64)
        acc += g * g if score == "fisher" else np.abs(_read(k).astype(np.float64) * g)
  if score == "fisher":
    return [np.abs(_read(k).astype(np.float64)) * np.sqrt(t / max(batches, 1))
            for k, t in zip(kernels, total)]
  return [np.sqrt(t) for t in total]


def before_batch(model: Any, wrappers: Sequence[Any], data: Any = None) -> dict[str, int] | None:
  """Sets every shared pool's per-layer budgets if the coming step is a mask update.

  Returns `{layer name: budget}` when budgets were set, else None.
  """
  out = {}
  for group in shared_groups(wrappers):
    first = group[0]
    step = next_step(first)
    if not bool(first.pruning_schedule.should_update(step)):
      continue
    total = pool_budget(group, step)
    mags = magnitudes(model, group, first.allocation["score"], data)
    scores = [unit_scores(w.geometry, m, w.granularity) for w, m in zip(group, mags)]
    normalisation = NORMALISATION[canonical_score(first.allocation["score"])]
    for w, budget in zip(group, allocate_by_score(scores, total, normalisation, _costs(group))):
      set_budget(w, budget)
      out[w.layer.name] = budget
  return out or None
