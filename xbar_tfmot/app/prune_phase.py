"""The prune phase of `xbar-prune`: joint LGD pruning with fine-tuning, one-shot projection, or
the layer-by-layer procedure (`schedule.*`), to the budget of `allocation.*`."""

from __future__ import annotations

import math
from typing import Any

from xbar_tfmot.app import training
from xbar_tfmot.app.run_context import RunContext
from xbar_tfmot.core.policy import GRADIENT_SCORES, CrossbarPolicy
from xbar_tfmot.core.schedules import CrossbarPolynomialDecay, ramp_steps
from xbar_tfmot.pruning import one_shot

CALIBRATION_IMAGES = 1024  # training images that re-estimate BatchNorm for each candidate


def prune(run: RunContext) -> dict[str, Any]:
  """Reads the prune input (`checkpoints/reordered.keras`, else `baseline.keras`), prunes it by
  `schedule.procedure` (training checkpoints in `checkpoints/prune/`) and writes the stripped
  model to `checkpoints/pruned.keras`."""
  c = run.config
  model = run.load(run.prune_input())
  result: dict[str, Any] = {}
  if c.schedule.procedure == "layer_by_layer":
    stripped, outcomes = _layer_by_layer(run, model)
    result.update(history={}, layer_by_layer=outcomes,
                  validation_images=len(run.data.validation[1]))
  elif c.schedule.prune_epochs == 0:
    run.log(f"[prune] one-shot exact projection to reduction {c.allocation.reduction}")
    stripped, chosen = model, policy(run, model, result)
    one_shot.apply_masks(stripped, one_shot.one_shot_masks(
        model, run.spec, chosen, c.allocation.reduction, c.chip.granularity,
        _gradient_batches(run, None, chosen.score)))
    result["history"] = {}
  else:
    stripped, result["history"] = _joint(run, model, policy(run, model, result))
  run.save(run.recalibrated(stripped), run.path("pruned.keras"))
  if run.data is not None:
    result["accuracy"] = run.evaluate(stripped)
  return result


def policy(run: RunContext, model, result: dict[str, Any]) -> CrossbarPolicy:
  """The configured policy for `model` (the prune input, compiled); `sensitivity` measures its
  curves, and `validated` chooses among its candidates (recorded in `result["allocation"]`),
  on the validation images held out of training (`allocation.validation_images`)."""
  a = run.config.allocation
  run.compile(model, run.config.train.learning_rate)  # the loss the curves and gradients read
  costs = _costs(run, model, result) if a.objective != "crossbars" else None
  by_cost = {} if costs is None else {"objective": a.objective, "layer_costs": costs}
  if a.mode != "validated":
    curves = _curves(run, model) if a.mode == "sensitivity" else None
    return CrossbarPolicy(leave_dense=a.dense_layers, mode=a.mode, score=a.score, curves=curves,
                          **by_cost)
  from xbar_tfmot.pruning.allocation import crossbar_costs
  from xbar_tfmot.pruning.selection import candidate_policy, choose_allocation
  curves = _curves(run, model) if "sensitivity" in a.candidate_names else None
  candidates = {n: candidate_policy(n, a.dense_layers, curves, a.objective, costs)
                for n in a.candidate_names}
  images, updates = run.data.train[0][:CALIBRATION_IMAGES], _mask_updates(run)
  choice = choose_allocation(
      model, run.spec, candidates, a.reduction, run.config.chip.granularity,
      run.data.validation, gradient_data=_gradient_batches(run, None, "fisher"),
      calibration_images=images,
      costs=costs or crossbar_costs(model, run.spec, run.config.hardware.hardware_spec),
      train_data=run.data.train, finetune_steps=a.candidate_steps,
      learning_rate=run.config.train.learning_rate, batch_size=run.config.train.batch_size,
      seed=run.config.seed, ramp_steps=updates)
  tuned = f", fine-tuned for {a.candidate_steps} masked steps," if a.candidate_steps else ""
  run.log(f"[prune] allocation chosen on {len(run.data.validation[1])} held-out training "
          f"images ({training.format_seconds(choice.seconds)}), each candidate cut without "
          f"training (a global_score pool along the schedule's {updates} mask updates)"
          f"{tuned} scored after BatchNorm re-estimation on {len(images)} training images:")
  for line in choice.table():
    run.log(f"[prune]   {line}")
  result["allocation"] = {"chosen": choice.chosen, "seconds": round(choice.seconds, 1),
                          "candidates": [{k: v for k, v in r.items() if k != "budgets"}
                                         for r in choice.rows]}
  return choice.policy


def _mask_updates(run: RunContext) -> int:
  """How many mask updates the joint procedure's budget falls over (1 where the cut is at
  once: `prune_epochs = 0`, or per layer in `layer_by_layer`): the validated candidates are
  cut along as many (`selection.choose_allocation`'s `ramp_steps`)."""
  s = run.config.schedule
  if s.procedure == "layer_by_layer" or not s.prune_epochs:
    return 1
  end_step, frequency = ramp_steps(s.prune_epochs, _steps_per_epoch(run), s.ramp,
                                   s.updates_per_epoch)
  return max(1, end_step // frequency)


def _costs(run: RunContext, model, result: dict[str, Any]) -> dict[str, float]:
  """Each mapped layer's cost per crossbar for `allocation.objective` on `hardware.preset`
  (`crossbar_costs`), the budget recorded in `result["objective"]` and logged."""
  from xbar_tfmot.models import introspection
  from xbar_tfmot.pruning.allocation import crossbar_costs
  a, hw = run.config.allocation, run.config.hardware.hardware_spec
  costs = crossbar_costs(model, run.spec, hw, a.objective)
  mapped = [introspection.unwrap(l) for l in introspection.iter_layers(model)
            if introspection.is_mapped(l)]
  dense = sum(costs[l.name] * introspection.geometry_of(l, run.spec).dense_crossbars
              for l in mapped)
  result["objective"] = {"objective": a.objective, "hardware": hw.name,
                         "dense_nj": dense / 1e3, "budget_nj": (1 - a.reduction) * dense / 1e3}
  run.log(f"[prune] allocation by {a.objective} on {hw.name}: at most "
          f"{result['objective']['budget_nj']:.1f} of the dense {dense / 1e3:.1f} nJ per "
          f"inference (cost model), one crossbar of each layer costing "
          + ", ".join(f"{n} {c / 1e3:.3g}" for n, c in costs.items()) + " nJ")
  return costs


def _curves(run: RunContext, model) -> dict:
  """Sensitivity curves of `model` measured on the validation images."""
  from xbar_tfmot.pruning.sensitivity import sensitivity_curves
  measured = sensitivity_curves(model, run.spec, run.data.validation, run.config.chip.granularity)
  run.log(f"[prune] sensitivity curves: {measured['evaluations']} evaluations on "
          f"{len(run.data.validation[1])} held-out training images, "
          f"{training.format_seconds(measured['seconds'])}")
  return measured["curves"]


def _steps_per_epoch(run: RunContext) -> int:
  return math.ceil(len(run.data.train[1]) / run.config.train.batch_size)


def _joint(run: RunContext, model, chosen: CrossbarPolicy):
  """`prune_crossbar` with the `chosen` policy over `schedule.prune_epochs` epochs, then
  `schedule.finetune_epochs` with the masks frozen: `(stripped model, history)`."""
  from xbar_tfmot.pruning.api import prune_crossbar, strip_crossbar_pruning
  from xbar_tfmot.pruning.callbacks import CrossbarPruningSummaries, UpdateCrossbarPruning
  c, s, t = run.config, run.config.schedule, run.config.train
  end_step, frequency = ramp_steps(s.prune_epochs, _steps_per_epoch(run), s.ramp,
                                   s.updates_per_epoch)
  schedule = CrossbarPolynomialDecay(c.allocation.reduction, begin_step=0, end_step=end_step,
                                     frequency=frequency)
  run.log(f"[prune] LGD-{s.projection.upper()} {c.chip.granularity} grain to reduction "
          f"{c.allocation.reduction} on {run.spec}: budget falls over {end_step} steps, masks "
          f"every {frequency} steps, {s.prune_epochs} pruning + {s.finetune_epochs} fine-tuning "
          f"epochs")
  pruned = prune_crossbar(model, run.spec, granularity=c.chip.granularity, schedule=schedule,
                          projection=s.projection, regrowth=s.regrowth,
                          policy=chosen, seed=c.seed, temperature=s.temperature,
                          hardware_aware=_hardware_aware(run))
  targets = _teacher_targets(run) if t.distillation_weight else None
  run.compile(pruned, t.learning_rate, distill=targets is not None)
  allocation_data = (_gradient_batches(run, targets, chosen.score)
                     if chosen.mode == "global_score" else None)
  callbacks = [UpdateCrossbarPruning(allocation_data=allocation_data),
               *run.tensorboard("prune")]
  if c.report.tensorboard:
    callbacks.append(CrossbarPruningSummaries(str(run.workdir / "logs" / "prune")))

  def on_epoch(epoch: int) -> None:
    if epoch == s.prune_epochs:
      run.log(f"[finetune] masks frozen; {s.finetune_epochs} epochs at learning rate "
              f"{t.finetune_learning_rate}")

  pruned, history = run.fit(
      pruned, "prune", s.prune_epochs + s.finetune_epochs,
      lambda e: t.learning_rate if e < s.prune_epochs else t.finetune_learning_rate,
      callbacks, on_epoch, targets)
  history["phase_boundary"] = [s.prune_epochs]
  return strip_crossbar_pruning(pruned), history


def _hardware_aware(run: RunContext):
  """`train.hardware_aware`: the `HardwareAware` of `hardware.preset` with `hardware.set` (at
  `train.hardware_aware_variation` when > 0), or None."""
  from xbar_tfmot.pruning.hardware_aware import HardwareAware
  t = run.config.train
  if not t.hardware_aware:
    return None
  hw = run.config.hardware.hardware_spec
  if t.hardware_aware_variation:
    hw = hw.replace(variation=t.hardware_aware_variation)
  run.log(f"[prune] hardware-aware: training sees {hw.name} (variation {hw.variation:g} of "
          f"g_max" + (", stuck cells" if t.hardware_aware_stuck else "") + ")")
  return HardwareAware(hw, stuck=t.hardware_aware_stuck)


def _teacher_targets(run: RunContext) -> tuple:
  """`(train, test)` targets of the dense model for distillation (`train.distillation_*`)."""
  from xbar_tfmot.pruning.distillation import teacher_targets
  t = run.config.train
  teacher = run.load(run.prune_input())  # a copy: the pruned model shares its layers
  probabilities = (training.outputs_probabilities(teacher) if t.outputs == "auto"
                   else t.outputs == "probabilities")
  run.log(f"[prune] distillation from the dense model: weight {t.distillation_weight}, "
          f"temperature {t.distillation_temperature}")
  return tuple(teacher_targets(teacher, x, y, from_logits=not probabilities)
               for x, y in (run.data.train, run.data.test))


def _gradient_batches(run: RunContext, targets: tuple | None, score: str) -> list | None:
  """Up to four training batches for a gradient `score` (`saliency`, `fisher`), with the
  labels the compiled loss reads (the teacher's targets under distillation); None for the
  other scores."""
  batch = run.config.train.batch_size
  if score not in GRADIENT_SCORES:
    return None
  x, y = run.data.train
  y = y if targets is None else targets[0]
  return [(x[i:i + batch], y[i:i + batch]) for i in range(0, min(len(x), 4 * batch), batch)]


def _layer_by_layer(run: RunContext, model):
  """`schedule.procedure = "layer_by_layer"`: `(stripped model, per-layer outcome dicts)`; the
  stop rules' accuracy is measured on the validation images held out of the training images;
  with `train.hardware_aware` every step and fine-tuning trains against the chip.
  After each layer, `checkpoints/prune/layer_by_layer_<k>.keras` and `layer_by_layer.json`
  (the commit point) let a rerun continue from the next layer."""
  from xbar_tfmot.pruning.layer_by_layer import (LayerByLayerError, outcome_rows,
                                                 prune_layer_by_layer)
  c, s, t, rules = run.config, run.config.schedule, run.config.train, run.config.layer_by_layer
  x, y = run.data.train
  xv, yv = run.data.validation
  run.log(f"[prune] layer by layer, LGD-{s.projection.upper()} {c.chip.granularity} grain on "
          f"{run.spec}: reduction steps of {rules.reduction_step} up to {rules.max_reduction}, "
          f"{rules.step_epochs} epochs a step, {s.finetune_epochs} fine-tuning epochs a layer; "
          f"a step may lose {rules.max_accuracy_drop} accuracy on {len(yv)} held-out training "
          f"images")

  def train(m, epochs: int, *, callbacks, seed: int, finetune: bool) -> None:
    run.compile(m, t.finetune_learning_rate if finetune else t.learning_rate)
    training.fit_seeded(m, x, y, run.keras, epochs, t.batch_size, seed, callbacks)

  folder = run.path("prune")
  progress_file = folder / "layer_by_layer.json"
  resume = training.read_json(progress_file) if progress_file.exists() else None
  if resume is not None:
    saved = folder / str(resume.pop("model", ""))
    if not saved.is_file():
      raise LayerByLayerError(f"{progress_file} names no saved model ({saved.name!r} is "
                              f"missing); delete it to start the layer-by-layer phase over.")
    model = run.load(saved)

  def checkpoint(m, progress: dict[str, Any]) -> None:
    folder.mkdir(exist_ok=True)
    name = f"layer_by_layer_{len(progress['outcomes'])}.keras"
    run.save(m, folder / name)
    training.write_json(progress_file, {**progress, "model": name})
    for old in folder.glob("layer_by_layer_*.keras"):
      if old.name != name:
        old.unlink()

  pruned, outcomes = prune_layer_by_layer(
      model, run.spec, granularity=c.chip.granularity, rules=rules.rules, train=train,
      validate=lambda m: training.accuracy(m, xv, yv, batch_size=512),
      steps_per_epoch=_steps_per_epoch(run), step_epochs=rules.step_epochs,
      finetune_epochs=s.finetune_epochs, leave_dense=c.allocation.dense_layers, ramp=s.ramp,
      updates_per_epoch=s.updates_per_epoch, projection=s.projection, regrowth=s.regrowth,
      temperature=s.temperature, seed=c.seed, hardware_aware=_hardware_aware(run), log=run.log,
      checkpoint=checkpoint, resume=resume)
  return pruned, outcome_rows(outcomes)
