"""xbar-prune's hardware phase: energy, area and accuracy on non-ideal crossbars for the dense
and the pruned model, in metrics.json and report.md, with the one-factor-at-a-time accuracy
sweep (table and plot); bad hardware fields are config errors. The sweep itself:
tests/test_hardware_sweep.py."""

import json

import pytest
from _configs import load_config

from xbar_tfmot.app import configuration, pipeline
from xbar_tfmot.app.configuration import ConfigError
from xbar_tfmot.models import hardware_sweep


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
  adc3 = hardware_sweep.conditions(configuration.parse(config).hardware.hardware_spec, adc_bits=(3,))[0]
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


@pytest.fixture
def aware_seen(monkeypatch) -> list:
  """The `hardware_aware` argument of every `prune_crossbar` call the test makes, in order."""
  from xbar_tfmot.pruning import api
  seen = []
  real = api.prune_crossbar

  def spy(*args, **kwargs):
    seen.append(kwargs.get("hardware_aware"))
    return real(*args, **kwargs)

  monkeypatch.setattr(api, "prune_crossbar", spy)
  return seen


def test_hardware_aware_training_sees_the_configured_chip(tmp_path, aware_seen):
  """`train.hardware_aware`: the joint prune phase hands `prune_crossbar` a `HardwareAware` of
  the run's chip at `train.hardware_aware_variation`, and the run trains, exports and
  verifies through it."""
  seen = aware_seen
  lines: list[str] = []
  config = tiny(tmp_path)
  config.hardware.enabled = False
  config.train.hardware_aware, config.train.hardware_aware_variation = True, 0.07
  config.export.enabled = True
  metrics = pipeline.run(config, log=lines.append)
  (aware,) = seen
  assert aware.hardware.name == config.hardware.preset and aware.hardware.variation == 0.07
  assert not aware.stuck
  assert any("hardware-aware: training sees isaac_32nm (variation 0.07" in l for l in lines)
  assert metrics["export"]["verified"] is True


def test_hardware_aware_layer_by_layer_trains_every_step_against_the_chip(tmp_path, aware_seen):
  """`train.hardware_aware` with `schedule.procedure=layer_by_layer`: the prune phase hands
  `prune_layer_by_layer` the run's `HardwareAware`, which wraps the layer's step and its
  fine-tuning with it (fc2 alone is pruned, one step, to stay short)."""
  seen = aware_seen
  lines: list[str] = []
  config = load_config(
      workdir=str(tmp_path), train__verbose=0, train__baseline_epochs=1, data__train_size=400,
      report__plots=False, export__enabled=False, allocation__reorder=False,
      allocation__validation_images=100, schedule__procedure="layer_by_layer",
      allocation__leave_dense="conv1,conv2,conv3,conv4,conv5,conv6,fc1",
      layer_by_layer__max_reduction=0.2, layer_by_layer__reduction_step=0.2,
      layer_by_layer__max_accuracy_drop=1.0, train__hardware_aware=True,
      train__hardware_aware_variation=0.05)
  pipeline.run(config, log=lines.append)
  assert len(seen) == 2  # fc2's one step and its fine-tuning
  assert all(a is not None and a.hardware.name == config.hardware.preset
             and a.hardware.variation == 0.05 for a in seen)
  assert any("hardware-aware: training sees isaac_32nm (variation 0.05" in l for l in lines)
  state = json.loads((tmp_path / "state.json").read_text())["phases"]["prune"]
  (fc2,) = state["layer_by_layer"]
  assert (fc2["layer"], fc2["steps"], fc2["stop"]) == ("fc2", 1, "max_reduction")
