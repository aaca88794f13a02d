"""tools/bench_quality.py: a --quick run on real Fashion-MNIST writes the expected cells, the
LGD-RPP cells respect their crossbar budget, the layer-by-layer cell its stop rules, a rerun
resumes (skips finished cells) and skips, naming why, a cell whose reduction the network
cannot reach, runs sharing an --out write results.json under its lock, and
`--dataset cifar10` without a local copy fails naming the missing path."""

import json
import pathlib

import pytest
from _tools import load_tool, run_tool

METHODS = "rpp-crossbar,rpp-column,oneshot-crossbar,layer-by-layer"


def _run(out: pathlib.Path):
  return run_tool("bench_quality", "--quick", "--out", str(out), "--methods", METHODS)


def test_quick_run_cells_budget_and_resume(tmp_path):
  pytest.importorskip("tensorflow_model_optimization")
  from xbar_tfmot.app.datasets import FASHION_MNIST_DIR
  if not pathlib.Path(FASHION_MNIST_DIR).is_dir():
    pytest.skip("dataset-fashion-mnist is not installed")
  out = tmp_path / "bq"
  _run(out)
  data = json.loads((out / "results.json").read_text())
  keys = sorted(c["key"] for c in data["cells"])
  assert keys == sorted(f"vgg8:0.25|0|{m}|0.72" for m in METHODS.split(","))
  assert list(data["baselines"]) == ["fashion_mnist_vgg8_w0.25_s0"]
  for cell in data["cells"]:
    counts = cell["counts"]
    assert 0.0 <= cell["accuracy"] <= 1.0
    assert counts["dense"] == data["baselines"]["fashion_mnist_vgg8_w0.25_s0"]["counts"]["dense"]
    if cell["method"] == "layer-by-layer":
      continue
    assert counts["packed"] <= cell["budget"] < counts["dense"], cell
    if cell["method"] != "rpp-column":
      assert counts["blocks"] <= cell["budget"], cell
  assert (out / "bench_quality.md").read_text().count("| ") > 3
  assert (out / "bench_quality.png").stat().st_size > 1000

  _check_layer_by_layer(data)
  again = _run(out)
  assert "4 cells planned, 4 done" in again.stdout
  assert json.loads((out / "results.json").read_text())["cells"] == data["cells"]
  deep = run_tool("bench_quality", "--quick", "--out", str(out), "--methods", "alloc-energy",
                  "--reductions", "0.999,0.72")  # 0.999 leaves 1 crossbar for 6 pruned layers
  assert "vgg8:0.25|0|alloc-energy|0.999: skipped: CrossbarPolicy" in deep.stdout, deep.stdout
  assert "vgg8:0.25|0|alloc-energy|0.72: acc " in deep.stdout, deep.stdout  # the next cell ran
  assert {c["key"] for c in json.loads((out / "results.json").read_text())["cells"]} == {
      *keys, "vgg8:0.25|0|alloc-energy|0.72"}


def _check_layer_by_layer(data: dict) -> None:
  """The paper's procedure visits exactly the pruned layers in model order, never cuts one
  below the target reduction (its max_reduction) nor Tc, and the crossbar report's counts
  agree with its per-layer outcomes."""
  from xbar_tfmot.core.projection import crossbar_budget
  cell = next(c for c in data["cells"] if c["method"] == "layer-by-layer")
  baseline = data["baselines"]["fashion_mnist_vgg8_w0.25_s0"]
  outcomes = cell["outcomes"]
  assert [o["layer"] for o in outcomes] == baseline["pruned_layers"]
  for o in outcomes:
    assert o["after"] >= max(crossbar_budget(o["dense"], cell["reduction"]), 1), o
    assert o["after"] == cell["layers"][o["layer"]], o
  assert cell["counts"]["packed"] >= cell["budget"]
  assert cell["counts_pruned"]["packed"] == sum(o["after"] for o in outcomes)
  assert cell["counts"]["packed"] < cell["counts"]["dense"]


def test_other_setting_in_same_out_is_refused(tmp_path):
  tool = load_tool("bench_quality")
  (tmp_path / "results.json").write_text(json.dumps(
      {"setting": {**tool.settings(tool.parse_args(["--out", str(tmp_path)])), "epochs": 9},
       "baselines": {}, "cells": []}))
  with pytest.raises(SystemExit, match="--epochs 9 there, 2 now"):
    tool.main(["--out", str(tmp_path)])


def test_cifar10_without_local_copy_names_the_path(tmp_path):
  tool = load_tool("bench_quality")
  missing = tmp_path / "no-cifar"
  with pytest.raises(SystemExit, match=str(missing)) as info:
    tool.main(["--dataset", "cifar10", "--data", str(missing), "--out", str(tmp_path / "o")])
  assert "data_batch_1" in str(info.value) and "--data" in str(info.value)


def test_bad_method_is_named(capsys):
  tool = load_tool("bench_quality")
  with pytest.raises(SystemExit):
    tool.parse_args(["--out", "x", "--methods", "rpp-crossbar,magic"])
  assert "--methods: 'magic' is unknown" in capsys.readouterr().err


# --- issue 13: allocation rows, validation split, whole-model counts ---------------------------

def _fashion_or_skip():
  from xbar_tfmot.app.datasets import FASHION_MNIST_DIR
  if not pathlib.Path(FASHION_MNIST_DIR).is_dir():
    pytest.skip("dataset-fashion-mnist is not installed")


def test_validation_split_is_carved_outside_the_unchanged_training_subset(tmp_path):
  _fashion_or_skip()
  import numpy as np
  from xbar_tfmot.app.datasets import load_fashion_mnist
  tool = load_tool("bench_quality")
  args = tool.parse_args(["--out", str(tmp_path), "--train-size", "300",
                          "--validation-size", "200", "--test-size", "50"])
  (x, y), (xv, yv), (xt, yt) = tool.load_data(args, seed=3)
  (full_x, full_y), (full_xt, _) = load_fashion_mnist()
  order = np.random.default_rng(3).permutation(len(full_y))
  np.testing.assert_array_equal(x, full_x[order[:300]])  # the subset issue 8 trained on
  np.testing.assert_array_equal(yv, full_y[order[300:500]])
  np.testing.assert_array_equal(xv, full_x[order[300:500]])
  np.testing.assert_array_equal(xt, full_xt[:50])
  too_big = tool.parse_args(["--out", str(tmp_path), "--train-size", "59000",
                             "--validation-size", "2000"])
  with pytest.raises(SystemExit, match="--validation-size 2000 exceed the 60000"):
    tool.load_data(too_big, seed=0)


def test_whole_model_counts_and_equal_count_per_layer_reduction(tmp_path):
  _fashion_or_skip()
  pytest.importorskip("tensorflow_model_optimization")
  from xbar_tfmot.core.projection import crossbar_budget
  from xbar_tfmot.models import introspection
  tool = load_tool("bench_quality")
  args = tool.parse_args(["--out", str(tmp_path), "--quick"])
  b = tool.Bench(args, ("vgg8", 0.25), 0, lambda m: None)
  model = b.build()
  geoms = [introspection.geometry_of(l, b.spec) for l in introspection.iter_layers(model)
           if introspection.is_mapped(l)]
  total = sum(g.dense_crossbars for g in geoms)
  assert b.counts(model)["dense"] == total  # every mapped layer, the dense-left ones too
  left = {g.name: g.dense_crossbars for g in geoms if g.name not in b.pruned_names(model)}
  assert left and b.counts(model, b.pruned_names(model))["dense"] == total - sum(left.values())
  for r in (0.72, 0.85, 0.9):
    target = crossbar_budget(total, r)
    glob = b.xt.CrossbarPolicy(leave_dense=list(left), mode="global")
    assert b.model_budget(model, glob, r) == target
    got = tool.equal_count_reduction(b, model, r)
    per_layer = b.policy(model)

    def whole(s):  # brute force: dense-left layers plus each pruned layer's own budget
      return sum(left.get(g.name) or crossbar_budget(g.dense_crossbars, s) for g in geoms)

    assert b.model_budget(model, per_layer, got) == whole(got) <= target
    grid = [r + i / 2000 for i in range(int((0.999 - r) * 2000))]
    first = next(s for s in grid if whole(s) <= target)  # the least reduction that fits
    assert first - 1 / 2000 <= got <= first + 1e-6, (r, got, first)


def _cell(method, seed, val, acc, reduction=0.85, net="vgg8:0.5"):
  return {"key": f"{net}|{seed}|{method}|{reduction:g}", "network": net, "seed": seed,
          "method": method, "reduction": reduction, "accuracy": acc, "val_accuracy": val,
          "counted": "model", "counts": {"dense": 508, "packed": 76}, "seconds": 1.0}


def test_best_allocation_is_chosen_on_validation_never_on_test():
  tool = load_tool("bench_quality")
  rows = tool.ALLOCATION
  cells = []
  for seed, vals in ((0, (0.80, 0.81, 0.83, 0.79, 0.82)), (1, (0.80, 0.81, 0.80, 0.79, 0.82))):
    for m, v in zip(rows, vals):
      cells.append(_cell(m, seed, v, acc=0.95 if m == "alloc-per-layer" else 0.5))
  cells.append(_cell("alloc-energy", 0, 0.99, 0.99, reduction=0.72))  # another target
  best, means = tool.choose_allocation({"cells": cells}, ("vgg8", 0.5), 0.85)
  assert best == "alloc-sensitivity" and means["alloc-energy"] == pytest.approx(0.815)
  baselines = {f"s{seed}": {"network": "vgg8:0.5", "seed": seed, "accuracy": acc}
               for seed, acc in ((0, 0.83), (1, 0.93), (2, 0.10))}  # seed 2: no cell, not averaged
  data = {"cells": cells, "baselines": baselines}
  text = "\n".join(tool.allocation_reading(data, tool.summarise(data)))
  assert "validation picks A5. sensitivity" in text
  assert "-38.00 points from dense 88.00% on the same seeds" in text
  assert "missed by 37.00 points" in text
  assert "with distillation" not in text
  kd = [_cell("alloc-per-layer-kd", 0, 0.9, 0.99), _cell("alloc-sensitivity-kd", 0, 0.9, 0.87)]
  data = {"cells": cells + kd, "baselines": baselines}
  text = "\n".join(tool.allocation_reading(data, tool.summarise(data)))
  # no A6 cell: the validation pick's own -kd row stands in, never another row's
  assert "with distillation (alloc-sensitivity) 87.00% (+4.00 points from dense 83.00%" in text
  assert "met by 5.00 points" in text
  assert "the test set would have picked A1. per-layer" in text
  with pytest.raises(SystemExit, match="rows alloc-per-layer, alloc-global, alloc-saliency, alloc-sensitivity have"):
    tool.choose_allocation({"cells": cells}, ("vgg8", 0.5), 0.72)


def test_distilled_rows_are_planned_after_every_allocation_row(tmp_path):
  tool = load_tool("bench_quality")
  args = tool.parse_args(["--out", str(tmp_path), "--methods", "allocation", "--seeds", "0,1",
                          "--reductions", "0.72,0.85", "--multi-seed-reductions", "all",
                          "--networks", "vgg8:0.5"])
  cells = tool.plan(args)
  assert len(cells) == 2 * 2 * 6
  methods = [c[2] for c in cells]
  assert methods[-4:] == ["alloc-best-distill"] * 4
  assert set(methods[:-4]) == set(tool.ALLOCATION)


def test_results_file_is_written_under_the_lock_and_keeps_other_runs_cells(tmp_path):
  """Runs on other (network, seed) pairs may share an --out: a write waits for the lock file
  (`FileLock`, the project's one lock) while another live process holds it, and merges the
  cells another run wrote since, never dropping them."""
  import socket
  import subprocess
  import sys

  from xbar_tfmot.app.workdir_lock import WorkdirBusy
  tool = load_tool("bench_quality")
  setting = tool.settings(tool.parse_args(["--out", str(tmp_path)]))
  ours, theirs = tool.Results(tmp_path, setting), tool.Results(tmp_path, setting)
  ours.add_cell(_cell("alloc-global", 0, 0.8, 0.8))
  theirs.add_cell(_cell("alloc-global", 1, 0.8, 0.8))
  ours.add_cell(_cell("alloc-energy", 0, 0.8, 0.8))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert [c["key"] for c in on_disk["cells"]] == [f"vgg8:0.5|{s}|{m}|0.85" for s, m in (
      (0, "alloc-global"), (0, "alloc-energy"), (1, "alloc-global"))]
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    (tmp_path / "results.lock").write_text(json.dumps({"pid": holder.pid,
                                                       "host": socket.gethostname()}))
    ours.lock.wait = 0.2
    with pytest.raises(WorkdirBusy, match=f"results.lock is held by process {holder.pid}"):
      ours.add_cell(_cell("alloc-saliency", 0, 0.8, 0.8))
    assert json.loads((tmp_path / "results.json").read_text()) == on_disk
  finally:
    holder.kill()
    holder.wait()
  ours.save()  # the holder is gone: its lock is stale and taken over
  assert len(json.loads((tmp_path / "results.json").read_text())["cells"]) == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_energy_objective_row_keeps_the_energy_budget_and_every_row_is_costed(tmp_path):
  """Issue 27: `alloc-energy-objective` (A11) spends no more than `(1 - s)` of the dense
  model's energy per inference on isaac_32nm, and that energy is the cost model's sum of each
  layer's crossbars times its energy per crossbar (exact: the chip converts every column);
  the dense baseline and a crossbar-objective row (A3) carry the same fields."""
  _fashion_or_skip()
  out = tmp_path / "bq"
  run_tool("bench_quality", "--quick", "--out", str(out), "--reductions", "0.5",
           "--no-finetuned-reference", "--methods", "issue27,alloc-energy")
  data = json.loads((out / "results.json").read_text())
  dense = data["baselines"]["fashion_mnist_vgg8_w0.25_s0"]
  assert dense["chip"] == "isaac_32nm" and dense["chip_crossbars"] == dense["counts"]["dense"]
  cells = {c["method"]: c for c in data["cells"]}
  assert sorted(cells) == ["alloc-energy", "alloc-energy-objective"]
  for c in cells.values():
    assert c["chip_crossbars"] == c["counts"]["packed"] and c["energy_nj"] > 0
  ours = cells["alloc-energy-objective"]
  assert ours["objective"] == "energy"
  per = ours["crossbar_nj"]
  assert ours["energy_nj"] == pytest.approx(sum(per[n] * k for n, k in ours["layers"].items()))
  assert sum(per[n] * k for n, k in cells["alloc-energy"]["layers"].items()) == pytest.approx(
      cells["alloc-energy"]["energy_nj"])
  assert ours["energy_budget_nj"] == pytest.approx(0.5 * dense["energy_nj"])
  assert ours["energy_nj"] <= ours["energy_budget_nj"] * (1 + 1e-9)
  assert ours["energy_nj"] < cells["alloc-energy"]["energy_nj"]  # A3 counts crossbars, not nJ
  assert "Energy per inference on `isaac_32nm`" in (out / "bench_quality.md").read_text()


@pytest.mark.parametrize("method, rate, regrowth", [
    ("alloc-energy", "finetune_lr", "reset"),
    ("alloc-energy-rewind", "lr", "reset"),
    ("alloc-per-layer-rewind", "lr", "reset"),
    ("alloc-energy-regrow", "finetune_lr", "straight_through"),
    ("alloc-validated-rewind", "lr", "reset"),
    ("alloc-validated-ramp", "lr", "reset"),
    ("alloc-validated-ramp-kd", "lr", "reset")])
def test_deep_cut_rows_train_from_the_rewound_rate_or_with_regrowth(tmp_path, monkeypatch,
                                                                   method, rate, regrowth):
  """Issue 28's deep-cut rows differ from A3/A1 only in how they train: the rewound rows'
  optimizer starts at the dense baseline's `--lr`, the others at `--finetune-lr` (A15's
  candidates take their steps at `--lr` too); the regrowth row's wrappers are
  `straight_through`; A16's `global_score` candidates are cut along the row's mask updates;
  A17 trains its winner (only) against the dense model's logits.
  Spied on the real run of the row (quick setting, an untrained baseline)."""
  _fashion_or_skip()
  tool = load_tool("bench_quality")
  args = tool.parse_args(["--out", str(tmp_path), "--quick", "--lr", "2e-3",
                          "--finetune-lr", "3e-4", "--prune-fraction", "1", "--frequency", "1"])
  b = tool.Bench(args, ("vgg8", 0.25), 0, lambda m: None)
  b.memo["dense"] = (b.compile(b.build(), args.lr, 1), {})
  seen, compile_, prune, choose = [], b.compile, b.xt.prune_crossbar, b.xt.choose_allocation

  def spy_compile(model, lr, epochs, distillation=None):
    model = compile_(model, lr, epochs, distillation)
    if any(type(l).__name__ == "CrossbarPrune" for l in model.layers):
      seen.append(("rate", float(model.optimizer.learning_rate), distillation))  # at step 0
    return model

  def spy_prune(model, **kwargs):
    seen.append(("regrowth", kwargs["regrowth"]))
    return prune(model, **kwargs)

  def spy_choose(*args_, **kwargs):
    seen.append(("candidates", kwargs["learning_rate"], kwargs["ramp_steps"],
                 kwargs["train_data"][1] is b.y))  # the labels, never the teacher's logits
    return choose(*args_, **kwargs)

  monkeypatch.setattr(b, "compile", spy_compile)
  monkeypatch.setattr(b.xt, "prune_crossbar", spy_prune)
  monkeypatch.setattr(b.xt, "choose_allocation", spy_choose)
  model, extra = load_tool("quality_methods").run_method(b, method, 0.72)
  distilled = ((args.distill_temperature, args.distill_weight) if method.endswith("-kd")
               else None)
  expected = [("regrowth", regrowth), ("rate", pytest.approx(getattr(args, rate)), distilled)]
  if "validated" in method:
    ramp = b.end_step if "ramp" in method else 1  # its mask updates, one every step
    expected.insert(0, ("candidates", getattr(args, rate), ramp, True))
  assert seen == expected and b.end_step > 1
  assert extra["regrowth"] == regrowth and extra["learning_rate"] == getattr(args, rate)
  assert not any(type(l).__name__ == "CrossbarPrune" for l in model.layers)
