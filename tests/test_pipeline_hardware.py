"""xbar-prune's hardware phase: energy, area and accuracy on non-ideal crossbars for the dense
and the pruned model, in metrics.json and report.md; bad hardware fields are config errors."""

import pathlib

import pytest

from xbar_tfmot.app import pipeline
from xbar_tfmot.app.configuration import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny(workdir, **hardware):
  namespace: dict = {}
  path = ROOT / "configs" / "tiny_digits.py"
  exec(compile(path.read_text(), str(path), "exec"), namespace)
  config = namespace["get_config"]()
  config.workdir = str(workdir)
  config.train.verbose = 0
  config.report.plots, config.export.enabled = False, False
  config.hardware.enabled = True
  for key, value in hardware.items():
    config.hardware[key] = value
  return config


def test_hardware_phase_reports_dense_and_pruned(tmp_path):
  config = tiny(tmp_path, instances=2, test_images=200, calibration_images=128,
                set="adc_bits=null,input_bits=null")  # ideal converters, exact cells
  metrics = pipeline.run(config, log=lambda line: None)
  hw = metrics["hardware"]
  assert hw["enabled"] and hw["instances"] == 2 and hw["images"] == 200
  assert hw["hardware"]["adc_bits"] is None and hw["hardware"]["name"] == "isaac_32nm"
  dense, pruned = hw["dense"], hw["pruned"]
  assert pruned["crossbars"] == metrics["crossbars"]["pruned"]
  assert dense["crossbars"] == metrics["crossbars"]["dense"]
  assert pruned["energy_nj"] < dense["energy_nj"] and pruned["area_mm2"] < dense["area_mm2"]
  for r in (dense, pruned):  # no variation, no faults, no converters: the float model's answers
    assert r["accuracy_std"] == 0.0 and abs(r["accuracy_mean"] - r["float_accuracy"]) <= 0.01
  assert pruned["float_accuracy"] > 0.5
  report = (tmp_path / "report" / "report.md").read_text()
  assert "## On isaac_32nm crossbars" in report and f"| pruned | {pruned['crossbars']} |" in report


@pytest.mark.parametrize("fields, match", [
    ({"preset": "nope"}, "config.hardware \\(preset='nope'"),
    ({"set": "adc_bits=40"}, "config.hardware .*adc_bits"),
    ({"instances": 0}, "config.hardware.instances=0"),
])
def test_bad_hardware_fields(tmp_path, fields, match):
  with pytest.raises(ConfigError, match=match):
    pipeline.Pipeline(tiny(tmp_path, **fields))
