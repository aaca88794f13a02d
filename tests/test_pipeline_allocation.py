"""xbar-prune with the network-level allocation modes: the model-wide crossbar count is the
global budget exactly; sensitivity measures its curves on training images held out of training."""

import pytest
from _configs import load_config

from xbar_tfmot.app import configuration, pipeline
from xbar_tfmot.app.configuration import RENAMED, ConfigError
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.spec import parse_spec


def tiny(workdir, **crossbar):
  return load_config(workdir=str(workdir), train__verbose=0, train__baseline_epochs=2,
                     report__plots=False, export__enabled=False,
                     **{RENAMED.get(f"crossbar.{k}", f"allocation.{k}").replace(".", "__"): v
                        for k, v in crossbar.items()})


@pytest.mark.parametrize("mode, score", [("global_score", "magnitude"),
                                         ("global_score", "saliency"),
                                         ("sensitivity", "magnitude")])
def test_allocation_modes_meet_the_global_budget(tmp_path, mode, score):
  lines: list[str] = []
  config = tiny(tmp_path, mode=mode, score=score, validation_images=256)
  metrics = pipeline.run(config, log=lines.append)
  rows = metrics["layers"]
  spec = parse_spec(config.chip.spec)
  geometries = [LayerGeometry(r["name"], r["type"], tuple(r["kernel_shape"]), spec) for r in rows]
  plan = CrossbarPolicy(mode="global").plan(geometries, config.allocation.reduction)
  assert sum(r["pruned"] for r in rows) == sum(
      g.dense_crossbars if plan[g.name] is None else plan[g.name] for g in geometries)
  assert rows[0]["pruned"] == rows[0]["dense"]  # the first conv stays dense
  curves = [line for line in lines if "sensitivity curves" in line]
  assert bool(curves) == (mode == "sensitivity")
  if curves:
    assert "on 256 held-out training images" in curves[0]


@pytest.mark.parametrize("fields, match", [
    ({"mode": "global_score", "prune_epochs": 0}, "schedule.prune_epochs >= 1"),
    ({"mode": "sensitivity", "validation_images": 100000}, "validation_images=100000"),
    ({"mode": "best"}, "config.allocation.mode='best'"),
])
def test_allocation_config_errors(tmp_path, fields, match):
  config = tiny(tmp_path)
  for key, value in fields.items():
    (config.schedule if key == "prune_epochs" else config.allocation)[key] = value
  with pytest.raises(ConfigError, match=match):
    pipeline.Pipeline(config).prepare()


def test_the_energy_score_config_still_works_and_warns(tmp_path):
  """`allocation.score="energy"` (the former name of "magnitude") passes the checks with a
  FutureWarning (a config is read by end users) naming the new value, and a run saved with it
  resumes under "magnitude"."""
  config = tiny(tmp_path, mode="global_score", score="energy")
  with pytest.warns(FutureWarning, match="'magnitude'"):
    configuration.parse(config)
  assert configuration.defaults().allocation.score == "magnitude"
  old = configuration.flatten(config)
  new = {**old, "allocation.score": "magnitude"}
  assert configuration.differences(old, new) == []
  assert configuration.differences(old, {**new, "allocation.score": "saliency"}) == ["allocation.score"]


def test_distillation_trains_the_pruned_model_against_the_dense_one(tmp_path):
  lines: list[str] = []
  config = tiny(tmp_path, mode="global_score", score="saliency")
  config.train.distillation_weight, config.train.distillation_temperature = 0.5, 3.0
  metrics = pipeline.run(config, log=lines.append)
  assert any("distillation from the dense model: weight 0.5, temperature 3.0" in l
             for l in lines)
  state = (tmp_path / "checkpoints" / "prune" / "progress.json").read_text()
  assert "distillation_accuracy" in state  # the pruned model was compiled for distillation
  resumed = pipeline.Pipeline(config).context.load(tmp_path / "checkpoints" / "prune" / "model.keras")
  assert type(resumed.loss).__name__ == "DistillationLoss"  # a resumed run keeps training so
  assert resumed.loss.weight == 0.5 and resumed.loss.temperature == 3.0
  assert metrics["accuracy"]["pruned"] > 0.6


def test_distillation_weight_out_of_range_names_the_field(tmp_path):
  config = tiny(tmp_path)
  config.train.distillation_weight = 1.5
  with pytest.raises(ConfigError, match="config.train.distillation_weight=1.5"):
    pipeline.Pipeline(config).prepare()


def test_validated_mode_trains_the_best_candidate_and_never_reads_the_test_set(tmp_path,
                                                                              monkeypatch):
  """`allocation.mode="validated"`: every candidate is scored on the validation images carved
  from the training images (a spy on the selection's accuracy sees only those) after its
  masked fine-tuning steps, the best one is trained, and the report lists them all."""
  import json

  import numpy as np

  from xbar_tfmot.app import preparation
  from xbar_tfmot.pruning import selection
  seen = []
  real = selection.accuracy

  def spy(model, x, y, batch_size=256):
    seen.append(x)
    return real(model, x, y, batch_size)

  ramps, cut = [], selection.gradual_cut

  def spy_cut(*args, **kwargs):
    ramps.append(args[-1])
    return cut(*args, **kwargs)

  monkeypatch.setattr(selection, "accuracy", spy)
  monkeypatch.setattr(selection, "gradual_cut", spy_cut)
  names = ["per_layer", "global_score:magnitude", "global_score:relative_magnitude"]
  lines: list[str] = []
  config = tiny(tmp_path, mode="validated", validation_images=256, candidates=",".join(names),
                candidate_steps=8)
  metrics = pipeline.run(config, log=lines.append)
  allocation = json.loads((tmp_path / "state.json").read_text())["phases"]["prune"]["allocation"]
  rows = allocation["candidates"]
  assert [r["name"] for r in rows] == names
  scores = [r["validation_accuracy"] for r in rows]
  assert allocation["chosen"] == names[scores.index(max(scores))]
  chosen = rows[scores.index(max(scores))]
  assert metrics["crossbars"]["pruned"] == chosen["crossbars"]
  data = preparation.load_data(configuration.parse(config))
  assert [[s for s, _ in r["trajectory"]] for r in rows] == [[0, 2, 4, 8]] * len(names)
  steps = -(-len(data.train[1]) // config.train.batch_size)  # the candidates are cut along the
  sched = config.schedule  # training's own mask updates: its ramp's steps over the frequency
  updates = round(sched.ramp * sched.prune_epochs * steps) // (steps // sched.updates_per_epoch)
  assert updates > 1 and ramps == [updates] * len(names)
  assert len(seen) == 4 * len(names)
  assert all(np.array_equal(x, data.validation[0]) for x in seen)
  assert any(f"* {allocation['chosen']}: validation accuracy" in l for l in lines)
  report = (tmp_path / "report" / "report.md").read_text()
  assert "## Allocation chosen on validation" in report
  assert f"| {allocation['chosen']} (chosen) | {chosen['crossbars']} |" in report
  assert "fine-tuned for 8 masked steps" in report
