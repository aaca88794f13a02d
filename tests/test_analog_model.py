"""The analog model: known answers for conductance encoding, the ADC, faults, noise and the ideal case."""

import _models
import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot.core import analog
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import analog_model as am
from xbar_tfmot.models.crossbar_model import crossbar_model
from xbar_tfmot.models.model_mapping import build_mapping

IDEAL = HardwareSpec(quantize_weights=False)
SPEC = CrossbarSpec(rows=36, cols=4)
DIFF = CrossbarSpec(rows=36, cols=8, weight_bits=4, cell_bits=2, differential=True)


def pruned(flavour, spec=SPEC):
  model = _models.vgg(flavour)
  _models.prune(model, spec, 0.5, "column")
  return model, build_mapping(model, spec, "column")


@pytest.mark.parametrize("spec", [SPEC, DIFF], ids=lambda s: s.to_string())
@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_the_ideal_chip_equals_the_crossbar_explicit_model(flavour, spec):
  model, mapping = pruned(flavour, spec)
  x = _models.random_inputs(model)
  analog_out = am.analog_model(model, mapping, IDEAL, seed=3)(x)
  assert _models.max_rel_error(analog_out, crossbar_model(model, mapping)(x)) < 1e-5


def test_level_quantisation_and_bit_slicing_by_hand():
  # 4-bit weights, 2-bit cells, differential: w = 0.6 of the max -> m = round(0.6*15) = 9
  # = 2*4 + 1: slice 0 holds 1 (g = 1/3), slice 1 holds 2 (g = 2/3), in the positive column.
  w = np.array([[[0.6, -1.0]]], np.float32)  # (n=1, rows=1, kout=2); max |w| = 1
  enc = analog.encode(w, HardwareSpec(), 4, 2, True)
  np.testing.assert_allclose(enc.conductances[0, 0, 0], [[1 / 3, 2 / 3], [0, 0]], atol=1e-6)
  np.testing.assert_allclose(enc.conductances[0, 0, 1], [[0, 0], [1, 1]], atol=1e-6)
  np.testing.assert_allclose(enc.coef, [[3 / 15, 12 / 15], [-3 / 15, -12 / 15]], rtol=1e-6)
  np.testing.assert_allclose(enc.effective(tf.constant(enc.conductances)), [[[9 / 15, -1.0]]],
                             rtol=1e-6)
  # single column, 2-bit weights in one cell: offset v = (w + 1) / 2 -> round(v*3) levels
  enc = analog.encode(np.array([[[0.5, -1.0]]]), HardwareSpec(), 2, 2, False)
  np.testing.assert_allclose(enc.conductances[0, 0, :, 0, 0], [2 / 3, 0.0], atol=1e-6)  # 0.75*3
  np.testing.assert_allclose(enc.effective(tf.constant(enc.conductances)), [[[1 / 3, -1.0]]],
                             rtol=1e-6)


def test_the_adc_on_planted_partial_sums():
  sums = tf.constant([-1.0, 0.0, 0.1, 0.49, 0.51, 2.0, 3.5])
  # 2 bits over [0, 3]: levels 0, 1, 2, 3; below clips to 0, above to 3
  np.testing.assert_allclose(analog.quantize(sums, 0.0, 3.0, 2), [0, 0, 0, 0, 1, 2, 3])
  assert analog.percentile_range(np.arange(101.0), 99.0) == pytest.approx((1.0, 99.0))


@pytest.mark.parametrize("rate,value", [("stuck_on_rate", 1.0), ("stuck_off_rate", 0.0)])
def test_stuck_at_faults_at_rate_one_give_the_planted_values(rate, value):
  g = tf.constant(np.random.default_rng(0).uniform(size=(3, 4, 2, 2, 2)), tf.float32)
  out = analog.program(g, HardwareSpec(**{rate: 1.0}), (1, 2))
  np.testing.assert_array_equal(out, np.full(g.shape, value, np.float32))


def test_the_error_grows_with_the_variation_and_is_fixed_by_the_seed():
  model, mapping = pruned("keras3", DIFF)
  x = _models.random_inputs(model, n=8)
  ref = np.asarray(crossbar_model(model, mapping)(x))
  errors = []
  for sigma in (0.01, 0.05, 0.2):
    hw = HardwareSpec(quantize_weights=False, variation=sigma)
    errors.append(np.mean([_models.max_rel_error(am.analog_model(model, mapping, hw, s)(x), ref)
                           for s in range(3)]))
    again = am.analog_model(model, mapping, hw, 1)(x)
    np.testing.assert_array_equal(again, am.analog_model(model, mapping, hw, 1)(x))
  assert errors[0] < errors[1] < errors[2], errors


def test_adc_and_dac_quantisation_run_and_cost_accuracy_gracefully():
  model, mapping = pruned("keras3", DIFF)
  x = _models.random_inputs(model, n=16)
  ref = np.asarray(am.analog_model(model, mapping, HardwareSpec(), 0)(x))  # 4-bit weights only
  err = {}
  for bits in (3, 8):
    hw = HardwareSpec(input_bits=8, adc_bits=bits, adc_percentile=100.0)
    err[bits] = _models.max_rel_error(am.analog_model(model, mapping, hw, 0, calibration=x)(x), ref)
  assert err[8] < 0.03 < 0.1 < err[3], err
  hw = HardwareSpec(input_bits=8, dac_bits=2, bit_serial=True, adc_bits=8, adc_percentile=100.0)
  assert _models.max_rel_error(am.analog_model(model, mapping, hw, 0, calibration=x)(x), ref) < 0.03


def test_read_noise_changes_every_call_deterministically():
  model, mapping = pruned("keras3", DIFF)
  x = _models.random_inputs(model)
  hw = HardwareSpec(quantize_weights=False, read_noise=0.05)
  a, b = am.analog_model(model, mapping, hw, 0), am.analog_model(model, mapping, hw, 0)
  first, second = np.asarray(a(x)), np.asarray(a(x))
  assert not np.array_equal(first, second)
  np.testing.assert_array_equal(first, b(x))


@pytest.mark.parametrize("field,value,match", [
    ("adc_bits", 0, "adc_bits"), ("input_bits", 17, "input_bits"),
    ("stuck_on_rate", 1.5, "stuck_on_rate"), ("stuck_off_rate", -0.1, "stuck_off_rate"),
    ("variation_model", "cauchy", "variation_model"), ("variation", -1.0, "variation")])
def test_bad_hardware_fields_are_named(field, value, match):
  with pytest.raises(HardwareError, match=match):
    HardwareSpec(**{field: value})


def test_bad_uses_are_named():
  model, mapping = pruned("keras3", DIFF)
  with pytest.raises(HardwareError, match="calibration"):
    am.analog_model(model, mapping, HardwareSpec(adc_bits=6), 0)
  with pytest.raises(HardwareError, match="cell_bits"):
    am.analog_model(model, mapping, HardwareSpec(cell_bits=1), 0)
  with pytest.raises(HardwareError, match="unknown"):
    HardwareSpec.preset("isaac_7nm")
  other, _ = pruned("keras3", SPEC)
  with pytest.raises(ValueError, match="layers"):
    am.analog_model(_models.resnet("keras3"), mapping, IDEAL, 0)
