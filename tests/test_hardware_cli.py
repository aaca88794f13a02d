"""Where the user sees the hardware view: NeuroSim export, `xbar-eval`, `xbar-report --cost`."""

import _models
import numpy as np

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
