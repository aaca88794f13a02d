"""xbar-prune's hardware phase: energy, area and accuracy on non-ideal crossbars for the dense
and the pruned model, in metrics.json and report.md, with the one-factor-at-a-time accuracy
sweep (`xbar_tfmot.app.hardware_sweep`, table and plot); bad hardware fields are config errors."""

import json

import numpy as np
import pytest
from _configs import load_config

from xbar_tfmot.app import configuration, hardware_sweep, pipeline
from xbar_tfmot.app.configuration import ConfigError
from xbar_tfmot.app.datasets import load_digits
from xbar_tfmot.core.hardware import HardwareSpec
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models.analog_model import analog_accuracy
from xbar_tfmot.models.crossbar_model import crossbar_model
from xbar_tfmot.models.introspection import keras_module
from xbar_tfmot.models.model_mapping import build_mapping


def tiny(workdir, **hardware):
  return load_config(workdir=str(workdir), train__verbose=0, report__plots=False,
                     export__enabled=False, hardware__enabled=True,
                     **{f"hardware__{k}": v for k, v in hardware.items()})


def test_hardware_phase_reports_dense_and_pruned_and_the_sweep(tmp_path):
  config = tiny(tmp_path, instances=2, test_images=200, calibration_images=128,
                set="adc_bits=null,input_bits=null,quantize_weights=false",  # an ideal chip
                sweep_instances=2, sweep_variations="0,0.1", sweep_adc_bits="3")
  config.report.plots = True
  # A hardware phase killed after measuring the dense ADC-3 chip: the resume reads that cell.
  adc3 = hardware_sweep.conditions(configuration.hardware_spec(config), adc_bits=(3,))[0]
  (tmp_path / "checkpoints").mkdir(parents=True)
  (tmp_path / "checkpoints" / "hardware_sweep.json").write_text(
      json.dumps({"dense": {adc3.key: [0.123]}}))
  metrics = pipeline.run(config, log=lambda line: None)
  assert not (tmp_path / "checkpoints" / "hardware_sweep.json").exists()
  hw = metrics["hardware"]
  assert hw["dense"]["sweep"][2]["accuracies"] == [0.123] and not hw["dense"]["sweep"][2]["measured"]
  assert hw["enabled"] and hw["instances"] == 2 and hw["images"] == 200
  assert hw["hardware"]["adc_bits"] is None and hw["hardware"]["name"] == "isaac_32nm"
  dense, pruned = hw["dense"], hw["pruned"]
  assert pruned["crossbars"] == metrics["crossbars"]["pruned"]
  assert dense["crossbars"] == metrics["crossbars"]["dense"]
  assert pruned["energy_nj"] < dense["energy_nj"] and pruned["area_mm2"] < dense["area_mm2"]
  for r in (dense, pruned):  # no variation, faults, converters or levels: the float answers
    assert r["accuracy_std"] == 0.0 and abs(r["accuracy_mean"] - r["float_accuracy"]) <= 0.01
    sweep = {(s["factor"], s["value"]): s for s in r["sweep"]}
    assert list(sweep) == [("variation", 0.0), ("variation", 0.1), ("adc_bits", 3)]
    assert sweep["variation", 0.0]["mean"] == r["accuracy_mean"]  # the configured chip
    assert len(sweep["variation", 0.1]["accuracies"]) == 2
  assert pruned["float_accuracy"] > 0.5
  report = (tmp_path / "report" / "report.md").read_text()
  assert "## On isaac_32nm crossbars" in report and f"| pruned | {pruned['crossbars']} |" in report
  p = {(s["factor"], s["value"]): s for s in pruned["sweep"]}["variation", 0.1]
  d = {(s["factor"], s["value"]): s for s in dense["sweep"]}["variation", 0.1]
  assert (f"| variation 10% of g_max | {d['mean']:.1%} ± {d['std']:.1%} | {p['mean']:.1%} ± "
          f"{p['std']:.1%} |") in report
  assert "| ADC 3 bits |" in report
  assert "![Accuracy on non-ideal crossbars](hardware_sweep.png)" in report
  assert (tmp_path / "report" / "hardware_sweep.png").stat().st_size > 5000


@pytest.mark.parametrize("fields, match", [
    ({"preset": "nope"}, "config.hardware \\(preset='nope'"),
    ({"set": "adc_bits=40"}, "config.hardware .*adc_bits"),
    ({"instances": 0}, "config.hardware.instances=0"),
    ({"sweep_adc_bits": "4,x"}, "config.hardware.sweep_adc_bits='4,x'.*'x' is not a number"),
    ({"sweep_adc_bits": "20"}, "config.hardware.sweep_adc_bits='20'.*adc_bits"),
    ({"sweep_variations": "-0.1"}, "config.hardware.sweep_variations='-0.1'.*variation"),
    ({"sweep_stuck": "1.5"}, "config.hardware.sweep_stuck='1.5'.*stuck"),
    ({"sweep_instances": -1}, "config.hardware.sweep_instances=-1"),
])
def test_bad_hardware_fields(tmp_path, fields, match):
  with pytest.raises(ConfigError, match=match):
    pipeline.Pipeline(tiny(tmp_path, **fields))


@pytest.fixture(scope="module")
def digits_model():
  """A small CNN trained on scikit-learn digits, mapped at column grain, and 120 test digits."""
  K = keras_module("tf_keras")
  K.utils.set_random_seed(0)
  (x, y), (xt, yt) = load_digits()
  model = K.Sequential([K.layers.Input(x.shape[1:]), K.layers.Conv2D(8, 3, name="conv"),
                        K.layers.ReLU(), K.layers.Flatten(), K.layers.Dense(10, name="fc")])
  model.compile("adam", K.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(x, y, epochs=4, batch_size=32, verbose=0)
  spec = CrossbarSpec(rows=36, cols=8, weight_bits=4, cell_bits=2, differential=True)
  return model, build_mapping(model, spec, "column"), x[:64], xt[:120], yt[:120]


def test_the_ideal_chip_sweep_gives_the_crossbar_explicit_accuracy(digits_model):
  model, mapping, calibration, x, y = digits_model
  explicit = np.mean(np.argmax(crossbar_model(model, mapping).predict(x, verbose=0), -1) == y)
  assert explicit > 0.7
  rows = hardware_sweep.sweep(model, mapping, HardwareSpec(quantize_weights=False), x, y,
                              calibration, instances=3, variations=(0.0,))
  assert rows[0]["accuracies"] == [explicit] and not rows[0]["random"]


def test_each_condition_is_its_chip_on_the_same_seeds(digits_model):
  """Brute force: each row's accuracies are `analog_accuracy` of the chip the documented
  one-factor-at-a-time rule gives, on seeds 5, 6, 7; equal chips are measured once, and a
  cache of finished conditions is reused."""
  model, mapping, calibration, x, y = digits_model
  nominal = HardwareSpec(input_bits=8, adc_bits=6, variation=0.1, stuck_on_rate=0.05)
  clean = dict(variation=0.0, stuck_on_rate=0.0, stuck_off_rate=0.0)
  expected = [("variation", 0.0, nominal.replace(**clean)),
              ("variation", 0.2, nominal.replace(**{**clean, "variation": 0.2})),
              ("adc_bits", 3, nominal.replace(**{**clean, "adc_bits": 3})),
              ("adc_bits", 6, nominal.replace(**clean)),
              ("stuck", 0.3, nominal.replace(**{**clean, "stuck_on_rate": 0.15,
                                                "stuck_off_rate": 0.15}))]
  saved = {}
  rows = hardware_sweep.sweep(model, mapping, nominal, x, y, calibration, instances=3,
                              variations=(0.0, 0.2), adc_bits=(3, 6), stuck=(0.3,), seed=5,
                              on_result=saved.__setitem__)
  assert [(r["factor"], r["value"]) for r in rows] == [e[:2] for e in expected]
  assert [r["measured"] for r in rows] == [True, True, True, False, True]
  for row, (_, _, hw) in zip(rows, expected):
    brute = analog_accuracy(model, mapping, hw, x, y, [5, 6, 7], calibration)
    if not row["random"]:
      assert brute[0] == brute[1] == brute[2]  # the same chip for every seed
      brute = brute[:1]
    assert np.max(np.abs(np.subtract(row["accuracies"], brute))) <= 1 / len(y), (row, brute)
    assert row["mean"] == pytest.approx(np.mean(row["accuracies"]))
  assert rows[1]["std"] > 0
  again = hardware_sweep.sweep(model, mapping, nominal, x, y, calibration, instances=3,
                               variations=(0.0, 0.2), adc_bits=(3, 6), stuck=(0.3,), seed=5,
                               cache=saved)
  assert not any(r["measured"] for r in again)
  assert [r["accuracies"] for r in again] == [r["accuracies"] for r in rows]
  short = {key: accs[:1] for key, accs in saved.items()}  # from a run with 1 instance
  third = hardware_sweep.sweep(model, mapping, nominal, x, y, calibration, instances=3,
                               variations=(0.0, 0.2), adc_bits=(3, 6), stuck=(0.3,), seed=5,
                               cache=short)
  assert [r["measured"] for r in third] == [r["random"] for r in rows]
  assert [r["accuracies"] for r in third] == [r["accuracies"] for r in rows]
