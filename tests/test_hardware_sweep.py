"""The hardware sweep through the public API (`xt.sweep_hardware`, `xt.sweep_conditions`,
`xt.hardware_cost_summary`): one factor at a time around a nominal chip, each condition's
accuracies are `analog_accuracy` of its chip on the same seeds, equal chips are measured once,
a cache of finished conditions is reused, and an ideal chip gives the crossbar-explicit model's
accuracy. (The `xbar-prune` hardware phase that calls it: tests/test_pipeline_hardware.py.)"""

import numpy as np
import pytest

import xbar_tfmot as xt
from xbar_tfmot.app.datasets import load_digits
from xbar_tfmot.models.introspection import keras_module


def test_conditions_change_one_factor_around_the_nominal_chip():
  nominal = xt.HardwareSpec(adc_bits=6, variation=0.1, stuck_on_rate=0.05)
  found = xt.sweep_conditions(nominal, variations=(0.0, 0.2), adc_bits=(3,), stuck=(0.1,))
  assert all(isinstance(c, xt.SweepCondition) for c in found)
  assert [(c.factor, c.value) for c in found] == [("variation", 0.0), ("variation", 0.2),
                                                  ("adc_bits", 3), ("stuck", 0.1)]
  chips = [c.hw for c in found]
  assert [h.variation for h in chips] == [0.0, 0.2, 0.0, 0.0]
  assert [h.adc_bits for h in chips] == [6, 6, 3, 6]
  assert [(h.stuck_on_rate, h.stuck_off_rate) for h in chips] == [(0.0, 0.0)] * 3 + [(0.05, 0.05)]
  assert found[0].key == xt.sweep_conditions(nominal, adc_bits=(6,))[0].key  # the same chip
  assert found[0].key != found[2].key
  with pytest.raises(xt.HardwareError, match="adc_bits sweep value 2.5"):
    xt.sweep_conditions(nominal, adc_bits=(2.5,))


@pytest.fixture(scope="module")
def digits_model():
  """A small CNN trained on scikit-learn digits, mapped at column grain, and 120 test digits."""
  K = keras_module("tf_keras")
  K.utils.set_random_seed(0)
  (x, y), (x_test, y_test) = load_digits()
  model = K.Sequential([K.layers.Input(x.shape[1:]), K.layers.Conv2D(8, 3, name="conv"),
                        K.layers.ReLU(), K.layers.Flatten(), K.layers.Dense(10, name="fc")])
  model.compile("adam", K.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=4, batch_size=32, verbose=0)
  spec = xt.CrossbarSpec(rows=36, cols=8, weight_bits=4, cell_bits=2, differential=True)
  return model, xt.build_mapping(model, spec, "column"), x[:64], x_test[:120], y_test[:120]


def test_the_ideal_chip_sweep_gives_the_crossbar_explicit_accuracy(digits_model):
  model, mapping, calibration, x, y = digits_model
  explicit = np.mean(np.argmax(xt.crossbar_model(model, mapping).predict(x, verbose=0), -1) == y)
  assert explicit > 0.7
  rows = xt.sweep_hardware(model, mapping, xt.HardwareSpec(quantize_weights=False), x, y,
                           calibration, instances=3, variations=(0.0,))
  assert rows[0]["accuracies"] == [explicit] and not rows[0]["random"]


def test_each_condition_is_its_chip_on_the_same_seeds(digits_model):
  """Brute force: each row's accuracies are `analog_accuracy` of the chip the documented
  one-factor-at-a-time rule gives, on seeds 5, 6, 7; equal chips are measured once, and a
  cache of finished conditions is reused."""
  model, mapping, calibration, x, y = digits_model
  nominal = xt.HardwareSpec(input_bits=8, adc_bits=6, variation=0.1, stuck_on_rate=0.05)
  clean = dict(variation=0.0, stuck_on_rate=0.0, stuck_off_rate=0.0)
  expected = [("variation", 0.0, nominal.replace(**clean)),
              ("variation", 0.2, nominal.replace(**{**clean, "variation": 0.2})),
              ("adc_bits", 3, nominal.replace(**{**clean, "adc_bits": 3})),
              ("adc_bits", 6, nominal.replace(**clean)),
              ("stuck", 0.3, nominal.replace(**{**clean, "stuck_on_rate": 0.15,
                                                "stuck_off_rate": 0.15}))]
  saved = {}
  rows = xt.sweep_hardware(model, mapping, nominal, x, y, calibration, instances=3,
                           variations=(0.0, 0.2), adc_bits=(3, 6), stuck=(0.3,), seed=5,
                           on_result=saved.__setitem__)
  assert [(r["factor"], r["value"]) for r in rows] == [e[:2] for e in expected]
  assert [r["measured"] for r in rows] == [True, True, True, False, True]
  for row, (_, _, hw) in zip(rows, expected):
    brute = xt.analog_accuracy(model, mapping, hw, x, y, [5, 6, 7], calibration)
    if not row["random"]:
      assert brute[0] == brute[1] == brute[2]  # the same chip for every seed
      brute = brute[:1]
    assert np.max(np.abs(np.subtract(row["accuracies"], brute))) <= 1 / len(y), (row, brute)
    assert row["mean"] == pytest.approx(np.mean(row["accuracies"]))
  # three different chips, not one measured three times (a std of identical accuracies can
  # come out above 0 by round-off)
  assert len(set(rows[1]["accuracies"])) == 3, rows[1]
  again = xt.sweep_hardware(model, mapping, nominal, x, y, calibration, instances=3,
                            variations=(0.0, 0.2), adc_bits=(3, 6), stuck=(0.3,), seed=5,
                            cache=saved)
  assert not any(r["measured"] for r in again)
  assert [r["accuracies"] for r in again] == [r["accuracies"] for r in rows]
  short = {key: accs[:1] for key, accs in saved.items()}  # from a run with 1 instance
  third = xt.sweep_hardware(model, mapping, nominal, x, y, calibration, instances=3,
                            variations=(0.0, 0.2), adc_bits=(3, 6), stuck=(0.3,), seed=5,
                            cache=short)
  assert [r["measured"] for r in third] == [r["random"] for r in rows]
  assert [r["accuracies"] for r in third] == [r["accuracies"] for r in rows]


def test_cost_summary_is_the_cost_model_in_report_units(digits_model):
  model, mapping, *_ = digits_model
  hw = xt.HardwareSpec.preset("isaac_32nm")
  summary = xt.hardware_cost_summary(model, mapping, hw)
  cost = xt.estimate_cost(mapping, hw, xt.output_positions(model, mapping.layer_names)).pruned
  assert summary == {"crossbars": mapping.totals["crossbars"], "energy_nj": cost.energy_pj / 1e3,
                     "area_mm2": cost.area_mm2, "latency_ns": cost.latency_ns}
  assert summary["crossbars"] > 0 and summary["energy_nj"] > 0
