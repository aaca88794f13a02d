"""The crossbar report on both Keras flavours, its CLI, and the layers it cannot map."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from xbar_tfmot.app import cli
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models.report import crossbar_report

SPEC = CrossbarSpec(rows=36, cols=8)  # Kin = 4 channels of 3x3, Kout = 8


def keras_module(flavour):
  if flavour == "keras3":
    import keras
    return keras
  import tf_keras
  return tf_keras


def build(flavour):
  """A small CNN with a nested block, layers that do not map, and layers without weights."""
  k = keras_module(flavour)
  inner = k.Sequential([k.layers.Conv2D(16, 3, padding="same", name="inner_conv")], name="block")
  inputs = k.Input((8, 8, 6))
  x = k.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
  x = k.layers.BatchNormalization(name="bn")(x)
  x = k.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
  x = k.layers.Conv2D(8, 3, padding="same", groups=2, name="grouped")(x)
  x = k.layers.ReLU()(x)
  x = inner(x)
  x = k.layers.Flatten()(x)
  outputs = k.layers.Dense(10, name="fc")(x)
  return k.Model(inputs, outputs, name="tiny")


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_counts_and_unmapped_layers(flavour):
  model = build(flavour)
  fc = model.get_layer("fc")
  kernel = np.array(fc.kernel)
  kernel[:, 3:] = 0.0  # outputs 3..9 pruned: 1 of 2 output groups, 3 packed columns a group
  fc.kernel.assign(kernel)
  report = crossbar_report(model, SPEC)
  by_name = {r.name: r for r in report.layers}
  assert [r.name for r in report.mapped] == ["conv1", "inner_conv", "fc"]
  # conv1: 6 channels -> 2 groups; inner_conv: 8 -> 2 groups x 2 output groups.
  assert by_name["conv1"].counts.dense == 2 and by_name["inner_conv"].counts.dense == 4
  fc_counts = by_name["fc"].counts  # 1024 inputs -> 1024 // 36 + 1 = 29 groups, 2 output groups
  assert (fc_counts.dense, fc_counts.blocks, fc_counts.packed) == (58, 29, 29)
  assert report.total("dense") == 64 and report.total("blocks") == 35
  assert report.reduction("blocks") == pytest.approx(1 - 35 / 64)
  reasons = {r.name: r.reason for r in report.unmapped}
  assert set(reasons) == {"bn", "dw", "grouped"}
  assert "depthwise" in reasons["dw"] and "groups=2" in reasons["grouped"]
  table = report.format_table()
  assert "not mapped: dw (DepthwiseConv2D)" in table and "total" in table
  totals = json.loads(json.dumps(report.to_dict()))["totals"]
  assert totals["dense"] == 64 and totals["packed"] == 35


def test_taps_too_large_are_listed_not_raised():
  import keras
  model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 7, name="big")])
  report = crossbar_report(model, CrossbarSpec(rows=32, cols=8))
  assert not report.mapped
  assert "49 kernel taps" in report.unmapped[0].reason and "flat" in report.unmapped[0].reason


@pytest.mark.parametrize("flavour, filename", [
    ("keras3", "model.keras"), ("tf_keras", "model.keras"), ("tf_keras", "model.h5"),
    ("tf_keras", "saved_model")])
def test_cli_reads_model_files(flavour, filename, tmp_path, capsys):
  model = build(flavour)
  path = str(tmp_path / filename)
  if filename == "saved_model":
    model.save(path, save_format="tf")
  else:
    model.save(path)
  out_json = tmp_path / "report.json"
  assert cli.report_main([path, "--crossbar", "36x8", "--json", str(out_json)]) == 0
  assert "Crossbar report: tiny on 36x8" in capsys.readouterr().out
  assert json.loads(out_json.read_text())["totals"]["dense"] == 64


@pytest.mark.parametrize("args, message", [
    (["missing.keras"], "does not exist"),
    (["builtin:alexnet"], "unknown built-in"),
    (["builtin:vgg16", "--crossbar", "128"], "ROWSxCOLS"),
    (["builtin:vgg16", "--crossbar", "nope.json"], "preset 'nope.json' does not exist"),
])
def test_cli_errors(args, message, capsys):
  assert cli.report_main(args) == 2
  assert message in capsys.readouterr().err


def test_keras3_report_does_not_import_tfmot():
  code = (
      "import sys, keras, xbar_tfmot\n"
      "from xbar_tfmot.models.report import crossbar_report\n"
      "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])\n"
      "crossbar_report(m, xbar_tfmot.CrossbarSpec(rows=4, cols=4))\n"
      "import os, tensorflow as tf\n"
      "assert 'tensorflow_model_optimization' not in sys.modules\n"
      "assert 'TF_USE_LEGACY_KERAS' not in os.environ\n"
      "assert tf.keras.Sequential is keras.Sequential\n")
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


def test_cli_reports_a_saved_pruned_model_through_its_masks(tmp_path, capsys):
  import tf_keras as k

  from xbar_tfmot.core.schedules import CrossbarConstant
  from xbar_tfmot.pruning.api import prune_crossbar
  from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning
  model = k.Sequential([k.Input((16,)), k.layers.Dense(32, name="fc1"), k.layers.Dense(8, name="fc2")])
  pruned = prune_crossbar(model, spec=CrossbarSpec(rows=4, cols=8), granularity="crossbar",
                          schedule=CrossbarConstant(0.5, begin_step=0, frequency=1))
  pruned.compile("sgd", "mse")
  pruned.fit(np.ones((8, 16), np.float32), np.zeros((8, 8), np.float32), verbose=0,
             callbacks=[UpdateCrossbarPruning()])
  pruned.save(tmp_path / "pruned.h5")
  assert cli.report_main([str(tmp_path / "pruned.h5"), "--crossbar", "4x8", "--json",
                          str(tmp_path / "r.json")]) == 0
  layers = {r["name"]: r for r in json.loads((tmp_path / "r.json").read_text())["layers"]}
  # fc1: 4 input groups x 4 output groups = 16 dense, budget 8; fc2: 8 x 1 = 8, budget 4.
  assert (layers["fc1"]["dense"], layers["fc1"]["blocks"]) == (16, 8)
  assert (layers["fc2"]["dense"], layers["fc2"]["blocks"]) == (8, 4)
