"""The cost model against hand computations from a preset's numbers, and its bad inputs."""

import _models
import numpy as np
import pytest

from xbar_tfmot.core.cost import estimate_cost
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec, parse_hardware, preset_names
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models.analog_model import output_positions
from xbar_tfmot.models.model_mapping import build_mapping

HW = HardwareSpec(name="hand", input_bits=8, dac_bits=2, array_rows=4, array_cols=4,
                  array_energy_pj=10.0, array_area_mm2=0.5, adc_energy_pj=2.0, adc_area_mm2=0.1,
                  dac_energy_pj=0.25, dac_area_mm2=0.01, cycle_ns=50.0)


def one_dense():
  """Dense 10 -> 6 on 4x4 crossbars: 3 input groups x 2 output groups = 6 dense crossbars;
  only the first 4 inputs are kept, so column grain packs 6 columns into 2 crossbars."""
  K = _models.keras_module("keras3")
  inp = K.layers.Input((10,))
  model = K.Model(inp, K.layers.Dense(6, name="fc")(inp))
  kernel = np.zeros((10, 6), np.float32)
  kernel[:4] = np.arange(1, 25).reshape(4, 6)
  model.get_layer("fc").set_weights([kernel, np.zeros(6, np.float32)])
  spec = CrossbarSpec(rows=4, cols=4)
  return model, build_mapping(model, spec, "column")


def test_one_layer_equals_the_hand_computation():
  model, mapping = one_dense()
  report = estimate_cost(mapping, HW, output_positions(model, mapping.layer_names))
  (layer,) = report.layers
  assert (layer.positions, layer.mvms) == (1, 4)  # one position, 8 bits / 2 per cycle
  p, d = layer.pruned, layer.dense
  assert (p.crossbars, d.crossbars) == (2, 6)
  assert p.energy_array_pj == pytest.approx(2 * 4 * 10.0)
  assert p.energy_adc_pj == pytest.approx(2 * 4 * 4 * 2.0)  # every column of both crossbars
  assert p.energy_dac_pj == pytest.approx(2 * 4 * 4 * 0.25)
  assert p.energy_pj == pytest.approx(152.0)
  assert d.energy_pj == pytest.approx(6 * 4 * 10.0 + 6 * 4 * 4 * 2.0 + 6 * 4 * 4 * 0.25)
  assert p.area_mm2 == pytest.approx(2 * (0.5 + 0.1 + 4 * 0.01))
  assert d.area_mm2 == pytest.approx(6 * (0.5 + 0.1 + 4 * 0.01))
  assert p.latency_ns == pytest.approx(4 * 50.0)
  assert report.pruned == p and "fc" in report.format_table()
  # idle columns skipped: 6 used columns instead of 8; dense uses 3 groups x 6 columns
  skip = estimate_cost(mapping, HW.replace(skip_idle_columns=True), {"fc": 1}).layers[0]
  assert skip.pruned.energy_adc_pj == pytest.approx(6 * 4 * 2.0)
  assert skip.dense.energy_adc_pj == pytest.approx(18 * 4 * 2.0)
  # a preset array of another size scales linearly in cells; replicas multiply area only
  big = estimate_cost(mapping, HW.replace(array_rows=8, array_cols=8), {"fc": 1}).layers[0]
  assert big.pruned.energy_array_pj == pytest.approx(2 * 4 * 10.0 * 16 / 64)


def test_replicas_multiply_area_and_divide_latency():
  K = _models.keras_module("keras3")
  inp = K.layers.Input((6, 6, 4))
  model = K.Model(inp, K.layers.Conv2D(4, 1, name="c")(inp))
  mapping = build_mapping(model, CrossbarSpec(rows=4, cols=4, replicas=3), "column")
  layer = estimate_cost(mapping, HW, output_positions(model, ["c"])).layers[0]
  assert layer.positions == 36 and layer.pruned.crossbars == 3
  assert layer.pruned.area_mm2 == pytest.approx(3 * 0.64)
  assert layer.pruned.energy_array_pj == pytest.approx(36 * 4 * 10.0)
  assert layer.pruned.latency_ns == pytest.approx(12 * 4 * 50.0)


def test_isaac_preset_per_array_cycle_matches_its_table():
  hw = HardwareSpec.preset("isaac_32nm")
  assert "ISCA 2016" in hw.sources[0] and hw.input_cycles == 16
  per_cycle = hw.array_energy_pj + 128 * hw.adc_energy_pj + 128 * hw.dac_energy_pj
  # 2.4 mW/8 x 100 ns + 128 x 16 mW/8 / 1.2 GS/s + 128 x 4 mW/1024 x 100 ns
  assert per_cycle == pytest.approx(30 + 128 * 2 / 1.2 + 128 * 4 / 1024 * 100, rel=1e-6)
  assert set(preset_names()) >= {"isaac_32nm", "puma_256x256"}
  for name in preset_names():
    hw = HardwareSpec.preset(name)
    assert hw.sources and HardwareSpec.from_dict(hw.to_dict()) == hw


def test_bad_inputs_name_the_field():
  model, mapping = one_dense()
  with pytest.raises(HardwareError, match="'fc'"):
    estimate_cost(mapping, HW, {"other": 1})
  with pytest.raises(HardwareError, match="cell_bits"):
    estimate_cost(mapping, HW.replace(cell_bits=2), {"fc": 1})
  with pytest.raises(HardwareError, match="unknown"):
    parse_hardware("isaac_7nm")
  with pytest.raises(HardwareError, match="dac_bits"):
    parse_hardware("isaac_32nm", dac_bits=0)
  with pytest.raises(HardwareError, match="unknown field"):
    HardwareSpec.from_dict({"adc_bitz": 4})
