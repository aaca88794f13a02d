"""The pruning plan and mask step both flavours share: which layers to wrap, to which budget,
and the mask at each update (used by the tf_keras and Keras 3 adapters alike).

Both adapters wrap layers, keep a mask and a step counter, and at the schedule's update steps
call `mask_at`; which layers they wrap and to which budget is `plan_model` / `plan_list`. The
adapters differ only in how they hook this into their Keras's wrapper, callbacks and cloning.
Everything here is TensorFlow and numpy (usable inside `tf.function`): no Keras import.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.core.geometry import KERNEL_RANK, LayerGeometry
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import crossbar_budget, project, stateless_seed
from xbar_tfmot.core.schedules import CrossbarSchedule, CrossbarTemperatureDecay
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection

CALLBACK_MISSING = (
    "Prune() wrapper requires the UpdatePruningStep callback to be provided during training. "
    "Please add it as a callback to your model.fit call: pass "
    "xbar_tfmot.UpdateCrossbarPruning() (or TFMOT's UpdatePruningStep on tf_keras).")

MAPPABLE = ", ".join([*KERNEL_RANK, *(f"{kind} ({parts[0]})"
                                     for kind, parts in introspection.PARTLY_MAPPED.items())])

SUBCLASSED = (
    "prune_crossbar can only prune a Sequential or functional keras model, a keras layer, or a "
    "list of keras layers; subclassed models ({}) are not supported.")


def allocation_of(policy: CrossbarPolicy, total: int | float) -> dict[str, Any]:
  """A wrapper's `allocation` field: it shares a pool of `total` crossbars (at the final
  reduction) with the other wrappers of the same field, re-split at every mask update. Under
  `objective="energy"` the total is in pJ, and `costs` holds each layer's cost per crossbar."""
  if policy.objective == "crossbars":
    return {"mode": policy.mode, "score": policy.score, "total": int(total)}
  return {"mode": policy.mode, "score": policy.score, "total": float(total),
          "objective": policy.objective, "costs": dict(policy.layer_costs)}


def budget_at(schedule: CrossbarSchedule, dense: int, final_budget: int, step) -> tf.Tensor:
  """Crossbar budget at `step` (int32): from `dense` down to `final_budget` along the schedule,
  `dense - round((dense - final_budget) * s(step) / s_final)`."""
  cut = tf.round(tf.cast(dense - final_budget, tf.float64) * schedule.progress(step))
  return dense - tf.cast(cut, tf.int32)


def mask_at(geometry: LayerGeometry, kernel, budget, granularity: str, projection: str,
            temperature: CrossbarTemperatureDecay, seed: int, layer_index: int,
            step) -> tf.Tensor:
  """The mask of one mask update: RPP's Gumbel-top-k sample seeded by (seed, layer, step) at
  the step's temperature, or the exact projection (`topk`, and RPP at temperature 0)."""
  if projection == "rpp":
    t = temperature(step)
    s = stateless_seed(seed, layer_index, step)
  else:
    t, s = 0.0, None
  return tf.cast(project(geometry, kernel, budget, granularity, t, s), kernel.dtype)


def holds_mask(geometry: LayerGeometry, final_budget: int, allocation: dict | None) -> bool:
  """True for a wrapper at its dense budget outside a shared pool: a projection onto every
  crossbar keeps everything, so it never projects and its mask stays as set (all ones, unless
  the caller holds a mask there, as `prune_layer_by_layer` does for a finished layer under
  hardware-aware training)."""
  return not allocation and final_budget >= geometry.dense_crossbars


def frozen(schedule: CrossbarSchedule, step) -> tf.Tensor:
  """True from the schedule's `end_step` on (never for `end_step=-1`)."""
  if schedule.end_step < 0:
    return tf.constant(False)
  return tf.cast(step, tf.int64) >= schedule.end_step


def straight_through_kernel(weight, mask, is_frozen) -> tf.Tensor:
  """`weight * mask` forward; until the mask freezes the gradient reaches every weight."""
  weight = tf.convert_to_tensor(weight)
  mask = tf.cast(mask, weight.dtype)
  passing = tf.cast(tf.logical_not(is_frozen), weight.dtype)
  return weight * mask + passing * (1.0 - mask) * (weight - tf.stop_gradient(weight))


def final_budget_of(geometry: LayerGeometry, final_budget: int | None,
                    target_reduction: float | None) -> int:
  """A wrapper's final budget, given directly or as a reduction (checked against the layer)."""
  if final_budget is None:
    return crossbar_budget(geometry.dense_crossbars, target_reduction)
  if not 1 <= final_budget <= geometry.dense_crossbars:
    raise PruningConfigError(
        f"layer {geometry.name!r}: final_budget={final_budget} is invalid; valid: 1 <= budget <= "
        f"{geometry.dense_crossbars} (its dense crossbar count).")
  return int(final_budget)


def check_wrappable(owner: str, layer: Any, final_budget, target_reduction) -> None:
  """The checks every crossbar wrapper runs on construction."""
  if not introspection.is_mapped(layer):
    raise PruningConfigError(
        f"{owner}: layer {layer.name!r} ({type(layer).__name__}) cannot be mapped "
        f"({introspection.unmapped_reason(layer) or 'no kernel'}); valid: {MAPPABLE}.")
  if final_budget is None and target_reduction is None:
    raise PruningConfigError(f"{owner}({layer.name!r}): give final_budget or target_reduction.")


def no_mapped_error(layers: Sequence[Any]) -> PruningConfigError:
  reasons = [f"{l.name}: {introspection.unmapped_reason(l)}" for l in layers
             if introspection.unmapped_reason(l)]
  detail = f" Not mapped: {'; '.join(reasons)}." if reasons else ""
  return PruningConfigError(
      f"prune_crossbar: nothing to prune: no mappable layer (valid: {MAPPABLE})."
      f"{detail}")


def plan_model(leaves: Sequence[Any], spec: CrossbarSpec, policy: CrossbarPolicy,
               reduction: float, wrap_all: bool = False) -> dict[int, dict[str, int]]:
  """`{id(layer): {"final_budget", "layer_index"}}` of the leaf layers of a model to wrap.

  `layer_index` counts the mapped layers in model order (it seeds the random numbers).
  Raises when nothing is mappable, a mapped layer is unbuilt, or no layer would lose a crossbar.
  `wrap_all` (hardware-aware training) also wraps the layers that stay dense, at their dense
  budget (a full mask), so that they see the chip too; nothing need lose a crossbar then.
  """
  mapped = [l for l in leaves if introspection.is_mapped(l)]
  if not mapped:
    raise no_mapped_error(leaves)
  unbuilt = [l.name for l in mapped if not l.built]
  if unbuilt:
    raise PruningConfigError(
        f"prune_crossbar: layers {unbuilt} are not built, so their crossbar counts are unknown; "
        f"build the model first (give it an input shape or call it once).")
  geometries = [introspection.geometry_of(l, spec) for l in mapped]
  budgets = policy.plan(geometries, reduction)
  pool = policy.shared_pool(geometries, reduction)
  plan = {}
  for index, (layer, g) in enumerate(zip(mapped, geometries)):
    budget = budgets[g.name]
    if g.name in pool:
      plan[id(layer)] = {"final_budget": budget, "layer_index": index,
                         "allocation": allocation_of(policy, pool[g.name])}
    elif budget is not None and budget < g.dense_crossbars:
      plan[id(layer)] = {"final_budget": budget, "layer_index": index}
    elif wrap_all:
      plan[id(layer)] = {"final_budget": g.dense_crossbars, "layer_index": index}
  if not plan:
    dense = {g.name: g.dense_crossbars for g in geometries}
    raise PruningConfigError(
        f"prune_crossbar: no layer would lose a crossbar at this target (dense crossbars per "
        f"layer: {dense}; budgets: {budgets}). Use smaller crossbars in the spec, a higher "
        f"reduction, or leave fewer layers dense.")
  return plan


def plan_list(items: Sequence[Any], spec: CrossbarSpec, policy: CrossbarPolicy,
              reduction: float, wrap_all: bool = False) -> list[dict[str, Any] | None]:
  """Per item of a layer list: the wrapper arguments, or None to leave it as is.

  Built layers get a `final_budget` from the policy's plan (no first-conv default); unbuilt
  ones a `target_reduction`, turned into a budget when the wrapper is built. `wrap_all`: as
  in `plan_model`, layers left dense are wrapped too (at their dense budget, reduction 0).
  """
  mapped = [l for l in items if introspection.is_mapped(l)]
  if not mapped:
    raise no_mapped_error(items)
  built = all(l.built for l in mapped)
  if built:
    geometries = [introspection.geometry_of(l, spec) for l in mapped]
    budgets = policy.plan(geometries, reduction, default_leave_dense=False)
    pool = policy.shared_pool(geometries, reduction, default_leave_dense=False)
  out: list[dict[str, Any] | None] = []
  for layer in items:
    if not introspection.is_mapped(layer):
      out.append(None)
      continue
    index = mapped.index(layer)
    if built:
      budget = budgets[layer.name]
      if budget is None and wrap_all:
        budget = geometries[index].dense_crossbars
      args = None if budget is None else {"final_budget": budget, "layer_index": index}
      if layer.name in pool:
        args["allocation"] = allocation_of(policy, pool[layer.name])
      out.append(args)
    else:
      target = policy.reduction_for(layer.name, reduction)
      if target is None and wrap_all:
        target = 0.0
      out.append(None if target is None else {"target_reduction": target, "layer_index": index})
  return out
