"""xbar-prune's hardware phase: energy, area and accuracy on non-ideal crossbars for the dense
and the pruned model, in metrics.json and report.md; bad hardware fields are config errors."""

import pytest
from _configs import load_config

from xbar_tfmot.app import pipeline
from xbar_tfmot.app.configuration import ConfigError


def tiny(workdir, **hardware):
  return load_config(workdir=str(workdir), train__verbose=0, report__plots=False,
                     export__enabled=False, hardware__enabled=True,
                     **{f"hardware__{k}": v for k, v in hardware.items()})


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
