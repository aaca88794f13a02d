"""The NeuroSim files against hand-computed known answers: the layer table's pooling flags,
each layer's weight file (pruned mapping, NeuroSim's row order) and input file (two's
complement bits, sign first), and the command line; formats of DNN_NeuroSim V1.4
(`Inference_pytorch/utee/hook.py`, `NeuroSIM/main.cpp`, `NeuroSIM/Chip.cpp`, commit ac828e6)."""

import _models
import numpy as np
import pytest

from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.export import neurosim
from xbar_tfmot.export.exporter import export
from xbar_tfmot.models.model_mapping import build_mapping

# 16 rows: one input channel of a 3x3 kernel per group; 4-bit weights in 2-bit cells,
# differential: 4 columns per weight, 2 weights per crossbar
SPEC = CrossbarSpec(rows=16, cols=8, weight_bits=4, cell_bits=2, differential=True)


def planted():
  """Conv2D 'same' (5, 5, 2) -> 3 channels, global average pooling, Dense 3 -> 2. Kernel
  value `100 i + 10 j + c + 1 + o / 10` at (i, j, c, o), output 1 of input channel 0 pruned
  before mapping and written back afterwards (the file must follow the mapping)."""
  K = _models.keras_module("keras3")
  L = K.layers
  inp = L.Input((5, 5, 2))
  x = L.Conv2D(3, 3, padding="same", name="c1")(inp)
  x = L.GlobalAveragePooling2D(name="gap")(x)
  model = K.Model(inp, L.Dense(2, name="fc")(x))
  i, j, c, o = np.meshgrid(*[np.arange(n) for n in (3, 3, 2, 3)], indexing="ij")
  kernel = (100 * i + 10 * j + c + 1 + o / 10).astype(np.float32)
  pruned = kernel.copy()
  pruned[:, :, 0, 1] = 0
  model.get_layer("c1").set_weights([pruned, np.zeros(3, np.float32)])
  model.get_layer("fc").set_weights([np.array([[1, -2], [3, 0.5], [-4, 2]], np.float32),
                                     np.zeros(2, np.float32)])
  mapping = build_mapping(model, SPEC, "column")
  model.get_layer("c1").set_weights([kernel, np.zeros(3, np.float32)])  # not on the chip
  return model, mapping, kernel, pruned


def sample():
  x = np.zeros((1, 5, 5, 2), np.float32)
  x[0, 0, 0] = [0.5, 0.25]
  x[0, 2, 2] = [-1.0, -0.5]
  x[0, 4, 4, 1] = 0.75
  return x


def read(path):
  return [line.split(",") for line in path.read_text().splitlines()]


def test_network_weight_and_input_files(tmp_path):
  model, mapping, kernel, pruned = planted()
  neurosim.write(model, mapping, tmp_path, sample=sample())
  # global average pooling follows c1: flagged, as NeuroSim's ResNet18 table flags its last conv
  assert (tmp_path / "network.csv").read_text().splitlines() == ["5,5,2,3,3,3,1,1",
                                                                  "1,1,3,1,1,2,0,1"]
  # weights: row c*9 + i*3 + j, column o, over the largest |weight| of what the chip holds
  w = np.array(read(tmp_path / "weight_c1.csv"), float)
  assert w.shape == (18, 3)
  top = 200 + 20 + 2 + 0.2  # pruned.max(): i = j = 2, c = 1, o = 2
  for c in range(2):
    for i in range(3):
      for j in range(3):
        for o in range(3):
          want = 0.0 if (c, o) == (0, 1) else (100 * i + 10 * j + c + 1 + o / 10) / top
          assert w[c * 9 + i * 3 + j, o] == pytest.approx(want, abs=5e-6)
  assert all(len(v) == 10 for v in read(tmp_path / "weight_c1.csv")[0])  # %10.5f
  assert np.array(read(tmp_path / "weight_fc.csv"), float) == pytest.approx(
      np.array([[1, -2], [3, 0.5], [-4, 2]]) / 4, abs=5e-6)
  # inputs: 18 rows, 25 'same' positions x 8 bits; scale 1.0 (the largest |x|)
  bits = np.array(read(tmp_path / "input_c1.csv"), int)
  assert bits.shape == (18, 25 * 8) and set(np.unique(bits)) <= {0, 1}

  def at(row, position):
    return "".join(map(str, bits[row, position * 8:(position + 1) * 8]))

  # position (0, 0): its kernel centre (1, 1) reads x[0, 0]; row c*9 + 4
  assert at(0 * 9 + 4, 0) == "01000000"  # 0.5 -> 64
  assert at(1 * 9 + 4, 0) == "00100000"  # 0.25 -> 32
  assert at(0 * 9 + 0, 0) == "00000000"  # padding
  # position (1, 1) = 6: tap (2, 2) reads x[2, 2]
  assert at(0 * 9 + 8, 6) == "10000000"  # -1.0 -> -128
  assert at(1 * 9 + 8, 6) == "11000000"  # -0.5 -> -64
  # position (4, 4) = 24: centre reads x[4, 4, 1] = 0.75 -> 96
  assert at(1 * 9 + 4, 24) == "01100000"
  # fc reads the pooled conv output: one position, 3 rows of 8 bits
  fc = np.array(read(tmp_path / "input_fc.csv"), int)
  assert fc.shape == (3, 8)
  script = (tmp_path / "run_neurosim.sh").read_text()
  assert ("network.csv 4 8 16 16 weight_c1.csv input_c1.csv weight_fc.csv input_fc.csv"
          in script)


def test_two_complement_bits_and_their_range():
  """NeuroSim's `dec2bin`: floor to a multiple of 2**(1 - n), clip to the n-bit range."""
  x = np.array([[1.0, -1.0, 0.3, -0.3, 0.0]])  # one position, 5 rows, scale 1
  got = neurosim.input_bits_matrix(x, 4)
  assert ["".join(map(str, r)) for r in got] == ["0111", "1000", "0010", "1101", "0000"]


def test_export_writes_the_files_and_flags_pooling(tmp_path):
  model, mapping, kernel, pruned = planted()
  model.get_layer("c1").set_weights([pruned, np.zeros(3, np.float32)])
  export(model, tmp_path / "out", SPEC, formats=("json", "neurosim"),
         representative_data=np.concatenate([sample(), np.ones((2, 5, 5, 2), np.float32)]))
  folder = tmp_path / "out" / "neurosim"
  names = sorted(p.name for p in folder.iterdir())
  assert names == ["crossbars.csv", "input_c1.csv", "input_fc.csv", "network.csv",
                   "run_neurosim.sh", "weight_c1.csv", "weight_fc.csv"]
  bits = np.array(read(folder / "input_c1.csv"), int)
  assert "".join(map(str, bits[4, :8])) == "01000000"  # the first representative image
  with pytest.raises(neurosim.NeuroSimError, match="sample"):
    neurosim.write(model, mapping, tmp_path / "bad", sample=np.zeros((1, 4, 4, 2)))
  with pytest.raises(neurosim.NeuroSimError, match="input_bits"):
    neurosim.write(model, mapping, tmp_path / "bad", input_bits=0)
