"""The typed configuration: parsed once into frozen sections; the old names work and warn."""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
from _configs import ROOT, TINY, load_config
from absl import flags
from ml_collections import config_flags

from xbar_tfmot.app import configuration
from xbar_tfmot.app.configuration import RENAMED, SECTIONS, ConfigError, RunConfig


def _set(config, path: str, value) -> None:
  section, field = path.split(".")
  config[section][field] = value


def _other_value(path: str):
  """A valid value for `path` other than its default on the tiny config."""
  return {"chip.spec": "64x64", "chip.granularity": "crossbar", "allocation.reduction": 0.5,
          "allocation.mode": "global", "allocation.score": "saliency",
          "allocation.leave_dense": "", "allocation.validation_images": 100,
          "allocation.reorder": False, "schedule.projection": "topk",
          "schedule.regrowth": "straight_through", "schedule.temperature": 2.0, "schedule.ramp": 0.5,
          "schedule.updates_per_epoch": 2, "schedule.procedure": "joint",
          "schedule.prune_epochs": 3, "schedule.finetune_epochs": 2,
          "layer_by_layer.max_accuracy_drop": 0.05, "layer_by_layer.max_reduction": 0.8,
          "layer_by_layer.crossbar_threshold": 2, "layer_by_layer.reduction_step": 0.2,
          "layer_by_layer.step_epochs": 2}[path]


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_an_old_name_still_works_and_warns(old, new):
  config = load_config(TINY)
  value = _other_value(new)
  _set(config, old, value)
  with pytest.warns(FutureWarning, match=rf"config\.{re.escape(old)} is deprecated; use "
                                              rf"config\.{re.escape(new)}"):
    parsed = configuration.parse(config)
  section, field = new.split(".")
  assert getattr(getattr(parsed, section), field) == value
  assert parsed.flat()[new] == value and old not in parsed.flat()


def test_the_old_name_overrides_the_new_one_and_says_so():
  config = load_config(TINY)
  config.crossbar.reduction = 0.5
  with pytest.warns(FutureWarning, match=r"replaces config\.allocation\.reduction=0\.6"):
    assert configuration.parse(config).allocation.reduction == 0.5


def test_the_new_names_do_not_warn():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for path in sorted((ROOT / "configs").glob("*.py")):
      configuration.parse(load_config(path))


def test_old_flags_on_the_command_line():
  """`--config.crossbar.reduction=0.55` (the release before's flag) reaches the new field."""
  argv = ["prog", f"--config={TINY}", "--config.crossbar.reduction=0.55",
          "--config.train.prune_epochs=3", "--config.allocation.mode=global"]
  values = flags.FlagValues()
  flag = config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                         sys_argv=argv)
  values(argv)
  with pytest.warns(FutureWarning):
    parsed = configuration.parse(flag.value)
  assert parsed.allocation.reduction == 0.55 and parsed.schedule.prune_epochs == 3
  assert parsed.allocation.mode == "global"


def test_a_run_folder_of_the_release_before_resumes():
  """`config.json` written with the old names (and `score="energy"`) equals the new config."""
  new = configuration.parse(load_config(TINY)).flat()
  old = {next((o for o, n in RENAMED.items() if n == k), k): v for k, v in new.items()}
  old["crossbar.score"] = "energy"
  del old["allocation.candidates"]  # a field added since: it counts at its default
  assert "crossbar.reduction" in old and "allocation.reduction" not in old
  assert configuration.differences(old, new) == []
  assert configuration.differences(old, {**new, "allocation.candidates": "per_layer"}) == [
      "allocation.candidates"]
  assert configuration.differences(old, {**new, "allocation.reduction": 0.1}) == [
      "allocation.reduction"]


def test_every_field_is_documented_once_in_its_section():
  for cls in (*SECTIONS.values(), RunConfig):
    for f in dataclasses.fields(cls):
      if f.name in SECTIONS:
        continue
      assert re.search(rf"^\s+{f.name}: \S", cls.__doc__, re.M), f"{cls.__name__}.{f.name}"


def test_defaults_are_derived_from_the_sections():
  flat = configuration.flatten(configuration.defaults())
  parsed = configuration.parse(configuration.defaults())
  assert {k: v for k, v in flat.items() if k not in RENAMED} == parsed.flat()
  assert all(flat[k] is None for k in RENAMED)


def test_parsed_values_are_read_not_reparsed():
  config = load_config(TINY, hardware__enabled=True, hardware__set="adc_bits=6",
                       allocation__leave_dense="conv1, fc2", export__formats="saved_model,json")
  parsed = configuration.parse(config)
  assert parsed.hardware.hardware_spec.adc_bits == 6
  assert parsed.hardware.sweep == {"variations": (0.0, 0.05, 0.1), "adc_bits": (4, 6, 8),
                                   "stuck": (), "times": ()}
  assert parsed.hardware.compensation_steps == ()
  timed = configuration.parse(load_config(TINY, hardware__enabled=True, hardware__time=86400.0,
                                          hardware__compensation="batchnorm,adc",
                                          hardware__sweep_times="1,3.15e7"))
  assert timed.hardware.hardware_spec.drift_time == 86400.0
  assert timed.hardware.compensation_steps == ("adc", "batchnorm")
  assert timed.hardware.sweep["times"] == (1.0, 3.15e7)
  with pytest.raises(configuration.ConfigError, match="compensation"):
    configuration.parse(load_config(TINY, hardware__enabled=True, hardware__compensation="bn"))
  assert parsed.allocation.dense_layers == ("conv1", "fc2")
  assert parsed.export.kinds == ("saved_model", "json")
  assert parsed.chip.crossbar.rows == 72 and parsed.layer_by_layer.rules.step == 0.1
  assert configuration.parse(parsed) is parsed
  with pytest.raises(dataclasses.FrozenInstanceError):
    parsed.allocation.reduction = 0.1


def test_allocation_objective():
  """`allocation.objective`: crossbars by default; energy with a mode that splits by cost and a
  chip that can hold the crossbar; latency refused with the reason; the rest named."""
  assert configuration.parse(load_config(TINY)).allocation.objective == "crossbars"
  energy = dict(allocation__mode="global_score", allocation__objective="energy")
  assert configuration.parse(load_config(TINY, **energy)).allocation.objective == "energy"
  validated = configuration.parse(load_config(
      TINY, allocation__mode="validated", allocation__objective="energy",
      allocation__candidates="global_score:magnitude,global_score:fisher"))
  assert validated.allocation.candidate_names == ("global_score:magnitude", "global_score:fisher")
  cases = [
      (dict(allocation__objective="joules"), r"config\.allocation\.objective='joules': unknown; "
                                             r"valid: crossbars, energy, latency"),
      (dict(allocation__mode="global_score", allocation__objective="latency"),
       r"config\.allocation\.objective='latency': .*latency is ceil\(positions / replicas\)"),
      (dict(allocation__objective="energy"), r"config\.allocation\.mode='per_layer' with "
                                             r"allocation\.objective='energy': valid: "
                                             r"mode='global_score'"),
      (dict(allocation__mode="validated", allocation__objective="energy",
            allocation__candidates="per_layer,global_score:magnitude,sensitivity"),
       r"config\.allocation\.candidates: per_layer, sensitivity cannot split by "
       r"allocation\.objective='energy'"),
      (dict(hardware__set="differential=true", **energy),
       r"config\.allocation\.objective='energy' costs the crossbars on "
       r"hardware\.preset='isaac_32nm', which cannot hold chip\.spec=.*differential"),
  ]
  for fields, message in cases:
    with pytest.raises(ConfigError, match=message):
      configuration.parse(load_config(TINY, **fields))
