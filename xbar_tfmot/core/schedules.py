"""Crossbar reduction schedules and the RPP temperature schedule (docs/design.md, "Schedules and budgets").

A reduction schedule answers, at a training step, whether the masks are recomputed now and
which crossbar reduction they aim at: `schedule(step) -> (should_update, reduction)`, both
tensors, usable inside `tf.function`. This is the call protocol of TFMOT's `PruningSchedule`,
but these classes do not inherit from it: importing TFMOT sets `TF_USE_LEGACY_KERAS=1` for the
whole process, and the same schedules serve the Keras 3 path. The tf_keras adapter registers
them as virtual subclasses of TFMOT's `PruningSchedule` (an ABC), so `isinstance` holds there
without an import here; the Keras 3 adapter registers them as Keras 3 serialisables
(`xbar_tfmot>CrossbarConstant`, ...), which `get_config` / `from_config` support.

Masks are recomputed every `frequency` steps from `begin_step` to `end_step`, and always at
`end_step` itself, so the last update is the exact projection at the final budget; after
`end_step` they are frozen. `end_step=-1` (constant schedule only) never freezes.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import tensorflow as tf

from xbar_tfmot.core.errors import ScheduleError


def _check_reduction(owner: str, name: str, value: Any, error: type = ScheduleError) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
    raise error(
        f"{owner}.{name}={value!r} is invalid; valid: a number with 0 <= {name} < 1.")
  return float(value)


def _check_int(owner: str, name: str, value: Any, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
    raise ScheduleError(f"{owner}.{name}={value!r} is invalid; valid: an integer >= {low}.")
  return int(value)


def _check_steps(owner: str, begin_step: Any, end_step: Any, allow_forever: bool,
                 strict: bool) -> tuple[int, int]:
  begin = _check_int(owner, "begin_step", begin_step, 0)
  if allow_forever and end_step == -1:
    return begin, -1
  end = _check_int(owner, "end_step", end_step, -1 if allow_forever else 0)
  if end < begin or (strict and end == begin):
    relation = ">" if strict else ">="
    forever = " (or -1: never stop)" if allow_forever else ""
    raise ScheduleError(
        f"{owner}.end_step={end_step} is before begin_step={begin_step}; valid: end_step "
        f"{relation} begin_step{forever}.")
  return begin, end


class _Config:
  """`from_config`, equality and repr from `get_config`, shared by every schedule."""

  def get_config(self) -> dict[str, Any]:
    raise NotImplementedError

  @classmethod
  def from_config(cls, config: Mapping[str, Any]):
    return cls(**config)

  def __eq__(self, other):
    return type(self) is type(other) and self.get_config() == other.get_config()

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"{type(self).__name__}({args})"


class CrossbarSchedule(_Config):
  """Base of the reduction schedules: when to update, and the target reduction at a step."""

  begin_step: int
  end_step: int
  frequency: int

  @property
  def final_reduction(self) -> float:
    raise NotImplementedError

  def reduction(self, step) -> tf.Tensor:
    """The target crossbar reduction at `step`, float64."""
    raise NotImplementedError

  def progress(self, step) -> tf.Tensor:
    """Fraction of the final reduction reached at `step` (float64, 1 from `end_step` on)."""
    if self.final_reduction == 0.0:
      return tf.ones([], tf.float64)
    return self.reduction(step) / self.final_reduction

  def should_update(self, step) -> tf.Tensor:
    step = tf.cast(step, tf.int64)
    after_begin = step >= self.begin_step
    if self.end_step < 0:
      in_range = after_begin
      turn = tf.equal(tf.math.floormod(step - self.begin_step, self.frequency), 0)
    else:
      in_range = tf.logical_and(after_begin, step <= self.end_step)
      turn = tf.logical_or(
          tf.equal(tf.math.floormod(step - self.begin_step, self.frequency), 0),
          tf.equal(step, self.end_step))
    return tf.logical_and(in_range, turn)

  def __call__(self, step) -> tuple[tf.Tensor, tf.Tensor]:
    """`(should_update, reduction)` at `step`, the protocol of TFMOT's `PruningSchedule`."""
    return self.should_update(step), tf.cast(self.reduction(step), tf.float32)


class CrossbarConstant(CrossbarSchedule):
  """One reduction target from `begin_step` on, masks recomputed every `frequency` steps."""

  def __init__(self, reduction: float, begin_step: int = 0, end_step: int = -1,
               frequency: int = 100):
    owner = type(self).__name__
    self.target = _check_reduction(owner, "reduction", reduction)
    self.begin_step, self.end_step = _check_steps(owner, begin_step, end_step, True, False)
    self.frequency = _check_int(owner, "frequency", frequency, 1)

  @property
  def final_reduction(self) -> float:
    return self.target

  def reduction(self, step) -> tf.Tensor:
    return tf.constant(self.target, tf.float64)

  def get_config(self) -> dict[str, Any]:
    return {"reduction": self.target, "begin_step": self.begin_step,
            "end_step": self.end_step, "frequency": self.frequency}


class CrossbarPolynomialDecay(CrossbarSchedule):
  """Reduction rising from `initial_reduction` to `final_reduction` between the two steps.

  `s(t) = final + (initial - final) * (1 - p) ** power` with `p` the clipped fraction of
  `[begin_step, end_step]` elapsed: the crossbar budget falls from (nearly) dense and the
  last cuts are the smallest, as in TFMOT's `PolynomialDecay` for sparsity.
  """

  def __init__(self, final_reduction: float, begin_step: int, end_step: int,
               initial_reduction: float = 0.0, power: float = 3.0, frequency: int = 100):
    owner = type(self).__name__
    self.final = _check_reduction(owner, "final_reduction", final_reduction)
    self.initial = _check_reduction(owner, "initial_reduction", initial_reduction)
    if self.initial > self.final:
      raise ScheduleError(
          f"{owner}.initial_reduction={initial_reduction} exceeds final_reduction="
          f"{final_reduction}; valid: initial_reduction <= final_reduction.")
    self.begin_step, self.end_step = _check_steps(owner, begin_step, end_step, False, True)
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or power <= 0:
      raise ScheduleError(f"{owner}.power={power!r} is invalid; valid: a number > 0.")
    self.power = float(power)
    self.frequency = _check_int(owner, "frequency", frequency, 1)

  @property
  def final_reduction(self) -> float:
    return self.final

  def reduction(self, step) -> tf.Tensor:
    elapsed = _elapsed(step, self.begin_step, self.end_step)
    return self.final + (self.initial - self.final) * tf.pow(1.0 - elapsed, self.power)

  def get_config(self) -> dict[str, Any]:
    return {"final_reduction": self.final, "begin_step": self.begin_step,
            "end_step": self.end_step, "initial_reduction": self.initial,
            "power": self.power, "frequency": self.frequency}


def ramp_steps(epochs: int, steps_per_epoch: int, ramp: float, updates_per_epoch: int
               ) -> tuple[int, int]:
  """`(end_step, frequency)` for a schedule from step 0 whose budget falls over the first
  `ramp` of `epochs` epochs, with about `updates_per_epoch` mask updates an epoch."""
  return (max(1, round(ramp * epochs * steps_per_epoch)),
          max(1, steps_per_epoch // updates_per_epoch))


class CrossbarTemperatureDecay(_Config):
  """RPP temperature `T(t) = initial * (1 - p) ** power`, 0 from `end_step` on.

  At temperature `T` the kept units are a Gumbel-top-k sample with probability proportional
  to `energy ** (1 / T)`; at 0 it is the exact projection. `end_step=-1` means no annealing
  window, hence temperature 0 throughout (exact projection).
  """

  def __init__(self, initial_temperature: float = 1.0, begin_step: int = 0,
               end_step: int = -1, power: float = 1.0):
    owner = type(self).__name__
    if (isinstance(initial_temperature, bool) or not isinstance(initial_temperature, numbers.Real)
        or initial_temperature < 0):
      raise ScheduleError(
          f"{owner}.initial_temperature={initial_temperature!r} is invalid; valid: a number >= 0.")
    self.initial = float(initial_temperature)
    self.begin_step, self.end_step = _check_steps(owner, begin_step, end_step, True, False)
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or power <= 0:
      raise ScheduleError(f"{owner}.power={power!r} is invalid; valid: a number > 0.")
    self.power = float(power)

  def __call__(self, step) -> tf.Tensor:
    """The temperature at `step`, float32."""
    if self.end_step < 0 or self.end_step == self.begin_step or self.initial == 0.0:
      return tf.zeros([], tf.float32)
    elapsed = _elapsed(step, self.begin_step, self.end_step)
    return tf.cast(self.initial * tf.pow(1.0 - elapsed, self.power), tf.float32)

  def get_config(self) -> dict[str, Any]:
    return {"initial_temperature": self.initial, "begin_step": self.begin_step,
            "end_step": self.end_step, "power": self.power}



def _elapsed(step, begin: int, end: int) -> tf.Tensor:
  step = tf.cast(step, tf.float64)
  return tf.clip_by_value((step - begin) / float(end - begin), 0.0, 1.0)


SCHEDULES = {cls.__name__: cls for cls in
             (CrossbarConstant, CrossbarPolynomialDecay, CrossbarTemperatureDecay)}


def serialize(schedule) -> dict[str, Any]:
  """`{"class_name", "config"}` of one of this module's schedules."""
  name = type(schedule).__name__
  if SCHEDULES.get(name) is not type(schedule):
    raise ScheduleError(
        f"schedule {schedule!r} is not serialisable; valid: {', '.join(SCHEDULES)}.")
  return {"class_name": name, "config": schedule.get_config()}


def deserialize(config: Mapping[str, Any]):
  """Inverse of `serialize`."""
  name = config.get("class_name") if isinstance(config, Mapping) else None
  if name not in SCHEDULES:
    raise ScheduleError(
        f"schedule config {config!r}: class_name must be one of {', '.join(SCHEDULES)}.")
  return SCHEDULES[name].from_config(config.get("config", {}))
