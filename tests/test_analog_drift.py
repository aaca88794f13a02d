"""Drift and compensation after programming (issue 26, items 4 and 5): known answers on planted
chips, and accuracy restored on a trained digits CNN with planted gain errors."""

import math

import _models
import numpy as np
import pytest
import tensorflow as tf

import xbar_tfmot as xt
from xbar_tfmot.app.datasets import load_digits
from xbar_tfmot.core import analog
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import analog_model as am
from xbar_tfmot.models.introspection import keras_module

DIFF = CrossbarSpec(rows=36, cols=8, weight_bits=4, cell_bits=2, differential=True)
YEAR = 3.15e7


def pruned(spec=DIFF):
  model = _models.vgg("keras3")
  _models.prune(model, spec, 0.5, "column")
  return model, xt.build_mapping(model, spec, "column")


def test_drift_follows_the_power_law_per_cell():
  """With no spread every cell is `g ((t + t0) / t0) ** -nu`; with a spread the exponents are
  `|nu + s N|` per cell: their mean and spread come back from 40,000 cells."""
  g = tf.constant(np.random.default_rng(0).uniform(0.1, 1.0, (10, 20, 10, 2, 10)), tf.float32)
  hw = HardwareSpec(drift_time=86400.0, drift_nu=0.06, drift_nu_std=0.0, drift_t0=20.0)
  np.testing.assert_allclose(analog.drift(g, hw, (0, 0)), g * (86420 / 20) ** -0.06, rtol=1e-5)
  hw = hw.replace(drift_nu_std=0.01)
  nu = -np.log(np.asarray(analog.drift(g, hw, (0, 0))) / g) / math.log(86420 / 20)
  assert abs(nu.mean() - 0.06) < 5e-4 and abs(nu.std() - 0.01) < 5e-4, (nu.mean(), nu.std())
  np.testing.assert_array_equal(analog.drift(g, hw, (0, 0)), analog.drift(g, hw, (0, 0)))
  assert not np.array_equal(analog.drift(g, hw, (0, 0)), analog.drift(g, hw, (1, 0)))
  np.testing.assert_array_equal(analog.drift(g, hw.replace(drift_time=None), (0, 0)), g)


@pytest.mark.parametrize("hw", [
    HardwareSpec(on_off_ratio=None, variation=0.05),
    HardwareSpec(variation=0.05, differential_read="array"),
    HardwareSpec(variation=0.05, input_bits=8, bit_serial=True, dac_bits=2)],
    ids=["g_min=0", "array-read", "bit-serial"])
def test_global_compensation_gives_back_the_undrifted_chip_without_a_spread_of_nu(hw):
  """Planted chip: the variation of seed 3, then a year of drift with nu = 0.05 for every
  cell. Uncompensated, every layer's pre-bias output is the undrifted one times
  `((t + t0) / t0) ** -nu`; the global compensation's reference read finds that factor, so the
  compensated model equals the undrifted one (to float rounding)."""
  model, mapping = pruned()
  x = _models.random_inputs(model, n=8)
  fresh = am.analog_model(model, mapping, hw, 3, calibration=x)
  drifted = hw.replace(drift_time=YEAR, drift_nu=0.05, drift_nu_std=0.0)
  factor = ((YEAR + 20.0) / 20.0) ** -0.05
  raw = am.analog_model(model, mapping, drifted.replace(drift_compensation=False), 3, x)
  for a, b in zip(am.analog_layers(fresh), am.analog_layers(raw)):
    inputs = tf.constant(np.random.default_rng(1).uniform(0, 1, (2, *a.input.shape[1:])),
                         tf.float32)
    np.testing.assert_allclose(b.raw_output(inputs), factor * np.asarray(a.raw_output(inputs)),
                               rtol=1e-4, atol=1e-5)
    assert float(b.core.gain) == 1.0
  chip = am.analog_model(model, mapping, drifted, 3, calibration=x)
  for layer in am.analog_layers(chip):
    assert float(layer.core.gain) == pytest.approx(1 / factor, rel=1e-5)
  assert _models.max_rel_error(chip(x), fresh(x)) < 1e-4
  assert _models.max_rel_error(raw(x), fresh(x)) > 0.05


def test_a_spread_of_nu_leaves_an_error_that_grows_with_time():
  model, mapping = pruned()
  x = _models.random_inputs(model, n=8)
  hw = HardwareSpec(on_off_ratio=None)
  ref = np.asarray(am.analog_model(model, mapping, hw, 0)(x))
  errors = [_models.max_rel_error(am.analog_model(model, mapping, hw.replace(drift_time=t), 0)(x),
                                  ref) for t in (1.0, 3600.0, YEAR)]
  assert 0 < errors[0] < errors[1] < errors[2], errors


def test_adc_recalibration_on_the_drifted_chip_gives_back_the_undrifted_chip():
  """With an ADC whose ranges were set at programming, drifted currents fill fewer of its
  levels: global compensation alone is not exact. Re-calibrated on the chip as it reads now,
  the ranges scale with the currents and the compensated chip equals the undrifted one
  (re-calibrated the same way) but for rare rounding ties."""
  model, mapping = pruned()
  x = _models.random_inputs(model, n=16)
  hw = HardwareSpec(input_bits=8, adc_bits=5, differential_read="array")
  drifted = hw.replace(drift_time=YEAR, drift_nu=0.05, drift_nu_std=0.0)
  fresh = am.analog_model(model, mapping, hw, 0, calibration=x)
  chip = am.analog_model(model, mapping, drifted, 0, calibration=x)
  assert _models.max_rel_error(chip(x), fresh(x)) > 1e-3  # ranges from programming time
  assert xt.compensate_chip(fresh, x, ["adc"]) == {"adc": 16}
  xt.compensate_chip(chip, x, ["adc"])
  a, b = np.asarray(chip(x)), np.asarray(fresh(x))
  assert np.mean(np.isclose(a, b, rtol=1e-4, atol=1e-4)) > 0.99
  assert _models.max_rel_error(a, b) < 0.05


def _plant_column_gains(chip, low=0.4, high=1.6, seed=0):
  """Multiplies every cell of output channel c by its own factor (planted gain errors)."""
  rng = np.random.default_rng(seed)
  for layer in am.analog_layers(chip):
    core = layer.core
    factors = rng.uniform(low, high, layer.kernel_shape[-1]).astype(np.float32)
    per_column = np.where(core.columns >= 0, factors[np.maximum(core.columns, 0)], 1.0)
    g = np.asarray(core.conductances) * per_column[:, None, :, None, None]
    core.set_conductances(g)


def test_column_gain_calibration_removes_planted_column_gains_exactly():
  """No ADC, pairs read in the array: a planted factor per output channel scales that channel's
  pre-bias output; the least-squares gain is its inverse, and the chip is the ideal one."""
  model, mapping = pruned()
  x = _models.random_inputs(model, n=8)
  hw = HardwareSpec(differential_read="array")
  ideal = np.asarray(am.analog_model(model, mapping, hw, 0)(x))
  chip = am.analog_model(model, mapping, hw, 0)
  _plant_column_gains(chip)
  assert _models.max_rel_error(chip(x), ideal) > 0.1
  assert xt.compensate_chip(chip, x, "column_gain") == {"column_gain": 8}
  assert _models.max_rel_error(chip(x), ideal) < 1e-4


def test_bad_compensation_arguments_are_named():
  model, mapping = pruned()
  chip = am.analog_model(model, mapping, HardwareSpec(), 0)
  x = _models.random_inputs(model, n=2)
  with pytest.raises(HardwareError, match="unknown compensation step"):
    xt.compensate_chip(chip, x, ["bn"])
  with pytest.raises(HardwareError, match="exclude each other"):
    xt.compensate_chip(chip, x, ["column_gain", "layer_gain"])
  with pytest.raises(HardwareError, match="AnalogLayer"):
    xt.compensate_chip(model, x, ["adc"])
  for field, value in (("drift_time", -1.0), ("drift_nu", -0.1), ("drift_t0", 0.0),
                       ("drift_compensation", "yes")):
    with pytest.raises(HardwareError, match=field):
      HardwareSpec(**{field: value})


@pytest.fixture(scope="module")
def digits():
  """A small Conv-BN-ReLU CNN trained on scikit-learn digits, its mapping, 128 training digits
  (unlabelled, for calibration and compensation) and 200 test digits."""
  K = keras_module("keras3")
  K.utils.set_random_seed(0)
  (x, y), (x_test, y_test) = load_digits()
  L = K.layers
  model = K.Sequential([L.Input(x.shape[1:]), L.Conv2D(8, 3, name="conv"),
                        L.BatchNormalization(name="bn"), L.ReLU(), L.Flatten(),
                        L.Dense(10, name="fc")])
  model.compile("adam", K.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=5, batch_size=32, verbose=0)
  return model, xt.build_mapping(model, DIFF, "column"), x[:128], x_test[:200], y_test[:200]


def _accuracy(chip, x, y):
  return float(np.mean(np.argmax(np.asarray(chip(x)), -1) == y))


@pytest.mark.parametrize("steps", [("column_gain",), ("layer_gain", "batchnorm"),
                                   ("adc", "column_gain", "batchnorm")])
def test_compensation_restores_accuracy_on_a_chip_with_planted_gain_errors(digits, steps):
  """Planted per-channel gains of 0.05..1 (cells that lost conductance) cost the chip more
  than 5 points; compensation on 128 unlabelled training digits gives them back to within 2
  points of the unplanted chip."""
  model, mapping, train, x, y = digits
  hw = HardwareSpec(input_bits=8, adc_bits=8)
  clean = _accuracy(am.analog_model(model, mapping, hw, 0, calibration=train), x, y)
  chip = am.analog_model(model, mapping, hw, 0, calibration=train)
  _plant_column_gains(chip, 0.05, 1.0, seed=2)
  planted = _accuracy(chip, x, y)
  assert planted < clean - 0.05, (planted, clean)
  assert xt.compensate_chip(chip, train, steps) == {s: 128 for s in steps}
  assert _accuracy(chip, x, y) >= clean - 0.02, (_accuracy(chip, x, y), planted, clean)


def test_the_sweep_has_a_time_axis_one_factor_at_a_time():
  nominal = HardwareSpec(adc_bits=6, variation=0.1, stuck_on_rate=0.05)
  found = xt.sweep_conditions(nominal, variations=(0.0,), times=(1, 86400, YEAR),
                              compensation="batchnorm,adc")
  assert [(c.factor, c.value) for c in found] == [("variation", 0.0), ("time", 1.0),
                                                  ("time", 86400.0), ("time", YEAR)]
  assert [c.hw.drift_time for c in found] == [None, 1.0, 86400.0, YEAR]
  assert all(c.hw.variation == 0 and c.hw.stuck_on_rate == 0 and c.hw.adc_bits == 6
             for c in found)
  assert all(c.compensation == ("adc", "batchnorm") for c in found)
  assert found[1].random  # the exponents differ per chip; without a spread they do not
  assert not xt.SweepCondition("time", 1.0, found[1].hw.replace(drift_nu_std=0.0)).random
  plain = xt.sweep_conditions(nominal, times=(1,))[0]
  assert plain.key != found[1].key and '"compensation"' not in plain.key
  with pytest.raises(HardwareError, match="compensation"):
    xt.sweep_conditions(nominal, times=(1,), compensation=("gain",))


def test_the_sweep_measures_each_time_with_its_compensation(digits):
  """The time rows are `analog_accuracy` of the drifted chip, compensated as asked."""
  model, mapping, train, x, y = digits
  hw = HardwareSpec(input_bits=8, adc_bits=6)
  rows = xt.sweep_hardware(model, mapping, hw, x[:60], y[:60], train[:32], instances=2,
                           times=(YEAR,), compensation=("adc",))
  expected = xt.analog_accuracy(model, mapping, hw.replace(drift_time=YEAR), x[:60], y[:60],
                                [0, 1], train[:32], compensation=("adc",))
  assert rows[0]["factor"] == "time" and rows[0]["accuracies"] == expected
