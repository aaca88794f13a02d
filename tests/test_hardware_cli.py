"""Where the user sees the hardware view: NeuroSim export, `xbar-eval`, `xbar-report --cost`."""

import _models
import numpy as np
import pytest

from xbar_tfmot.app import cli, eval_cli
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.export.exporter import export

SPEC = CrossbarSpec(rows=16, cols=8, weight_bits=4, cell_bits=2, differential=True)


def small_model():
  """A synthetic-data-shaped CNN: (8, 8, 1) -> 4 classes, half of conv2's crossbars pruned."""
  K = _models.keras_module("keras3")
  K.utils.set_random_seed(0)
  L = K.layers
  inp = L.Input((8, 8, 1))
  x = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
  x = L.MaxPooling2D(2, name="pool")(x)
  x = L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c2")(x)
  x = L.Flatten(name="flat")(x)
  model = K.Model(inp, L.Dense(4, name="fc")(x))
  return _models.prune(model, SPEC, 0.5, "column")


def test_neurosim_export_and_the_command_lines(tmp_path, capsys):
  model = small_model()
  out = tmp_path / "export"
  export(model, out, SPEC, formats=("json", "neurosim"))
  rows = (out / "neurosim" / "network.csv").read_text().splitlines()
  # NeuroSim V1.4 columns: IFM h, w, channels, kernel h, w, output channels, pooling, stride
  assert rows == ["8,8,1,3,3,4,1,1", "4,4,4,3,3,6,0,2", "1,1,24,1,1,4,0,1"]
  table = (out / "neurosim" / "crossbars.csv").read_text().splitlines()
  assert table[0].startswith("layer,type,dense_crossbars,crossbars") and len(table) == 4

  assert cli.report_main([str(out), "--cost", "isaac_32nm"]) == 0
  text = capsys.readouterr().out
  assert "cost on isaac_32nm" in text and "pruned / dense: energy" in text

  code = eval_cli.main([str(out), "--data", "synthetic", "--hw", "isaac_32nm", "--instances",
                        "2", "--limit", "32", "--calibration", "32", "--set", "variation=0.05",
                        "--set", "adc_bits=6", "--json", str(tmp_path / "eval.json")])
  text = capsys.readouterr().out
  assert code == 0 and "accuracy" in text and "±" in text and "variation 0.05" in text
  assert cli.report_main([str(out), "--cost", "isaac_7nm"]) == 2
  assert "unknown" in capsys.readouterr().err
  assert eval_cli.main([str(out), "--data", "synthetic", "--hw", "isaac_32nm",
                        "--set", "stuck_on_rate=2"]) == 2
  assert "stuck_on_rate" in capsys.readouterr().err


def test_xbar_eval_traces_each_chip_once(tmp_path, monkeypatch):
  """`xbar-eval` on 2000 test images (seven batches of 256 and one of 208) used to trace every
  chip (a new `tf.function`) twice, and TensorFlow warned "triggered tf.function retracing"
  from the third chip on: `analog_accuracy` now traces each chip once, for any batch size,
  from `TRACE_FROM_IMAGES` images on, and counts the same as eager chips."""
  import json
  import logging

  from xbar_tfmot.app import datasets
  from xbar_tfmot.core.hardware import parse_hardware
  from xbar_tfmot.models import analog_model as am
  model = small_model()
  out = tmp_path / "export"
  export(model, out, SPEC, formats=("json",))
  (x_train, y_train), (x, y) = datasets.synthetic()
  x, y = np.concatenate([x] * 16)[:2000], np.concatenate([y] * 16)[:2000]
  monkeypatch.setattr(datasets, "load_dataset",
                      lambda name, path=None, *a, **k: ((x_train, y_train), (x, y)))
  calls, library = [], am.analog_accuracy

  def spy(*args, **kwargs):
    calls.append(kwargs)
    return library(*args, **kwargs)

  class Records(logging.Handler):
    def __init__(self):
      super().__init__()
      self.messages = []

    def emit(self, record):
      self.messages.append(record.getMessage())

  records = Records()
  logging.getLogger("tensorflow").addHandler(records)
  monkeypatch.setattr(am, "analog_accuracy", spy)
  try:
    # one multi-bit analog input (issue 26 made the preset bit-serial, 16x the work; the
    # tracing is the point here, not the dataflow)
    code = eval_cli.main([str(out), "--data", "synthetic", "--hw", "isaac_32nm", "--instances",
                          "6", "--calibration", "32", "--set", "variation=0.05", "--set",
                          "adc_bits=6", "--set", "bit_serial=false",
                          "--json", str(tmp_path / "eval.json")])
  finally:
    logging.getLogger("tensorflow").removeHandler(records)
  assert code == 0
  assert not [m for m in records.messages if "retracing" in m], records.messages
  assert [c.get("traced") for c in calls] == [None]  # the library decides: 2000 images, traced
  hw = parse_hardware("isaac_32nm", variation=0.05, adc_bits=6, bit_serial=False)
  from xbar_tfmot.export.exporter import read_mapping
  mapping = read_mapping(str(out))
  got = json.loads((tmp_path / "eval.json").read_text())["pruned"]["accuracies"]
  assert got == library(model, mapping, hw, x, y, range(6), x_train[:32], traced=False)


def test_neurosim_pooling_flag_and_crossbar_table(tmp_path):
  """Pooling counts for the mapped layer it follows, never for an earlier one; crossbars.csv
  states each layer's counts and reduction as the mapping has them."""
  import csv
  import json
  K = _models.keras_module("keras3")
  K.utils.set_random_seed(1)
  L = K.layers
  inp = L.Input((8, 8, 1))
  x = L.Conv2D(4, 3, padding="same", name="c1")(inp)
  x = L.Conv2D(6, 3, padding="same", name="c2")(x)  # c1 is followed by c2, not by the pool
  x = L.MaxPooling2D(2, name="pool")(x)
  model = K.Model(inp, L.Dense(4, name="fc")(L.Flatten()(x)))
  _models.prune(model, SPEC, 0.7, "column")  # c2 and fc keep 4 of 12 crossbars
  export(model, tmp_path / "export", SPEC, formats=("json", "neurosim"))
  folder = tmp_path / "export" / "neurosim"
  rows = (folder / "network.csv").read_text().splitlines()
  assert rows == ["8,8,1,3,3,4,0,1", "8,8,4,3,3,6,1,1", "1,1,96,1,1,4,0,1"]
  mapping = json.loads((tmp_path / "export" / "mapping.json").read_text())
  table = list(csv.DictReader((folder / "crossbars.csv").read_text().splitlines()))
  assert [r["layer"] for r in table] == ["c1", "c2", "fc"]
  for row, layer in zip(table, mapping["layers"]):
    dense, used = layer["counts"]["dense"], layer["counts"]["crossbars"]
    assert (int(row["dense_crossbars"]), int(row["crossbars"])) == (dense, used)
    assert float(row["reduction"]) == pytest.approx(1 - used / dense, abs=1e-6)
    assert (int(row["rows"]), int(row["cols"]), int(row["columns_per_weight"])) == (16, 8, 4)
  assert [r["reduction"] for r in table][1:] == ["0.666667", "0.666667"]
