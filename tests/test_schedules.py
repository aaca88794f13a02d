"""Reduction and temperature schedules: values, update steps, graph mode, config, bad input."""

import math

import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot.core.schedules import (CrossbarConstant, CrossbarPolynomialDecay, ramp_steps,
                                       CrossbarTemperatureDecay, deserialize, serialize)
from xbar_tfmot.pruning.plan import budget_at


def run(schedule, step):
  update, reduction = schedule(tf.constant(step, tf.int64))
  return bool(update), float(reduction)


@pytest.mark.parametrize("step,expected", [
    (0, False), (9, False), (10, True), (16, False), (20, True), (57, True), (60, False),
    (1000, False)])
def test_polynomial_updates_every_frequency_steps_and_at_end_step(step, expected):
  schedule = CrossbarPolynomialDecay(0.6, begin_step=10, end_step=57, frequency=5)
  assert run(schedule, step)[0] is expected


def test_polynomial_reduction_rises_to_final_and_stays():
  schedule = CrossbarPolynomialDecay(0.7, begin_step=100, end_step=300, initial_reduction=0.1,
                                     power=3)
  values = [run(schedule, s)[1] for s in range(0, 401, 20)]
  assert values[0] == pytest.approx(0.1)
  assert values[5] == pytest.approx(0.1)  # step 100
  assert np.all(np.diff(values) >= -1e-7)
  assert values[10] == pytest.approx(0.7 + (0.1 - 0.7) * 0.5**3)  # step 200
  assert values[15] == pytest.approx(0.7) and values[-1] == pytest.approx(0.7)
  assert float(schedule.progress(300)) == 1.0 and float(schedule.progress(10**6)) == 1.0


def _independent_reduction(step, final, initial, begin, end, power):
  """s(t) of docs/design.md, in plain Python floats."""
  p = min(max((step - begin) / (end - begin), 0.0), 1.0)
  return final + (initial - final) * (1.0 - p) ** power


@pytest.mark.parametrize("dense,final_budget,final,initial,begin,end,power,frequency", [
    (120, 36, 0.7, 0.0, 0, 45, 3.0, 10),
    (37, 11, 0.7, 0.0, 0, 100, 3.0, 7),
    (16, 5, 0.7, 0.2, 3, 50, 2.0, 4),
    (1000, 280, 0.72, 0.0, 10, 400, 3.0, 13),
])
def test_budget_at_every_update_step(dense, final_budget, final, initial, begin, end, power,
                                     frequency):
  """`budget(t) = dense - round((dense - N) * s(t) / s_final)` at every update step."""
  schedule = CrossbarPolynomialDecay(final, begin_step=begin, end_step=end,
                                     initial_reduction=initial, power=power, frequency=frequency)
  updates = [s for s in range(end + 3 * frequency) if run(schedule, s)[0]]
  assert updates == sorted(set(range(begin, end + 1, frequency)) | {end})
  rounded_down = rounded_up = 0
  for step in updates:
    cut = (dense - final_budget) * _independent_reduction(step, final, initial, begin, end,
                                                          power) / final
    assert abs(cut - math.floor(cut) - 0.5) > 1e-6, "a tie: pick other parameters"
    expected = dense - round(cut)
    assert int(budget_at(schedule, dense, final_budget, step)) == expected, step
    rounded_down += 0 < cut - math.floor(cut) < 0.5
    rounded_up += cut - math.floor(cut) > 0.5
  assert rounded_down and rounded_up  # ceil or floor would differ at some update step
  assert int(budget_at(schedule, dense, final_budget, end)) == final_budget


def test_constant_forever_and_with_end():
  forever = CrossbarConstant(0.5, begin_step=3, frequency=4)
  assert [run(forever, s)[0] for s in (2, 3, 5, 7, 4003)] == [False, True, False, True, True]
  assert run(forever, 9)[1] == pytest.approx(0.5)
  bounded = CrossbarConstant(0.5, begin_step=0, end_step=10, frequency=4)
  assert [run(bounded, s)[0] for s in (8, 10, 12)] == [True, True, False]
  assert float(CrossbarConstant(0.0).progress(5)) == 1.0


def test_schedules_run_in_graph_mode():
  schedule = CrossbarPolynomialDecay(0.5, begin_step=0, end_step=100, frequency=10)
  step = tf.Variable(0, dtype=tf.int64)

  @tf.function
  def call():
    step.assign_add(10)
    return schedule(step)

  outs = [call() for _ in range(10)]
  assert all(bool(u) for u, _ in outs)
  assert float(outs[-1][1]) == pytest.approx(0.5)


def test_temperature_anneals_to_zero_at_end_step():
  temperature = CrossbarTemperatureDecay(2.0, begin_step=10, end_step=110, power=1.0)
  values = [float(temperature(s)) for s in (0, 10, 60, 109, 110, 500)]
  assert values[:3] == pytest.approx([2.0, 2.0, 1.0])
  assert 0 < values[3] < 0.05 and values[4] == 0.0 and values[5] == 0.0
  assert float(CrossbarTemperatureDecay(1.0, 0, -1)(5)) == 0.0


@pytest.mark.parametrize("schedule", [
    CrossbarConstant(0.25, begin_step=5, end_step=50, frequency=7),
    CrossbarPolynomialDecay(0.8, begin_step=1, end_step=9, initial_reduction=0.2, power=2.0,
                            frequency=3),
    CrossbarTemperatureDecay(0.5, begin_step=2, end_step=20, power=2.0)])
def test_config_round_trip(schedule):
  assert type(schedule).from_config(schedule.get_config()) == schedule
  again = deserialize(serialize(schedule))
  assert again == schedule and again is not schedule
  assert float(again(7)[1] if isinstance(again(7), tuple) else again(7)) == pytest.approx(
      float(schedule(7)[1] if isinstance(schedule(7), tuple) else schedule(7)))


@pytest.mark.parametrize("make,field", [
    (lambda: CrossbarConstant(1.0), "reduction"),
    (lambda: CrossbarConstant(-0.1), "reduction"),
    (lambda: CrossbarConstant(True), "reduction"),
    (lambda: CrossbarConstant("0.5"), "reduction"),
    (lambda: CrossbarConstant(0.5, frequency=0), "frequency"),
    (lambda: CrossbarConstant(0.5, begin_step=10, end_step=5), "end_step"),
    (lambda: CrossbarConstant(0.5, begin_step=-1), "begin_step"),
    (lambda: CrossbarPolynomialDecay(1.2, 0, 10), "final_reduction"),
    (lambda: CrossbarPolynomialDecay(0.5, 0, 10, initial_reduction=-0.5), "initial_reduction"),
    (lambda: CrossbarPolynomialDecay(0.5, 0, 10, initial_reduction=0.6), "initial_reduction"),
    (lambda: CrossbarPolynomialDecay(0.5, 100, 50), "end_step"),
    (lambda: CrossbarPolynomialDecay(0.5, 100, 100), "end_step"),
    (lambda: CrossbarPolynomialDecay(0.5, 0, -1), "end_step"),
    (lambda: CrossbarPolynomialDecay(0.5, 0, 10, power=0), "power"),
    (lambda: CrossbarTemperatureDecay(-1.0), "initial_temperature"),
    (lambda: CrossbarTemperatureDecay(1.0, 10, 5), "end_step"),
])
def test_bad_arguments_name_the_field(make, field):
  with pytest.raises(ValueError, match=field):
    make()


def test_deserialize_rejects_unknown_class():
  with pytest.raises(ValueError, match="class_name"):
    deserialize({"class_name": "PolynomialDecay", "config": {}})


@pytest.mark.parametrize("epochs,steps_per_epoch,ramp,updates", [
    (2, 10, 1.0, 3), (3, 7, 0.5, 1), (1, 2, 1.0, 8), (4, 100, 0.25, 4), (1, 1, 0.1, 1)])
def test_ramp_steps_place_the_ramp_and_the_updates(epochs, steps_per_epoch, ramp, updates):
  end_step, frequency = ramp_steps(epochs, steps_per_epoch, ramp, updates)
  schedule = CrossbarPolynomialDecay(0.5, begin_step=0, end_step=end_step, frequency=frequency)
  total = epochs * steps_per_epoch
  assert 1 <= end_step <= total and abs(end_step - ramp * total) <= 0.5 + (end_step == 1)
  first_epoch = [s for s in range(1, min(steps_per_epoch, end_step) + 1)  # trained steps
                 if bool(schedule.should_update(s))]
  if end_step >= steps_per_epoch:  # a whole epoch of the ramp: at least `updates` (or every step)
    assert len(first_epoch) >= min(updates, steps_per_epoch)
    assert len(first_epoch) < 2 * updates + 1


def test_temperature_defaults_and_bounds():
  """Default: T falls linearly from 1 (power 1); 0 is a valid start (the exact projection);
  a power of 0 or a bool is refused; the config (end_step -1: never anneal) round-trips."""
  t = CrossbarTemperatureDecay(begin_step=0, end_step=10)
  assert float(t(0)) == pytest.approx(1.0) and float(t(5)) == pytest.approx(0.5)
  assert float(CrossbarTemperatureDecay(0.0, 0, 10)(5)) == 0.0
  forever = CrossbarTemperatureDecay()
  assert forever.get_config()["end_step"] == -1 and float(forever(3)) == 0.0
  assert CrossbarTemperatureDecay.from_config(forever.get_config()).get_config() == \
      forever.get_config()
  for power in (0, 0.0, True):
    with pytest.raises(ValueError, match="power="):
      CrossbarTemperatureDecay(power=power)
  with pytest.raises(ValueError, match="initial_temperature=-0.1"):
    CrossbarTemperatureDecay(-0.1)


def test_polynomial_decay_accepts_a_flat_ramp_and_names_a_bad_end_step():
  """initial == final is a constant reduction (the layer-by-layer procedure asks for it when
  a step starts where the last one ended); an end_step at begin_step is named as such."""
  flat = CrossbarPolynomialDecay(0.5, begin_step=0, end_step=4, initial_reduction=0.5)
  assert [float(flat.reduction(s)) for s in (0, 2, 4)] == [0.5, 0.5, 0.5]
  with pytest.raises(ValueError, match="end_step=0 is before begin_step=0; valid: end_step > "):
    CrossbarPolynomialDecay(0.5, begin_step=0, end_step=0)
  for power in (0, True):
    with pytest.raises(ValueError, match="power="):
      CrossbarPolynomialDecay(0.5, 0, 4, power=power)
