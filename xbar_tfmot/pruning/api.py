"""Public crossbar-pruning API: `prune_crossbar`, `strip_crossbar_pruning`, `crossbar_pruning_scope`.

The user experience mirrors TFMOT's `prune_low_magnitude`. Arguments are checked here,
flavour-neutrally; the work is dispatched on the Keras flavour of the object to the tf_keras
adapter (`pruning.tf_keras`, on TFMOT) or the Keras 3 adapter (`pruning.keras3`), both thin
layers over `pruning.adapter` and `pruning.plan`. TFMOT and tf_keras are imported only on the tf_keras path
(importing TFMOT sets `TF_USE_LEGACY_KERAS=1`).
"""

from __future__ import annotations

import random
from typing import Any

from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import GRANULARITIES
from xbar_tfmot.core.schedules import CrossbarConstant, CrossbarSchedule, CrossbarTemperatureDecay
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.models.introspection import FLAVOURS
from xbar_tfmot.pruning.adapter import adapter_for
from xbar_tfmot.pruning.hardware_aware import HardwareAware

PROJECTIONS = ("rpp", "topk")
REGROWTHS = ("reset", "straight_through")


def prune_crossbar(to_prune: Any, spec: CrossbarSpec | str, granularity: str = "crossbar",
                   schedule: CrossbarSchedule | None = None, projection: str = "rpp",
                   regrowth: str = "reset", policy: CrossbarPolicy | None = None,
                   seed: int | None = None,
                   temperature: float | CrossbarTemperatureDecay = 1.0,
                   hardware_aware: HardwareAware | None = None) -> Any:
  """Wraps the mapped layers (Conv2D, Conv1D, Dense; a SeparableConv2D's pointwise kernel) of a
  model, layer or list for crossbar pruning.

  Args:
    to_prune: a Sequential or functional model (nested models included), one layer, or a list
      of layers, tf_keras or Keras 3 (TensorFlow backend); the flavour of the object picks
      the adapter. Subclassed models are not supported. The returned model shares the original
      layers, as with `prune_low_magnitude`; compile it again.
    spec: the crossbar (`CrossbarSpec` or its string form, e.g. `"128x128"`).
    granularity: `crossbar` (whole crossbars are dropped) or `column` (column segments are
      dropped and the survivors of each input group packed into crossbars).
    schedule: the reduction schedule (`CrossbarConstant`, `CrossbarPolynomialDecay`); default
      `CrossbarConstant(0.5)`. Masks are recomputed every `schedule.frequency` steps between
      its begin and end steps and frozen after.
    projection: `rpp` (relaxant probabilistic projection: Gumbel-top-k sampling, temperature
      annealed to 0 at `end_step`) or `topk` (the exact projection at every update). Both
      follow the schedule's budget.
    regrowth: `reset` (default; it beat `straight_through` in tools/bench_quality.py: pruned
      weights are set to zero every step, as TFMOT does) or
      `straight_through` (pruned weights keep their values and receive the gradient through
      the mask, so they can win back at the next update; from `end_step` on the mask is
      frozen and they are zeroed; with `end_step=-1` nothing freezes, and
      `strip_crossbar_pruning` applies the last mask).
    policy: per-layer targets, layers left dense and the budget mode (`CrossbarPolicy`:
      `per_layer`, `global`, `global_score` re-split by `UpdateCrossbarPruning` at every mask
      update, `sensitivity` from measured curves); default: every mapped layer takes the
      schedule's reduction except the first convolution of a model. Layers whose budget
      equals their dense count are not wrapped.
    seed: seeds the stateless random numbers, with the layer index and the step; `None`
      draws one (stored in the layer config, so a reloaded model continues identically).
    temperature: RPP's initial temperature (annealed over the schedule's begin and end
      steps) or a `CrossbarTemperatureDecay`; ignored by `topk`.
    hardware_aware: a `HardwareAware` (docs/design.md, "Hardware-aware training"): every
      training call computes with the kernel the chip would hold (quantised, programmed with
      noise drawn afresh each step, re-masked; straight-through gradient). The layers the
      policy leaves dense are wrapped too, with a full mask, so that they see the chip.
      Evaluation and `strip_crossbar_pruning` see no noise. None (default): off.

  Returns:
    The model, layer or list with crossbar pruning wrappers.
  """
  spec = _check_spec(spec)
  _check_choice("granularity", granularity, GRANULARITIES)
  _check_choice("projection", projection, PROJECTIONS)
  _check_choice("regrowth", regrowth, REGROWTHS)
  schedule = CrossbarConstant(0.5) if schedule is None else schedule
  if not isinstance(schedule, CrossbarSchedule):
    raise PruningConfigError(
        f"prune_crossbar: schedule={schedule!r} is invalid; valid: a CrossbarConstant or "
        f"CrossbarPolynomialDecay.")
  policy = CrossbarPolicy() if policy is None else policy
  if not isinstance(policy, CrossbarPolicy):
    raise PruningConfigError(
        f"prune_crossbar: policy={policy!r} is invalid; valid: a CrossbarPolicy.")
  if not isinstance(temperature, CrossbarTemperatureDecay):
    temperature = CrossbarTemperatureDecay(temperature, schedule.begin_step, schedule.end_step)
  if seed is None:
    seed = random.SystemRandom().randrange(2**31)
  elif isinstance(seed, bool) or not isinstance(seed, int):
    raise PruningConfigError(
        f"prune_crossbar: seed={seed!r} is invalid; valid: an integer or None.")
  if hardware_aware is not None and not isinstance(hardware_aware, HardwareAware):
    raise PruningConfigError(
        f"prune_crossbar: hardware_aware={hardware_aware!r} is invalid; valid: an "
        f"xbar_tfmot.HardwareAware or None.")
  if hardware_aware is not None:
    hardware_aware.hardware.cells(spec)  # HardwareError if the chip and the spec disagree
  return adapter_for(_flavour_of(to_prune)).prune(
      to_prune, spec=spec, granularity=granularity, schedule=schedule, projection=projection,
      regrowth=regrowth, policy=policy, seed=seed, temperature=temperature,
      hardware_aware=hardware_aware)


def hardware_aware_model(to_prune: Any, spec: CrossbarSpec | str, hardware_aware: HardwareAware,
                         seed: int | None = None) -> Any:
  """Hardware-aware training without pruning (the dense baseline), as `quantize_model` is to
  TFMOT's quantisation-aware training: every mapped layer wrapped at its dense budget.

  `prune_crossbar(to_prune, spec, schedule=CrossbarConstant(0.0), hardware_aware=...,
  policy=CrossbarPolicy(leave_dense=()))`: fit it with `UpdateCrossbarPruning` (it counts the
  steps that seed the noise) and strip it with `strip_crossbar_pruning`.
  """
  if not isinstance(hardware_aware, HardwareAware):
    raise PruningConfigError(
        f"hardware_aware_model: hardware_aware={hardware_aware!r} is invalid; valid: an "
        f"xbar_tfmot.HardwareAware.")
  return prune_crossbar(to_prune, spec, schedule=CrossbarConstant(0.0), seed=seed,
                        policy=CrossbarPolicy(leave_dense=()), hardware_aware=hardware_aware)


def strip_crossbar_pruning(model: Any) -> Any:
  """A copy of `model` without crossbar (or TFMOT) wrappers, kernels multiplied by their masks.

  The pruned model is left untouched; the stripped layers are new, so the result is exact
  even when `straight_through` training stopped before `end_step`. Raises ValueError for a
  `global_score` model fit past `end_step` without `UpdateCrossbarPruning` (its layers never
  got their share of the budget).
  """
  return adapter_for(_flavour_of(model)).strip(model)


def crossbar_pruning_scope(flavour: str = "tf_keras"):
  """A custom-object scope in which crossbar-pruned models load (`.keras`, `.h5`, SavedModel).

  Needed on tf_keras; on Keras 3 (`flavour="keras3"`) the wrapper and schedules are registered
  serialisables, so `keras.saving.load_model` needs no scope, and this one is harmless.
  """
  if flavour not in FLAVOURS:
    raise PruningConfigError(f"crossbar_pruning_scope: flavour={flavour!r} is unknown; valid: "
                             f"{', '.join(FLAVOURS)}.")
  return adapter_for(flavour).scope()


def crossbar_wrappers(model: Any) -> list:
  """The crossbar-pruning wrappers of a model (either flavour), nested models included."""
  return adapter_for(_flavour_of(model)).crossbar_wrappers(model)


def _flavour_of(obj: Any) -> str:
  probe = obj
  if isinstance(obj, (list, tuple)):
    if not obj:
      raise PruningConfigError(
          "prune_crossbar: the list of layers is empty; valid: a non-empty list.")
    probe = obj[0]
  try:
    return introspection.flavour(probe)
  except TypeError:
    raise PruningConfigError(
        f"prune_crossbar can only prune a Sequential or functional keras model, a keras layer, "
        f"or a list of keras layers; got an object of type {type(obj).__name__}.") from None


def _check_spec(spec: Any) -> CrossbarSpec:
  if isinstance(spec, str):
    return CrossbarSpec.from_string(spec)
  if not isinstance(spec, CrossbarSpec):
    raise PruningConfigError(
        f"prune_crossbar: spec={spec!r} is invalid; valid: a CrossbarSpec or '128x128'.")
  return spec


def _check_choice(field: str, value: Any, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise PruningConfigError(
        f"prune_crossbar: {field}={value!r} is unknown; valid: {', '.join(valid)}.")
