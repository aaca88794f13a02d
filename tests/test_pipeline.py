"""The xbar-prune pipeline on the tiny digits config: every phase, outputs, resume, bad configs."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from _configs import ROOT, TINY, load_config

from xbar_tfmot.app import configuration, pipeline, preparation, run_context
from xbar_tfmot.app.run_context import RunData
from xbar_tfmot.app.configuration import ConfigError
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.export.exporter import read_mapping
from xbar_tfmot.models.introspection import FLAVOURS
from xbar_tfmot.models.report import crossbar_report


@pytest.fixture(scope="module", params=FLAVOURS)
def straight(request, tmp_path_factory):
  """One straight run of the tiny config per Keras flavour, and the log it printed."""
  workdir = tmp_path_factory.mktemp(f"straight_{request.param}")
  lines: list[str] = []
  config = load_config(TINY, workdir=str(workdir), train__verbose=0, flavour=request.param)
  metrics = pipeline.run(config, log=lines.append)
  return workdir, metrics, lines, config


def test_every_phase_writes_its_outputs(straight):
  workdir, metrics, lines, _ = straight
  for name in ("report/report.md", "report/metrics.json", "report/mapping.json",
               "report/crossbars_per_layer.png", "report/occupancy.png",
               "report/training_curves.png", "export/model.tflite", "export/model.keras",
               "export/mapping.json", "export/saved_model/saved_model.pb",
               "checkpoints/baseline.keras", "checkpoints/pruned.keras"):
    assert (workdir / name).is_file(), name
  state = json.loads((workdir / "state.json").read_text())
  assert sorted(state["phases"]) == sorted(run_context.PHASES)
  assert tuple(p.name for p in pipeline.PHASES) == run_context.PHASES  # the seeds' order
  for phase in run_context.PHASES:  # hardware is off in the tiny config
    assert any(line.startswith((f"[{phase}] done", f"[{phase}] skipped")) for line in lines), phase
  assert json.loads((workdir / "report" / "metrics.json").read_text()) == json.loads(
      json.dumps(metrics, default=float))
  assert metrics["export"]["verified"] is True


def test_metrics_agree_with_report_mapping_and_export(straight):
  workdir, metrics, _, config = straight
  spec = configuration.parse(config).chip.crossbar
  exported = read_mapping(workdir / "export" / "model.tflite")
  report = crossbar_report(pipeline.Pipeline(config).context.load(workdir / "export" / "model.keras"),
                           spec)
  assert metrics["crossbars"]["pruned"] == report.total("packed") == exported.totals["crossbars"]
  assert metrics["crossbars"]["dense"] == report.total("dense") == exported.totals["dense"]
  by_layer = {l["name"]: l for l in exported.data["layers"]}
  for row in metrics["layers"]:
    assert row["pruned"] == by_layer[row["name"]]["counts"]["crossbars"]
  first, *rest = metrics["layers"]
  assert first["pruned"] == first["dense"]  # the first conv is left dense by default
  for row in rest:
    assert row["pruned"] == crossbar_budget(row["dense"], config.allocation.reduction)
    assert 0.0 < row["kept_energy"] < 1.0


def test_the_report_gives_the_chip_cost_with_the_hardware_phase_off(straight):
  """Energy, area and latency on `hardware.preset` beside the crossbars, from the cost model:
  the pruned model's equal `estimate_cost` over its exported mapping, and cost less."""
  import xbar_tfmot as xt
  from xbar_tfmot.models.analog_model import output_positions
  workdir, metrics, _, config = straight
  chip = metrics["chip_cost"]
  assert chip["hardware"] == config.hardware.preset and not config.hardware.enabled
  model = pipeline.Pipeline(config).context.load(workdir / "export" / "model.keras")
  mapping = read_mapping(workdir / "export" / "model.tflite")
  hw = xt.HardwareSpec.preset(config.hardware.preset)
  cost = xt.estimate_cost(mapping, hw, output_positions(model, mapping.layer_names)).pruned
  assert chip["pruned"]["energy_nj"] == pytest.approx(cost.energy_pj / 1e3)
  assert chip["pruned"]["crossbars"] == metrics["crossbars"]["pruned"]
  assert chip["dense"]["crossbars"] == metrics["crossbars"]["dense"]
  for field in ("energy_nj", "area_mm2"):
    assert 0 < chip["pruned"][field] < chip["dense"][field]
  report = (workdir / "report" / "report.md").read_text()
  assert f"## On `{hw.name}` (cost model)" in report and "| saved |" in report


def test_learns_and_keeps_accuracy(straight):
  _, metrics, _, _ = straight
  acc = metrics["accuracy"]
  assert acc["dense"] > 0.6  # 10 classes: chance is 0.1
  assert acc["reordered"] == pytest.approx(acc["dense"], abs=1e-6)  # reorder keeps the function
  assert acc["pruned"] > 0.5


def test_rerun_skips_finished_phases(straight):
  workdir, metrics, _, config = straight
  lines: list[str] = []
  again = pipeline.run(config, log=lines.append)
  assert not any(l.startswith(("[baseline] done", "[prune] done", "[export] done"))
                 for l in lines)
  assert again["crossbars"] == metrics["crossbars"]
  assert again["accuracy"] == metrics["accuracy"]


def test_rerun_with_other_config_is_refused(straight):
  workdir, _, _, config = straight
  other = load_config(TINY, workdir=str(workdir), flavour=config.flavour, allocation__reduction=0.5)
  with pytest.raises(ConfigError, match="allocation.reduction"):
    pipeline.Pipeline(other).prepare()


def _command(workdir: pathlib.Path, flavour: str = "tf_keras") -> list[str]:
  return [sys.executable, "-c", "from xbar_tfmot.app.pipeline import main; main()",
          f"--config={TINY}", f"--config.workdir={workdir}", "--config.train.verbose=0",
          "--config.report.plots=False", f"--config.flavour={flavour}"]


def _weights(path: pathlib.Path, flavour: str) -> list:
  pipe = pipeline.Pipeline(load_config(TINY, flavour=flavour))
  return pipe.context.load(path).get_weights()


def test_killed_during_pruning_resumes_to_the_same_result(straight, tmp_path):
  """A run killed mid-pruning and resumed ends where the straight run did: same mapping,
  accuracy and weights. It starts from the straight run's baseline and reorder checkpoints, so
  the subprocess goes straight to pruning."""
  workdir, metrics, _, config = straight
  (tmp_path / "checkpoints").mkdir()
  for name in ("baseline.keras", "reordered.keras"):
    shutil.copy(workdir / "checkpoints" / name, tmp_path / "checkpoints" / name)
  phases = json.loads((workdir / "state.json").read_text())["phases"]
  (tmp_path / "state.json").write_text(json.dumps(
      {"phases": {p: phases[p] for p in ("baseline", "reorder")}}))
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  progress = tmp_path / "checkpoints" / "prune" / "progress.json"
  proc = subprocess.Popen(_command(tmp_path, config.flavour), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (progress.exists() and json.loads(progress.read_text())["epoch"] >= 1):
    assert proc.poll() is None, f"run ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
    assert time.time() < deadline, "pruning never reached its first checkpoint"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  state = json.loads((tmp_path / "state.json").read_text())
  assert "prune" not in state["phases"]  # killed during pruning
  assert json.loads(progress.read_text())["epoch"] < (config.schedule.prune_epochs +
                                                      config.schedule.finetune_epochs)

  done = subprocess.run(_command(tmp_path, config.flavour), env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "[prune] resuming after epoch" in done.stdout
  assert "[baseline] done" not in done.stdout and "[reorder] done" not in done.stdout
  resumed = json.loads((tmp_path / "report" / "metrics.json").read_text())
  assert resumed["crossbars"] == metrics["crossbars"]
  assert resumed["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
  # The same surviving weights: the mapping lists which columns survived and where.
  assert (json.loads((tmp_path / "report" / "mapping.json").read_text()) ==
          json.loads((workdir / "report" / "mapping.json").read_text()))
  straight_weights = _weights(workdir / "checkpoints" / "pruned.keras", config.flavour)
  resumed_weights = _weights(tmp_path / "checkpoints" / "pruned.keras", config.flavour)
  assert len(resumed_weights) == len(straight_weights)
  for a, b in zip(resumed_weights, straight_weights):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _epochs_done(workdir: pathlib.Path, phase: str) -> int:
  progress = workdir / "checkpoints" / phase / "progress.json"
  try:
    return json.loads(progress.read_text())["epoch"]
  except (FileNotFoundError, json.JSONDecodeError):
    return 0


# Where the chained run below is killed: the phase the kill must land in, and the moment,
# read from the run's log lines and checkpoint files.
KILL_POINTS = (
    ("baseline", lambda lines, w: _epochs_done(w, "baseline") >= 1),
    ("reorder", lambda lines, w: any(l.startswith("[reorder] searching") for l in lines)),
    ("prune", lambda lines, w: any(l.startswith("[finetune]") for l in lines)),  # fine-tuning
    ("export", lambda lines, w: any(l.startswith("[export] ") and "done" not in l
                                    for l in lines)),
    ("report", lambda lines, w: any(l.startswith("[hardware] skipped") for l in lines)),
)


def _kill_when(workdir: pathlib.Path, flavour: str, ready) -> list[str]:
  """Starts the pipeline on `workdir`, SIGKILLs it as soon as `ready(lines, workdir)` and
  returns the lines it printed."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
  proc = subprocess.Popen(_command(workdir, flavour), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines: list[str] = []
  reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
  reader.start()
  deadline = time.time() + 300
  while not ready(list(lines), workdir):
    assert proc.poll() is None, "run ended before it could be killed:\n" + "".join(lines[-40:])
    assert time.time() < deadline, "the kill point never came:\n" + "".join(lines[-40:])
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  reader.join(5)
  return lines


@pytest.mark.parametrize("straight", ["tf_keras"], indirect=True)
def test_killed_in_every_phase_resumes_to_the_same_result(straight, tmp_path):
  """One run killed once in each phase (baseline mid-training, reorder, fine-tuning, export,
  report), resumed after each kill, ends where the straight run did: the same crossbar
  counts, metrics, mapping and weights, and an export that passes xbar-verify. tf_keras only:
  what differs between the flavours (saving and loading) is killed for both in the
  pruning-phase test above."""
  workdir, metrics, _, config = straight
  for phase, ready in KILL_POINTS:
    lines = _kill_when(tmp_path, config.flavour, ready)
    state = tmp_path / "state.json"  # written when the first phase ends
    done = json.loads(state.read_text())["phases"] if state.exists() else {}
    assert phase not in done, f"the kill meant for {phase} landed after it:\n{''.join(lines)}"
    assert sorted(done) == sorted(run_context.PHASES[:run_context.PHASES.index(phase)])
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  final = subprocess.run(_command(tmp_path, config.flavour), env=env, capture_output=True,
                         text=True, timeout=600)
  assert final.returncode == 0, final.stderr[-3000:]
  resumed = json.loads((tmp_path / "report" / "metrics.json").read_text())
  assert resumed["crossbars"] == metrics["crossbars"]
  assert resumed["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
  assert (json.loads((tmp_path / "report" / "mapping.json").read_text()) ==
          json.loads((workdir / "report" / "mapping.json").read_text()))
  for name in ("baseline.keras", "pruned.keras"):
    for a, b in zip(_weights(tmp_path / "checkpoints" / name, config.flavour),
                    _weights(workdir / "checkpoints" / name, config.flavour), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert json.loads((tmp_path / "state.json").read_text())["phases"]["export"]["verified"]
  assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_mapping_only_config_runs_without_data(tmp_path):
  config = load_config(ROOT / "configs" / "imagenet_mapping.py", workdir=str(tmp_path),
                       model__name="resnet18", model__width=0.125,
                       model__input_shape="64,64,3", model__classes=10)
  metrics = pipeline.run(config, log=lambda line: None)
  assert metrics["accuracy"] == {"dense": None, "reordered": None, "pruned": None}
  mapping = json.loads((tmp_path / "report" / "mapping.json").read_text())
  assert mapping["totals"]["crossbars"] == metrics["crossbars"]["pruned"]
  for row in metrics["layers"][1:]:
    assert row["pruned"] == crossbar_budget(row["dense"], 0.7)
  assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
  config = load_config(path)
  configuration.parse(config)


@pytest.mark.parametrize("field,value,message", [
    ("allocation__reduction", 1.5, "config.allocation.reduction=1.5"),
    ("chip__granularity", "rows", "config.chip.granularity='rows': unknown; valid"),
    ("export__formats", "tflite,json", "add saved_model"),
    ("export__formats", "onnx", "config.export.formats='onnx'"),
    ("flavour", "keras2", "config.flavour='keras2'"),
    ("model__name", "alexnet", "config.model.name='alexnet'"),
    ("train__batch_size", 0, "config.train.batch_size=0"),
    ("chip__spec", "128x", "config.chip.spec='128x'"),
    ("chip__spec", "nope.json", "nope.json"),
    ("model__file", "/nonexistent/model.keras", "config.model.file"),
    ("data__path", "/nonexistent/folder", "config.data.path"),
])
def test_bad_values_name_the_field(tmp_path, field, value, message):
  config = load_config(TINY, workdir=str(tmp_path), **{field: value})
  with pytest.raises(ConfigError) as err:
    pipeline.Pipeline(config).prepare()
  assert message in str(err.value)
  assert not (tmp_path / "checkpoints" / "baseline").exists()


def test_unknown_and_mistyped_fields_in_a_config_file():
  config = configuration.defaults()
  config.unlock()
  config.train.epochz = 3
  with pytest.raises(ConfigError, match=r"config\.train\.epochz: unknown field; valid fields "
                     r"here: .*baseline_epochs"):
    configuration.parse(config)
  import ml_collections
  loose = configuration.defaults().to_dict()
  loose["train"]["batch_size"] = "64"
  with pytest.raises(ConfigError, match=r"config\.train\.batch_size='64': wrong type str; "
                     r"valid: int"):
    configuration.parse(ml_collections.ConfigDict(loose))


def test_missing_dataset_fails_before_training(tmp_path):
  empty = tmp_path / "fmnist"
  empty.mkdir()
  config = load_config(ROOT / "configs" / "fashion_mnist_vgg8.py", workdir=str(tmp_path / "run"),
                       data__path=str(empty))
  with pytest.raises(ConfigError, match=r"config\.data\.name='fashion_mnist': Fashion-MNIST: "
                     r"train-images-idx3-ubyte\.gz.* not found"):
    pipeline.Pipeline(config).prepare()
  assert not (tmp_path / "run" / "checkpoints" / "baseline").exists()


def test_model_file_without_mappable_layer(tmp_path):
  import tf_keras
  inp = tf_keras.Input((8, 8, 1))
  x = tf_keras.layers.BatchNormalization()(inp)
  model = tf_keras.Model(inp, tf_keras.layers.GlobalAveragePooling2D()(x), name="no_xbar")
  model.save(tmp_path / "m.keras")
  config = load_config(TINY, workdir=str(tmp_path / "run"), model__file=str(tmp_path / "m.keras"))
  with pytest.raises(ConfigError, match=r"config\.model\.file: the model 'no_xbar' has no "
                     r"mappable layer"):
    pipeline.Pipeline(config).prepare()


def test_command_line_rejects_an_unknown_field(tmp_path):
  out = subprocess.run(_command(tmp_path) + ["--config.train.epochs=3"], capture_output=True,
                       text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert out.returncode != 0
  assert "epochs" in out.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_starts_from_a_given_model_file(tmp_path):
  import tf_keras

  from xbar_tfmot.app import datasets, zoo
  (x, y), (xt, yt) = datasets.load_digits()
  model = zoo.build_model("vgg8", (8, 8, 1), 10, 0.125, "tf_keras", seed=5)
  model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  model.fit(x, y, batch_size=16, epochs=2, verbose=0)
  model.save(tmp_path / "trained.keras")
  expected = model.evaluate(xt, yt, verbose=0)[1]
  config = load_config(TINY, workdir=str(tmp_path / "run"), model__file=str(tmp_path / "trained.keras"),
                       train__baseline_epochs=0, schedule__prune_epochs=1, schedule__finetune_epochs=0,
                       allocation__reorder=False, export__enabled=False, report__plots=False,
                       train__verbose=0)
  metrics = pipeline.run(config, log=lambda line: None)
  assert metrics["accuracy"]["dense"] == pytest.approx(expected, abs=1e-6)
  assert metrics["layers"][0]["name"] == "conv1"
  assert metrics["crossbars"]["pruned"] < metrics["crossbars"]["dense"]


# --- what a person sees on the command line (issue 12, item 8) ------------------------------

def test_done_lines_print_durations_in_seconds(straight):
  import re
  _, _, lines, _ = straight
  done = [l for l in lines if " done: " in l]
  assert done
  for line in done:
    assert re.search(r"seconds \d+\.\d s(,|$)", line), line
    assert not re.search(r"seconds \d+\.\d{2,}", line), line


def test_epoch_progress_counts_the_whole_phase(tmp_path, capfd):
  """Per-epoch training (one `fit` per epoch, for checkpoints) prints `Epoch 2/3`, and a
  resumed phase goes on counting from where it stopped."""
  import numpy as np
  import tf_keras

  from xbar_tfmot.app import training
  x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
  y = (x[:, 0] > 0).astype("int64")
  model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  training.compile_classifier(model, tf_keras, 1e-2)
  folder = training.RunFolder(tmp_path / "phase", tf_keras.models.load_model)
  kwargs = dict(batch_size=16, seed=0, phase=0, run_folder=folder, learning_rate=lambda e: 1e-2,
                verbose=2)
  model, history = training.fit_epochs(model, x, y, tf_keras, epochs=2, **kwargs)
  out = capfd.readouterr().out
  assert "Epoch 1/2" in out and "Epoch 2/2" in out and len(history["loss"]) == 2
  _, history = training.fit_epochs(model, x, y, tf_keras, epochs=3, **kwargs)  # resumes
  out = capfd.readouterr().out
  assert "Epoch 3/3" in out and "Epoch 1/" not in out and "Epoch 3/4" not in out, out
  assert len(history["loss"]) == 3


def test_occupancy_axes_with_one_input_group(tmp_path):
  import numpy as np

  from xbar_tfmot.app import plots
  fig = plots.occupancy_figure([("dense", np.ones((1, 6), bool), "output group"),
                                ("conv", np.eye(12, 20, dtype=bool), "column")], "t")
  one, many = fig.axes[:2]
  assert list(one.get_yticks()) == [0] and list(one.get_xticks()) == [0, 1, 2, 3, 4, 5]
  assert list(many.get_yticks())[0] == 0 and list(many.get_yticks())[-1] == 11
  assert len(many.get_xticks()) <= 8 and list(many.get_xticks())[-1] == 19
  plots.occupancy([("dense", np.ones((1, 1), bool), "output group")], tmp_path / "o.png", "t")
  assert (tmp_path / "o.png").stat().st_size > 1000


def _program(name: str, args: list[str], **env) -> subprocess.CompletedProcess:
  """Runs a console script as pip writes it (argv[0] is the program), with a clean TF env."""
  entry = {"xbar-report": "xbar_tfmot.app.cli:report_main",
           "xbar-verify": "xbar_tfmot.app.cli:verify_main"}[name]
  module, func = entry.split(":")
  code = (f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; "
          f"sys.exit({func}())")
  clean = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "XBAR_TF_LOG", "CUDA_VISIBLE_DEVICES")}
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        timeout=300, env={**clean, **env}, cwd=ROOT)


def test_tf_log_wanted_by_flag_or_environment():
  from xbar_tfmot import _quiet as cli
  assert not cli.tf_log_wanted(["xbar-report", "m.keras"], {})
  assert cli.tf_log_wanted(["xbar-report", "--tf-log"], {})
  assert cli.tf_log_wanted([], {"XBAR_TF_LOG": "1"}) and not cli.tf_log_wanted([], {"XBAR_TF_LOG": "0"})
  env: dict = {}
  cli.quiet_tensorflow(["xbar-report"], env)
  assert env == {"TF_CPP_MIN_LOG_LEVEL": "3"}
  env = {"TF_CPP_MIN_LOG_LEVEL": "1"}
  cli.quiet_tensorflow(["xbar-report"], env)
  assert env == {"TF_CPP_MIN_LOG_LEVEL": "1"}  # the user's level is kept
  env = {}
  cli.quiet_tensorflow(["xbar-report", "--tf-log"], env)
  assert env == {}


def test_programs_start_without_tensorflow_log_lines():
  fixture = str(ROOT / "tests" / "fixtures" / "pruned_tf_keras.keras")
  quiet = _program("xbar-report", [fixture, "--crossbar", "72x16"])
  assert quiet.returncode == 0, quiet.stderr[-2000:]
  for noise in ("cuInit", "cpu_feature_guard", "cuda_driver", "cudart_stub", "absl::"):
    assert noise not in quiet.stderr, quiet.stderr[-2000:]
  loud = _program("xbar-report", [fixture, "--crossbar", "72x16"], XBAR_TF_LOG="1")
  assert "cpu_feature_guard" in loud.stderr, loud.stderr[-2000:]


# --- what a person sees when something goes wrong (issue 24, item 4) ------------------------

def _mlp_file(tmp_path: pathlib.Path) -> pathlib.Path:
  """A digits MLP 64-32-16-10: on 16x16 crossbars 8 + 2 + 1 = 11 crossbars, one layer with
  a single crossbar (which a model-wide budget must still give one)."""
  import tf_keras
  L = tf_keras.layers
  model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), L.Flatten(name="flat"),
                               L.Dense(32, activation="relu", name="fc1"),
                               L.Dense(16, activation="relu", name="fc2"),
                               L.Dense(10, name="fc3")], name="mlp")
  path = tmp_path / "mlp.keras"
  model.save(path)
  return path


def test_infeasible_budget_exits_before_any_training(tmp_path):
  """0.8 of 11 crossbars leaves 2 for 3 layers that need one each: refused by `main` with the
  config error's exit code and one line naming the field and the largest valid reduction
  (round(0.228 * 11) = 3 crossbars), before the baseline trains or anything is written."""
  workdir = tmp_path / "run"
  out = subprocess.run(
      _command(workdir) + [f"--config.model.file={_mlp_file(tmp_path)}",
                           "--config.chip.spec=16x16", "--config.allocation.mode=global_score",
                           "--config.allocation.reduction=0.8"],
      capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("xbar-prune:")]
  assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert errors[0].startswith("xbar-prune: config error: config.allocation.reduction=0.8: too high "
                              "for this model (11 crossbars dense on 16x16"), errors[0]
  assert "valid: reduction <= 0.772." in errors[0], errors[0]
  assert "[baseline]" not in out.stdout and "Epoch" not in out.stdout
  assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()
  assert not (workdir / "state.json").exists()


HIGH = {0.773, 0.8, 0.95}  # fewer than 3 crossbars for the model: round(0.227 * 11) = 2
BUDGET_CASES = [  # (mode, schedule.prune_epochs, the reductions refused)
    ("per_layer", 1, {0.01, 0.05}),  # no layer loses a crossbar below 0.0625 (fc1: 8 -> 7)
    ("per_layer", 0, set()),  # the one-shot projection accepts a layer that loses nothing
    ("global", 1, {0.01} | HIGH),  # 0.01 keeps round(0.99 * 11) = 11: nothing to prune
    ("global", 0, HIGH),
    ("global_score", 1, HIGH),  # the pool of fc1 and fc2 is always wrapped
    ("sensitivity", 1, {0.01} | HIGH),
    ("sensitivity", 0, HIGH),
]


@pytest.mark.parametrize("mode,prune_epochs,expected", BUDGET_CASES)
def test_budget_check_agrees_with_the_prune_phase(tmp_path, mode, prune_epochs, expected):
  """The check before training refuses exactly the reductions that the prune phase's own code
  (prune_crossbar, or the one-shot projection when schedule.prune_epochs=0) refuses, from the
  untrained model: budgets depend on the kernel shapes and the spec only."""
  from xbar_tfmot.core.policy import CrossbarPolicy
  from xbar_tfmot.core.schedules import CrossbarPolynomialDecay
  from xbar_tfmot.pruning import one_shot
  from xbar_tfmot.pruning.api import prune_crossbar
  path = _mlp_file(tmp_path)
  pipe = pipeline.Pipeline(load_config(TINY, workdir=str(tmp_path / "run"), model__file=str(path),
                                       chip__spec="16x16", allocation__mode=mode,
                                       schedule__prune_epochs=prune_epochs))
  model = pipe.context.load(path)
  curves = {n: [[1, 1.0], [d, 0.0]] for n, d in (("fc1", 8), ("fc2", 2), ("fc3", 1))}
  policy = CrossbarPolicy(mode=mode, curves=curves if mode == "sensitivity" else None)
  refused_by_prune, refused_by_check = set(), set()
  for reduction in (0.01, 0.05, 0.07, 0.3, 0.77, 0.772, 0.773, 0.8, 0.95):
    try:
      if prune_epochs:
        prune_crossbar(model, pipe.context.spec, "column", CrossbarPolynomialDecay(reduction, 0, 8),
                       policy=policy, seed=0)
      else:
        one_shot.one_shot_masks(model, pipe.context.spec, policy, reduction, "column")
    except ValueError:
      refused_by_prune.add(reduction)
    config = dataclasses.replace(pipe.config, allocation=dataclasses.replace(
        pipe.config.allocation, reduction=reduction))
    try:
      preparation.check_budgets(config, model)
    except ConfigError as e:
      refused_by_check.add(reduction)
      assert str(e).startswith(f"config.allocation.reduction={reduction}: too "), str(e)
      assert "\n" not in str(e)
  assert refused_by_check == refused_by_prune == expected


def test_validated_budget_check_refuses_only_what_both_of_its_budget_kinds_refuse(tmp_path):
  """`allocation.mode="validated"`: its candidates take per-layer budgets or one model-wide
  pool, so the check refuses a reduction only where `per_layer` and `global_score` both do."""
  path = _mlp_file(tmp_path)
  pipe = pipeline.Pipeline(load_config(TINY, workdir=str(tmp_path / "run"), model__file=str(path),
                                       chip__spec="16x16", schedule__prune_epochs=1))
  model = pipe.context.load(path)
  refused = {}
  for mode in ("per_layer", "global_score", "validated"):
    refused[mode] = set()
    for reduction in (0.01, 0.05, 0.3, 0.8, 0.95):
      config = dataclasses.replace(pipe.config, allocation=dataclasses.replace(
          pipe.config.allocation, mode=mode, reduction=reduction))
      try:
        preparation.check_budgets(config, model)
      except ConfigError:
        refused[mode].add(reduction)
  assert refused["per_layer"] and refused["global_score"]  # each refuses some
  assert refused["validated"] == refused["per_layer"] & refused["global_score"]


def test_budget_message_names_the_valid_side(tmp_path):
  path = _mlp_file(tmp_path)
  config = load_config(TINY, workdir=str(tmp_path / "run"), model__file=str(path),
                       chip__spec="16x16", allocation__reduction=0.01)
  with pytest.raises(ConfigError, match=r"^config\.allocation\.reduction=0\.01: too low for this "
                     r"model .*valid: reduction >= 0\.063\. Details: prune_crossbar: no layer "
                     r"would lose a crossbar"):
    pipeline.Pipeline(config).prepare()
  assert not (tmp_path / "run" / "checkpoints").exists()
  config = load_config(TINY, workdir=str(tmp_path / "run"), model__file=str(path),
                       chip__spec="16x16", allocation__leave_dense="fc9")
  with pytest.raises(ConfigError, match=r"^config\.allocation\.leave_dense='fc9': .*matches no "
                     r"mapped layer"):
    pipeline.Pipeline(config).prepare()
  config = load_config(TINY, workdir=str(tmp_path / "run"), model__file=str(path),
                       chip__spec="16x16", allocation__reduction=0.7)
  pipeline.Pipeline(config).prepare()  # feasible: passes and claims the workdir
  assert (tmp_path / "run" / "config.json").is_file()


class _Stream:
  """A standard output that is (or is not) a terminal and keeps what is written."""

  def __init__(self, tty: bool):
    self.tty, self.parts = tty, []

  def isatty(self) -> bool:
    return self.tty

  def write(self, text: str) -> int:
    self.parts.append(text)
    return len(text)

  def flush(self) -> None:
    pass


@pytest.mark.parametrize("tty,verbose,expected", [(False, 1, 2), (True, 1, 1), (False, 0, 0),
                                                  (False, 2, 2), (True, 2, 2)])
def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, tty, verbose, expected):
  seen = {}

  def fit_epochs(model, x, y, keras, **kwargs):
    seen["verbose"] = kwargs["verbose"]
    return model, {}

  monkeypatch.setattr(run_context.training, "fit_epochs", fit_epochs)
  monkeypatch.setattr(sys, "stdout", _Stream(tty))
  pipe = pipeline.Pipeline(load_config(TINY, workdir=str(tmp_path), train__verbose=verbose))
  pipe.context.data = RunData(train=(np.zeros((4, 8, 8, 1)), np.zeros(4)), validation=None,
                              test=(np.zeros((2, 8, 8, 1)), np.zeros(2)))
  pipe.context.fit(None, "baseline", 1, lambda e: 1e-3, [])
  assert seen["verbose"] == expected


def test_a_log_file_gets_one_line_per_epoch(tmp_path, monkeypatch):
  """train.verbose=1 into a file: Keras' epoch lines, no per-batch `\\r`/`\\b` redraws."""
  import tf_keras
  stream = _Stream(False)
  monkeypatch.setattr(sys, "stdout", stream)
  pipe = pipeline.Pipeline(load_config(TINY, workdir=str(tmp_path), train__verbose=1,
                                       train__batch_size=4))
  rng = np.random.default_rng(0)
  pipe.context.data = RunData(
      train=(rng.normal(size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 64)),
      validation=None,
      test=(rng.normal(size=(8, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 8)))
  model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Flatten(),
                               tf_keras.layers.Dense(10)])
  pipe.context.compile(model, 1e-2)
  pipe.context.fit(model, "baseline", 2, lambda e: 1e-2, [])
  out = "".join(stream.parts)
  assert "Epoch 1/2" in out and "Epoch 2/2" in out and "16/16 - " in out, out
  assert "\r" not in out and "\b" not in out, repr(out[:500])


def test_phases_turned_off_say_skipped(tmp_path):
  lines: list[str] = []
  config = load_config(TINY, workdir=str(tmp_path), allocation__reorder=False,
                       export__enabled=False, hardware__enabled=False)
  pipe = pipeline.Pipeline(config, log=lines.append)
  for name in ("reorder", "export", "hardware"):
    pipe.do(name)
  assert lines == ["[reorder] skipped (allocation.reorder=False)",
                   "[export] skipped (export.enabled=False)",
                   "[hardware] skipped (hardware.enabled=False)"]
  phases = json.loads((tmp_path / "state.json").read_text())["phases"]
  assert phases["reorder"]["applied"] is False and phases["export"]["enabled"] is False
  assert phases["hardware"]["enabled"] is False  # recorded: a rerun skips them silently
  for name in ("reorder", "export", "hardware"):
    pipe.do(name)
  assert len(lines) == 3


def test_export_and_report_share_one_mapping(straight, tmp_path, monkeypatch):
  """The pruned model's mapping is built (and validated) once per run and handed on: export
  and report, rerun on a copy of a finished run, build it once between them (three times
  before); the dense model's, for the report's chip cost, once too."""
  from xbar_tfmot.app import run_report
  from xbar_tfmot.export import exporter
  from xbar_tfmot.models import model_mapping
  workdir, metrics, _, config = straight
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  state = json.loads((copy / "state.json").read_text())
  for phase in ("export", "report"):
    del state["phases"][phase]
  (copy / "state.json").write_text(json.dumps(state))
  flat = json.loads((copy / "config.json").read_text())
  (copy / "config.json").write_text(json.dumps({**flat, "workdir": str(copy)}))
  built, real = [], model_mapping.build_mapping

  def counting(model, *args, **kwargs):
    built.append(id(model))
    return real(model, *args, **kwargs)

  for module in (model_mapping, exporter, run_report):
    monkeypatch.setattr(module, "build_mapping", counting)
  again = pipeline.run(load_config(TINY, workdir=str(copy), train__verbose=0,
                                   flavour=config.flavour), log=lambda s: None)
  assert len(built) == len(set(built)) == 2, built  # the pruned model's, the dense model's
  assert again["crossbars"] == metrics["crossbars"] and again["export"]["verified"]


def test_int8_export_keeps_the_zeros_and_reports_both_accuracies(tmp_path):
  """`export.formats` with tflite_int8: calibrated on training images, verified against the
  mapping, and both TFLite files' test accuracy recorded and reported."""
  config = load_config(TINY, workdir=str(tmp_path), train__verbose=0, train__baseline_epochs=2,
                       schedule__finetune_epochs=0, allocation__reorder=False,
                       report__plots=False, export__representative_images=64,
                       export__formats="saved_model,tflite,tflite_int8,json")
  metrics = pipeline.run(config, log=lambda line: None)
  export = metrics["export"]
  assert export["verified"] is True and (tmp_path / "export" / "model_int8.tflite").is_file()
  accuracy = export["tflite_accuracy"]
  assert set(accuracy) == {"model", "model_int8"}
  assert accuracy["model"] == pytest.approx(metrics["accuracy"]["pruned"], abs=0.01)
  assert abs(accuracy["model_int8"] - accuracy["model"]) < 0.05
  assert (export["int8"], export["representative_images"]) == ("post_training", 64)
  report = (tmp_path / "report" / "report.md").read_text()
  assert "`model_int8.tflite` by post-training quantisation (64 calibration images)" in report
  config.data.name = "none"
  with pytest.raises(ConfigError, match="tflite_int8 calibrates on training images"):
    configuration.parse(config)


def test_quantize_aware_int8_export(tmp_path, monkeypatch):
  """`export.quantize_aware_epochs=2`: the export phase fine-tunes `xt.quantize_aware` of the
  pruned model 2 epochs on the training images (not the 200 held out for the allocation), and
  `model_int8.tflite` is converted from it: its weights are the fine-tuned ones, not the float
  model's; the float files are the pruned model's; xbar-verify passes; the result and the
  report name the path."""
  from xbar_tfmot.app import datasets, training
  from xbar_tfmot.export import exporter, int8
  fits, exports = [], []
  real_fit, real_export = training.fit_seeded, exporter.export

  def fit(model, x, y, keras, epochs, batch_size, seed, *args, **kwargs):
    fits.append((model, x, epochs, batch_size))
    return real_fit(model, x, y, keras, epochs, batch_size, seed, *args, **kwargs)

  def export(*args, **kwargs):
    exports.append(kwargs.get("quantized_model"))
    return real_export(*args, **kwargs)

  monkeypatch.setattr(training, "fit_seeded", fit)
  monkeypatch.setattr(exporter, "export", export)
  lines: list[str] = []
  config = load_config(TINY, workdir=str(tmp_path), train__verbose=0, train__baseline_epochs=2,
                       allocation__mode="sensitivity", allocation__validation_images=200,
                       schedule__prune_epochs=0,
                       schedule__finetune_epochs=0, allocation__reorder=False,
                       report__plots=False, export__quantize_aware_epochs=2,
                       export__formats="saved_model,tflite,tflite_int8,json")
  metrics = pipeline.run(config, log=lines.append)
  export = metrics["export"]
  assert (export["int8"], export["quantize_aware_epochs"]) == ("quantize_aware", 2)
  assert export["verified"] is True
  assert any(l.startswith("tflite_int8 zeros:") and l.endswith("ok") for l in
             "\n".join(lines).splitlines())
  (quantized,) = exports
  assert int8.is_quantize_aware(quantized)
  (x_all, _), _ = datasets.load_dataset("digits", seed=config.seed)
  assert int(quantized.optimizer.iterations) == 2 * -(-(len(x_all) - 200) // 16)
  folder = tmp_path / "export"
  load = pipeline.Pipeline(config).context.load
  pruned, exported = load(tmp_path / "checkpoints" / "pruned.keras"), load(folder / "model.keras")
  for a, b in zip(exported.get_weights(), pruned.get_weights()):
    np.testing.assert_array_equal(a, b)  # the float files: the pruned model, untouched
  wrapper = next(w for w in quantized.layers if getattr(w, "layer", None) is not None
                 and w.layer.name == "fc2")
  fine_tuned = next(v for v in wrapper.trainable_weights if v.name.endswith("kernel:0"))
  kernels = {"fine-tuned": fine_tuned, "float": pruned.get_layer("fc2").kernel}
  steps = {}
  for name, kernel in kernels.items():  # fc2 has no BatchNorm folded into its int8 scales
    weights = int8.match_layers((folder / int8.FILE).read_bytes(), {"fc2": np.asarray(kernel)})[0]
    w = weights["fc2"]
    stored = (w.values.astype(np.float64) - w.zero_point) * w.scale
    steps[name] = np.abs(stored - np.asarray(kernel)) / w.scale  # in quantisation steps
  assert steps["fine-tuned"].max() <= 0.51
  assert np.mean(steps["float"] > 1) > 0.2
  ((_, x, epochs, batch),) = [f for f in fits if f[0] is quantized]
  np.testing.assert_array_equal(x, x_all[:-200])  # the last 200 stay held out
  assert (epochs, batch) == (2, 16)
  accuracy = export["tflite_accuracy"]
  # 2 baseline epochs leave the float model's BatchNorm statistics unsettled; QAT trains on
  assert set(accuracy) == {"model", "model_int8"} and accuracy["model_int8"] > 0.5
  report = (tmp_path / "report" / "report.md").read_text()
  assert "`model_int8.tflite` by quantisation-aware training (2 epochs)" in report


@pytest.mark.parametrize("fields, match", [
    (dict(flavour="keras3"), r"config\.export\.quantize_aware_epochs=1 with config\.flavour="
     r"'keras3': Keras 3 has no quantisation-aware training that keeps pruned zeros .*post-"
     r"training quantised; valid: 0 \(calibrated on export\.representative_images training "
     r"images\), or flavour='tf_keras'"),
    (dict(export__formats="saved_model,tflite"), r"config\.export\.quantize_aware_epochs=1: "
     r"quantisation-aware training makes the int8 file, and export\.formats has no "
     r"tflite_int8; valid: 0, or tflite_int8 in export\.formats"),
    (dict(export__quantize_aware_epochs=-1), r"config\.export\.quantize_aware_epochs=-1: "
     r"valid: a number >= 0"),
])
def test_bad_quantize_aware_epochs(fields, match):
  config = load_config(TINY, **{"export__formats": "saved_model,tflite,tflite_int8",
                                "export__quantize_aware_epochs": 1, **fields})
  with pytest.raises(ConfigError, match=match):
    configuration.parse(config)


def test_a_model_tfmot_cannot_wrap_fails_before_training(tmp_path):
  """A BatchNormalization after an activated convolution: TFMOT's int8 scheme refuses it, and
  the run says so while preparing, not after pruning."""
  import tf_keras
  L = tf_keras.layers
  model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), L.Conv2D(8, 3, activation="relu"),
                               L.BatchNormalization(), L.Flatten(), L.Dense(10)])
  model.save(tmp_path / "bn_after_relu.keras")
  config = load_config(TINY, workdir=str(tmp_path / "run"), model__file=str(
      tmp_path / "bn_after_relu.keras"), export__formats="saved_model,tflite_int8",
      export__quantize_aware_epochs=1)
  with pytest.raises(ConfigError, match=r"config\.export\.quantize_aware_epochs=1: this model "
                                        r"cannot be wrapped for quantisation-aware training: "
                                        r".*batch_normalization.*Valid here: export\."
                                        r"quantize_aware_epochs=0"):
    pipeline.Pipeline(config).prepare()
  assert not (tmp_path / "run").exists()
