"""The layer-by-layer procedure: each layer in turn is pruned with LGD-RPP until a stop rule
fires, then fine-tuned, before the next layer starts (docs/design.md, "The layer-by-layer
procedure").

One function, `prune_layer_by_layer` (public as `xbar_tfmot.prune_layer_by_layer`, with
`StopRules` and `LayerOutcome`), serves library users, the `xbar-prune` pipeline
(`prune.procedure = "layer_by_layer"`) and the benchmarks: the caller supplies how to train
and how to measure accuracy on a validation split carved from the training images.

Within one layer's stage the layer's crossbar budget is pushed down a grid of reductions
(`step`, `2 * step`, ...); every grid step is one short LGD-RPP run (`prune_crossbar` with a
policy that wraps only that layer), while the layers already done keep their masks fixed. The
stage stops at the first rule that fires:

- `accuracy_drop`: the validation accuracy fell more than `max_accuracy_drop` below the
  accuracy of the model before the procedure; the step is rolled back to the last one that
  passed;
- `crossbar_threshold`: the layer holds at most `crossbar_threshold` (Tc) crossbars;
- `max_reduction`: the layer reached `max_reduction` (its budget at that reduction).

With `hardware_aware`, every step and every fine-tuning trains against the chip, as the joint
procedure does: every mapped layer is wrapped with the `HardwareAware`, and a finished layer's
wrapper holds that layer's mask, so the chip's kernel keeps its pruned weights at zero.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import numpy as np

from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import GRANULARITIES, crossbar_budget
from xbar_tfmot.core.schedules import CrossbarConstant, CrossbarPolynomialDecay, ramp_steps
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning.hardware_aware import HardwareAware

STOP_REASONS = ("accuracy_drop", "crossbar_threshold", "max_reduction")


class LayerByLayerError(XbarError, ValueError):
  """A stop rule or an argument of `prune_layer_by_layer` is out of range."""


@dataclasses.dataclass(frozen=True)
class StopRules:
  """When a layer's stage stops, and the grid its reduction climbs.

  Attributes:
    max_accuracy_drop: a step whose validation accuracy is more than this below the accuracy
      of the model before the procedure is rejected and rolled back (0 <= drop <= 1).
    max_reduction: a layer's largest reduction (0 < max_reduction < 1).
    crossbar_threshold: Tc; a layer holding at most this many crossbars (one copy) stops.
    step: the reduction added at each grid step (0 < step < 1).
  """

  max_accuracy_drop: float = 0.02
  max_reduction: float = 0.9
  crossbar_threshold: int = 1
  step: float = 0.1

  def __post_init__(self):
    bad = invalid_rule(dataclasses.asdict(self))
    if bad:
      field, valid = bad
      raise LayerByLayerError(f"StopRules.{field}={getattr(self, field)!r} is invalid; "
                              f"valid: {valid}.")

  def reductions(self) -> list[float]:
    """The grid: `step, 2 * step, ...` up to and including `max_reduction`."""
    out, k = [], 1
    while True:
      r = min(round(k * self.step, 12), self.max_reduction)
      out.append(r)
      if r >= self.max_reduction:
        return out
      k += 1

  def floor(self, dense: int) -> int:
    """The fewest crossbars any rule but the accuracy lets a layer of `dense` reach."""
    return max(crossbar_budget(dense, self.max_reduction), self.crossbar_threshold)


def invalid_rule(rules: dict[str, Any]) -> tuple[str, str] | None:
  """`(field, what would be valid)` of the first bad `StopRules` field in `rules`, or None
  (the pipeline's config check reads the same table)."""
  threshold = rules["crossbar_threshold"]
  checks = (
      ("max_accuracy_drop", 0.0 <= rules["max_accuracy_drop"] <= 1.0,
       "a number from 0 to 1 (a fraction of validation accuracy)"),
      ("max_reduction", 0.0 < rules["max_reduction"] < 1.0, "a number strictly between 0 and 1"),
      ("crossbar_threshold", isinstance(threshold, int) and not isinstance(threshold, bool)
       and threshold >= 1, "an integer >= 1"),
      ("step", 0.0 < rules["step"] < 1.0, "a number strictly between 0 and 1"),
  )
  return next(((field, valid) for field, ok, valid in checks if not ok), None)


@dataclasses.dataclass(frozen=True)
class LayerOutcome:
  """What one layer's stage did (crossbars of one copy, at the procedure's granularity)."""

  layer: str
  dense: int
  before: int
  after: int
  steps: int  # grid steps trained, the rejected one included
  stop: str  # one of STOP_REASONS
  accuracy: float  # validation accuracy after the layer's fine-tuning
  rejected_accuracy: float | None  # validation accuracy of the rolled-back step

  @property
  def reduction(self) -> float:
    """Fraction of the layer's dense crossbars the procedure removed."""
    return 1.0 - self.after / self.dense

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "reduction": self.reduction}


TrainFn = Callable[..., None]


def prune_layer_by_layer(model, spec: CrossbarSpec, *, granularity: str, rules: StopRules,
                         train: TrainFn, validate: Callable[[Any], float], steps_per_epoch: int,
                         step_epochs: int = 1, finetune_epochs: int = 1,
                         leave_dense: Any = None, ramp: float = 0.75,
                         updates_per_epoch: int = 4, projection: str = "rpp",
                         regrowth: str = "reset", temperature: float = 1.0, seed: int = 0,
                         hardware_aware: HardwareAware | None = None,
                         log: Callable[[str], None] = lambda line: None,
                         checkpoint: Callable[[Any, dict[str, Any]], None] | None = None,
                         resume: dict[str, Any] | None = None
                         ) -> tuple[Any, list[LayerOutcome]]:
  """Prunes the mapped layers one after the other, each until a stop rule fires.

  Why: each layer lands on its own crossbar count, as far as the validation accuracy allows,
  instead of on a reduction fixed beforehand (docs/design.md, "The layer-by-layer procedure").

  Args:
    model: a Sequential or functional model of either flavour; its layers are trained in
      place (as `prune_crossbar` shares them), so pass a copy to keep the original.
    spec, granularity: the crossbar and `crossbar` or `column` grain (what is counted).
    rules: the stop rules and the reduction grid.
    train: `train(model, epochs, *, callbacks, seed, finetune)` compiles `model` (it is a
      new wrapped model at every step) and fits it `epochs` epochs on the training images
      with `callbacks`, seeded by `seed`; `finetune` is False for LGD-RPP steps and True for
      the fine-tuning that ends a layer's stage.
    validate: accuracy of a model on a validation split carved from the training images
      (never the test set); it drives the `accuracy_drop` rule.
    steps_per_epoch: training batches per epoch (to place the schedule's steps).
    step_epochs: epochs of one grid step; its budget falls over the first `ramp` of them
      and the mask is updated `updates_per_epoch` times an epoch, then frozen.
    finetune_epochs: epochs of fine-tuning after each layer's stage (every mask fixed).
    leave_dense: layers never pruned, as `CrossbarPolicy.leave_dense` (None: the first conv).
    projection, regrowth, temperature: passed to `prune_crossbar`.
    seed: makes the run deterministic; every step and fine-tuning gets its own seed from it.
    hardware_aware: a `HardwareAware`: every step and every fine-tuning trains against the
      chip (`prune_crossbar`'s argument; the fine-tuning wraps the model at its dense budgets,
      as `hardware_aware_model` does), each finished layer's wrapper holding its mask. None
      (default): off.
    log: receives one line per step and per layer.
    checkpoint: called after each layer's stage with `(model, progress)`, the model so far
      and a JSON-serialisable dict, before that layer's line is logged.
    resume: a `progress` from `checkpoint`, with the model saved beside it as `model`: the
      procedure continues after the layers it lists and ends as an uninterrupted run would.

  Returns:
    `(model, outcomes)`: the pruned model without wrappers, and one `LayerOutcome` per pruned
    layer, in model order.
  """
  from xbar_tfmot.pruning.api import prune_crossbar, strip_crossbar_pruning
  from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning, fixed_masks
  if not isinstance(rules, StopRules):
    raise LayerByLayerError(f"prune_layer_by_layer: rules={rules!r} is invalid; valid: a "
                            f"StopRules.")
  for name, value, low in (("steps_per_epoch", steps_per_epoch, 1),
                           ("step_epochs", step_epochs, 1), ("finetune_epochs", finetune_epochs, 0),
                           ("updates_per_epoch", updates_per_epoch, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise LayerByLayerError(f"prune_layer_by_layer: {name}={value!r} is invalid; valid: an "
                              f"integer >= {low}.")
  if not 0.0 < ramp <= 1.0:
    raise LayerByLayerError(f"prune_layer_by_layer: ramp={ramp!r} is invalid; valid: "
                            f"0 < ramp <= 1.")
  if hardware_aware is not None:
    if not isinstance(hardware_aware, HardwareAware):
      raise LayerByLayerError(f"prune_layer_by_layer: hardware_aware={hardware_aware!r} is "
                              f"invalid; valid: an xbar_tfmot.HardwareAware or None.")
    hardware_aware.hardware.cells(spec)  # HardwareError now if the chip and the spec disagree
  geometries = _geometries(model, spec)
  plan = CrossbarPolicy(leave_dense=leave_dense).plan(geometries, 0.5)  # any reduction: only
  # which layers the policy leaves dense (None) is read
  order = [g for g in geometries if plan[g.name] is not None]
  mapped = [g.name for g in geometries]
  end_step, frequency = ramp_steps(step_epochs, steps_per_epoch, ramp, updates_per_epoch)
  if resume is None:
    reference, outcomes = float(validate(model)), []
    log(f"[layer_by_layer] {len(order)} layers in order {', '.join(g.name for g in order)}; "
        f"validation accuracy before: {reference:.4f}")
  else:
    reference, outcomes = _resumed(resume, [g.name for g in order])
    for o in outcomes:
      held = count_crossbars(model, o.layer, spec, granularity)
      if held != o.after:
        raise LayerByLayerError(
            f"prune_layer_by_layer: resume says layer {o.layer!r} ended with {o.after} "
            f"crossbars but the model holds {held}; valid: the model saved by the checkpoint "
            f"that wrote this progress.")
    log(f"[layer_by_layer] resuming after layer {outcomes[-1].layer} ({len(outcomes)} of "
        f"{len(order)}); validation accuracy before the procedure: {reference:.4f}")
  masks = {o.layer: _kernel_mask(model, o.layer) for o in outcomes}
  for position, g in enumerate(order[len(outcomes):], start=len(outcomes)):
    before = current = count_crossbars(model, g.name, spec, granularity)
    stop, steps, rejected = None, 0, None
    if current <= rules.crossbar_threshold:
      stop = "crossbar_threshold"
    elif current <= rules.floor(g.dense_crossbars):
      stop = "max_reduction"
    previous = 1.0 - current / g.dense_crossbars
    for k, reduction in enumerate(rules.reductions() if stop is None else ()):
      budget = max(crossbar_budget(g.dense_crossbars, reduction), rules.crossbar_threshold)
      if budget < current:
        target = 1.0 - budget / g.dense_crossbars  # exactly `budget` under crossbar_budget
        steps += 1
        snapshot = model.get_weights()
        policy = CrossbarPolicy(
            targets={re.escape(g.name): target},
            leave_dense=[re.escape(n) for n in mapped if n != g.name])
        schedule = CrossbarPolynomialDecay(target, begin_step=0, end_step=end_step,
                                           initial_reduction=min(previous, target),
                                           frequency=frequency)
        step_seed = _seed(seed, position, k + 1)
        pruned = prune_crossbar(model, spec, granularity=granularity, schedule=schedule,
                                projection=projection, regrowth=regrowth, policy=policy,
                                seed=step_seed, temperature=temperature,
                                hardware_aware=hardware_aware)
        _hold_masks(pruned, masks)
        train(pruned, step_epochs, seed=step_seed, finetune=False,
              callbacks=[UpdateCrossbarPruning(), *fixed_masks(pruned, masks)])
        candidate = strip_crossbar_pruning(pruned)
        reached = count_crossbars(candidate, g.name, spec, granularity)
        if reached > budget:
          raise LayerByLayerError(
              f"layer {g.name!r}: LGD-RPP left {reached} crossbars for a budget of {budget}; "
              f"the schedule did not reach its end step (train must fit every epoch asked).")
        accuracy = float(validate(candidate))
        log(f"[layer_by_layer] {g.name}: step {steps} to {budget} of {g.dense_crossbars} "
            f"crossbars ({reduction:.0%} grid), validation accuracy {accuracy:.4f}")
        if reference - accuracy > rules.max_accuracy_drop:
          model.set_weights(snapshot)
          stop, rejected = "accuracy_drop", accuracy
          break
        model, current, previous = candidate, reached, target
      if current <= rules.crossbar_threshold:
        stop = "crossbar_threshold"
        break
      if reduction >= rules.max_reduction:
        stop = "max_reduction"
        break
    masks[g.name] = _kernel_mask(model, g.name)
    if finetune_epochs and current < before:  # a stage that kept nothing has nothing to mend
      finetune_seed = _seed(seed, position, 0)
      if hardware_aware is None:
        train(model, finetune_epochs, seed=finetune_seed, finetune=True,
              callbacks=fixed_masks(model, masks))
      else:  # every layer wrapped at its dense budget, seeing the chip
        wrapped = prune_crossbar(model, spec, granularity=granularity,
                                 schedule=CrossbarConstant(0.0), policy=CrossbarPolicy(
                                     leave_dense=()), seed=finetune_seed,
                                 hardware_aware=hardware_aware)
        _hold_masks(wrapped, masks)
        train(wrapped, finetune_epochs, seed=finetune_seed, finetune=True,
              callbacks=[UpdateCrossbarPruning(), *fixed_masks(wrapped, masks)])
        model = strip_crossbar_pruning(wrapped)
    outcome = LayerOutcome(layer=g.name, dense=g.dense_crossbars, before=before, after=current,
                           steps=steps, stop=stop, accuracy=float(validate(model)),
                           rejected_accuracy=rejected)
    outcomes.append(outcome)
    if checkpoint is not None:
      checkpoint(model, {"reference": reference,
                         "outcomes": [dataclasses.asdict(o) for o in outcomes]})
    log(f"[layer_by_layer] {g.name}: {before} -> {current} crossbars "
        f"({outcome.reduction:.0%} fewer than dense), stopped by {stop}; validation accuracy "
        f"after fine-tuning {outcome.accuracy:.4f}")
  return model, outcomes


def _hold_masks(wrapped, masks: dict[str, np.ndarray]) -> None:
  """The wrappers of the layers in `masks` (finished layers, wrapped at their dense budget
  under hardware-aware training) take their masks and keep them (`plan.holds_mask`), so the
  chip's kernel, re-masked after its noise, keeps their pruned weights at exactly zero."""
  from xbar_tfmot.pruning.api import crossbar_wrappers
  for wrapper in crossbar_wrappers(wrapped):
    if wrapper.layer.name in masks:
      wrapper.mask.assign(masks[wrapper.layer.name])


def _resumed(progress: dict[str, Any], order: list[str]) -> tuple[float, list[LayerOutcome]]:
  """`(reference accuracy, finished outcomes)` of a `checkpoint` progress; its layers must be
  the first of `order`."""
  try:
    reference = float(progress["reference"])
    outcomes = [LayerOutcome(**o) for o in progress["outcomes"]]
  except (KeyError, TypeError, ValueError) as e:
    raise LayerByLayerError(f"prune_layer_by_layer: resume={progress!r} is invalid ({e}); "
                            f"valid: a progress dict passed to checkpoint.") from None
  done = [o.layer for o in outcomes]
  if not done or done != order[:len(done)]:
    raise LayerByLayerError(f"prune_layer_by_layer: resume lists layers {done}; valid: the "
                            f"first of this model's order {order}.")
  return reference, outcomes


def count_crossbars(model, name: str, spec: CrossbarSpec, granularity: str) -> int:
  """Crossbars of one copy of layer `name` as its kernel's zeros stand (`packed` at column
  grain, `blocks` at crossbar grain)."""
  if granularity not in GRANULARITIES:
    raise LayerByLayerError(f"granularity={granularity!r} is unknown; valid: "
                            f"{', '.join(GRANULARITIES)}.")
  layer = introspection.unwrap(_layer(model, name))
  g = introspection.geometry_of(layer, spec)
  counts = g.counts(introspection.effective_kernel(_layer(model, name)))
  total = counts.packed if granularity == "column" else counts.blocks
  return total // (counts.dense // g.dense_crossbars)


def _geometries(model, spec: CrossbarSpec) -> list[LayerGeometry]:
  inners = [introspection.unwrap(l) for l in introspection.iter_layers(model)]
  return [introspection.geometry_of(l, spec) for l in inners if introspection.is_mapped(l)]


def _layer(model, name: str):
  for layer in introspection.iter_layers(model):
    if layer.name == name or introspection.unwrap(layer).name == name:
      return layer
  raise LayerByLayerError(f"layer {name!r} is not in model {model.name!r}.")


def _kernel_mask(model, name: str) -> np.ndarray:
  kernel = introspection.mapped_kernel(introspection.unwrap(_layer(model, name)))
  return (np.asarray(kernel) != 0).astype(np.float32)


def _seed(seed: int, position: int, step: int) -> int:
  """A distinct seed per (run seed, layer position, grid step; 0 for the fine-tuning)."""
  return int(np.random.SeedSequence([seed, position, step]).generate_state(1)[0] % 2**31)


def outcome_rows(outcomes: Sequence[LayerOutcome]) -> list[dict[str, Any]]:
  """The outcomes as JSON-ready dicts (the pipeline's `state.json` and `metrics.json`)."""
  return [o.to_dict() for o in outcomes]
