"""The cost model against hand computations from a preset's numbers, and its bad inputs."""

import _models
import numpy as np
import pytest

from xbar_tfmot.core.cost import Cost, estimate_cost
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec, parse_hardware, preset_names
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models.analog_model import output_positions
from xbar_tfmot.models.model_mapping import build_mapping

HW = HardwareSpec(name="hand", input_bits=8, dac_bits=2, bit_serial=True, array_rows=4,
                  array_cols=4,
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


def _replicated_conv(size: int):
  """The cost of a 1x1 Conv2D (4 -> 4 channels) on a `size` x `size` input, its one 4x4
  crossbar copied 3 times."""
  K = _models.keras_module("keras3")
  inp = K.layers.Input((size, size, 4))
  model = K.Model(inp, K.layers.Conv2D(4, 1, name="c")(inp))
  mapping = build_mapping(model, CrossbarSpec(rows=4, cols=4, replicas=3), "column")
  return estimate_cost(mapping, HW, output_positions(model, ["c"])).layers[0]


def test_replicas_multiply_area_and_divide_latency():
  layer = _replicated_conv(6)
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
  assert set(preset_names()) >= {"isaac_32nm", "puma_128x128"}
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


def test_skipped_idle_columns_count_every_physical_column_of_a_used_weight():
  """4-bit weights in 2-bit cells, differential: one weight takes 2 x 2 = 4 physical columns
  (Kout = 16 // 4 = 4). Dense 10 -> 3 on 4-row crossbars: input groups of 4, 4 and 2 rows;
  group 0 keeps all 3 outputs, group 1 keeps output 1, group 2 nothing: 2 crossbars, 4 used
  logical columns = 16 physical ones. A conversion per logical column would count 4."""
  K = _models.keras_module("keras3")
  inp = K.layers.Input((10,))
  model = K.Model(inp, K.layers.Dense(3, name="fc")(inp))
  kernel = np.zeros((10, 3), np.float32)
  kernel[0:4, :] = 1.0
  kernel[5, 1] = -2.0
  model.get_layer("fc").set_weights([kernel, np.zeros(3, np.float32)])
  spec = CrossbarSpec(rows=4, cols=16, weight_bits=4, cell_bits=2, differential=True)
  assert spec.columns_per_weight == 4
  mapping = build_mapping(model, spec, "column")
  # the hand count, from the kernel alone: (group, output) segments holding a non-zero weight
  used = sum(bool(np.any(kernel[g:g + 4, o])) for g in range(0, 10, 4) for o in range(3))
  assert used == 4
  mvms = 4  # one position x 8 input bits / 2 per cycle
  hw = HW.replace(differential_read="polarity")  # each column digitised
  skip = estimate_cost(mapping, hw.replace(skip_idle_columns=True), {"fc": 1}).layers[0]
  assert skip.pruned.crossbars == 2 and skip.dense.crossbars == 3
  assert skip.pruned.conversions == used * 4 * mvms == 64
  assert skip.pruned.energy_adc_pj == pytest.approx(64 * 2.0)
  assert skip.dense.conversions == 3 * 3 * 4 * mvms == 144  # 3 groups x 3 outputs x 4 columns
  every = estimate_cost(mapping, hw, {"fc": 1}).layers[0]  # every column of every crossbar
  assert every.pruned.conversions == 2 * 16 * mvms and every.dense.conversions == 3 * 16 * mvms
  assert every.pruned.energy_adc_pj == pytest.approx(2 * 16 * mvms * 2.0)
  # 4 rows and 16 columns: DACs drive rows; the 4x16 crossbar is 4x the preset's 4x4 array
  assert every.pruned.energy_dac_pj == pytest.approx(2 * 4 * mvms * 0.25)
  assert every.pruned.energy_array_pj == pytest.approx(2 * mvms * 10.0 * 4)
  assert every.pruned.area_mm2 == pytest.approx(2 * (0.5 * 4 + 0.1 + 4 * 0.01))
  # pairs read in the array: one conversion per pair, half of each count, nothing else changes
  pairs = estimate_cost(mapping, HW.replace(differential_read="array"), {"fc": 1}).layers[0]
  assert pairs.pruned.conversions == 2 * 8 * mvms and pairs.dense.conversions == 3 * 8 * mvms
  assert pairs.pruned.energy_array_pj == every.pruned.energy_array_pj
  paired_skip = HW.replace(differential_read="array", skip_idle_columns=True)
  assert estimate_cost(mapping, paired_skip, {"fc": 1}).layers[0].pruned.conversions == 32


def test_one_multi_bit_analog_input_is_one_cycle():
  """The same chip with `bit_serial=false`: one 8-bit analog input per MVM, so one cycle of
  the array, the DACs and one conversion per column, and a quarter of the latency."""
  model, mapping = one_dense()
  serial = estimate_cost(mapping, HW, {"fc": 1}).layers[0]
  analog = estimate_cost(mapping, HW.replace(bit_serial=False), {"fc": 1}).layers[0]
  assert (serial.mvms, analog.mvms) == (4, 1)
  assert analog.pruned.conversions * 4 == serial.pruned.conversions == 2 * 4 * 4
  assert analog.pruned.energy_pj == pytest.approx(serial.pruned.energy_pj / 4)
  assert analog.pruned.latency_ns == pytest.approx(50.0)


def test_latency_rounds_the_positions_up_over_the_replicas():
  """25 output positions on 3 copies: the slowest copy computes 9 of them."""
  layer = _replicated_conv(5)
  assert layer.positions == 25
  assert layer.pruned.latency_ns == pytest.approx(9 * 4 * 50.0)


def test_the_table_prints_the_costs_in_its_units():
  """nJ, mm2 and us with the hand numbers of `one_dense` at 100x the energies and cycle time
  (so that a wrong unit shows in the printed digits)."""
  model, mapping = one_dense()
  hw = HW.replace(array_energy_pj=1000.0, adc_energy_pj=200.0, dac_energy_pj=25.0,
                  cycle_ns=5000.0)
  report = estimate_cost(mapping, hw, {"fc": 1})
  lines = report.format_table().splitlines()
  assert lines[0].startswith("cost on hand ")
  # pruned 2 x 4 x (1000 + 4 x 200 + 4 x 25) = 15200 pJ, dense 3x that; 4 cycles of 5 us
  row = ["4", "6/2", "45.60/15.20", "3.8400/1.2800", "20.00/20.00"]
  assert lines[3].split() == ["fc", *row] and lines[4].split() == ["total", *row]
  assert lines[5] == "pruned / dense: energy 33.3%, area 33.3% (ADC 6.40 of 15.20 nJ)"


def test_a_layer_without_crossbars_costs_nothing_and_areas_scale_with_the_array():
  model, mapping = one_dense()
  model.get_layer("fc").set_weights([np.zeros((10, 6), np.float32), np.zeros(6, np.float32)])
  empty = estimate_cost(build_mapping(model, CrossbarSpec(rows=4, cols=4), "column"), HW,
                        {"fc": 1}).layers[0]
  assert empty.pruned == Cost(0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
  assert empty.dense.latency_ns == pytest.approx(4 * 50.0)
  # the preset's array is 8x8, the mapping's 4x4: the array part of the area is a quarter
  big = estimate_cost(mapping, HW.replace(array_rows=8, array_cols=8), {"fc": 1}).layers[0]
  assert big.pruned.area_mm2 == pytest.approx(2 * (0.5 / 4 + 0.1 + 4 * 0.01))


# Accelergy's ISAAC ADC, energy (pJ) and area (um^2) per conversion at 4, 6 and 8 bits
# (hwcomponents-library `IsaacADC`, the numbers): the known answers, typed from the
# source, not read from the module under test.
ADC_PJ = {4: 0.79, 6: 1.20, 8: 1.67}
ADC_UM2 = {4: 361.04, 6: 626.91, 8: 1200.0}


def test_adc_energy_per_conversion_follows_the_isaac_table():
  """A planted spec quoted at 8 bits with the table's own 1.67 pJ and 1200 um^2: at 4, 6 and 8
  bits one conversion costs the table's energy and one ADC its area."""
  model, mapping = one_dense()
  planted = HW.replace(adc_energy_pj=1.67, adc_area_mm2=1200e-6, adc_reference_bits=8,
                       adc_scaling="table")
  for bits in (4, 6, 8):
    layer = estimate_cost(mapping, planted.replace(adc_bits=bits), {"fc": 1}).layers[0]
    p = layer.pruned
    assert p.conversions == 2 * 4 * 4  # the count does not depend on the resolution
    assert p.energy_adc_pj / p.conversions == pytest.approx(ADC_PJ[bits], rel=1e-9)
    assert p.area_mm2 == pytest.approx(2 * (0.5 + ADC_UM2[bits] * 1e-6 + 4 * 0.01), rel=1e-9)
    assert p.energy_array_pj == pytest.approx(2 * 4 * 10.0)  # nothing else moves
  # an ideal ADC (adc_bits null) and a spec without a reference are charged as quoted
  for hw in (planted.replace(adc_bits=None), HW.replace(adc_energy_pj=1.67, adc_bits=4)):
    p = estimate_cost(mapping, hw, {"fc": 1}).layers[0].pruned
    assert p.energy_adc_pj / p.conversions == pytest.approx(1.67)
  # outside the table's 4..10 bits: extended geometrically with the nearest step's ratio
  p = estimate_cost(mapping, planted.replace(adc_bits=3), {"fc": 1}).layers[0].pruned
  assert p.energy_adc_pj / p.conversions == pytest.approx(0.79 * 0.79 / 0.99)


def test_isaac_preset_adc_energy_at_4_and_6_bits():
  """`xbar-eval --hw isaac_32nm --set adc_bits=4` used to print the 8-bit ADC energy."""
  model, mapping = one_dense()
  hw = HardwareSpec.preset("isaac_32nm").replace(input_bits=8, dac_bits=2, array_rows=4,
                                                 array_cols=4)
  per = {}
  for bits in (4, 6, 8):
    p = estimate_cost(mapping, hw.replace(adc_bits=bits), {"fc": 1}).layers[0].pruned
    per[bits] = p.energy_adc_pj / p.conversions
  assert per[8] == pytest.approx(16 / 8 / 1.2, rel=1e-6)  # ISAAC Table I, unchanged
  assert per[4] == pytest.approx(16 / 8 / 1.2 * 0.79 / 1.67, rel=1e-6)  # 0.788 pJ
  assert per[6] == pytest.approx(16 / 8 / 1.2 * 1.20 / 1.67, rel=1e-6)  # 1.198 pJ


def test_dac_energy_and_area_follow_its_bits():
  """Quoted for a 1-bit DAC: a 2-bit DAC costs twice per row and cycle and takes half the
  cycles (the MVM's DAC energy is unchanged); one 8-bit analog input is one cycle of an 8-bit
  DAC; float inputs are charged as quoted."""
  model, mapping = one_dense()
  one_bit = HW.replace(dac_bits=1, dac_reference_bits=1)
  two_bit = HW.replace(dac_bits=2, dac_reference_bits=1)
  a = estimate_cost(mapping, one_bit, {"fc": 1}).layers[0].pruned
  b = estimate_cost(mapping, two_bit, {"fc": 1}).layers[0].pruned
  assert a.energy_dac_pj == pytest.approx(2 * 4 * 8 * 0.25)  # 8 cycles of 1 bit
  assert b.energy_dac_pj == pytest.approx(2 * 4 * 4 * 0.25 * 2) == a.energy_dac_pj
  assert b.area_mm2 == pytest.approx(2 * (0.5 + 0.1 + 4 * 0.01 * 2))
  analog = estimate_cost(mapping, one_bit.replace(bit_serial=False), {"fc": 1}).layers[0].pruned
  assert analog.energy_dac_pj == pytest.approx(2 * 4 * 1 * 0.25 * 8)
  floats = one_bit.replace(input_bits=None)
  assert estimate_cost(mapping, floats, {"fc": 1}).layers[0].pruned.energy_dac_pj == \
      pytest.approx(2 * 4 * 0.25)
  with pytest.raises(HardwareError, match="adc_reference_bits"):
    HW.replace(adc_reference_bits=0)
  with pytest.raises(HardwareError, match="adc_scaling.*table, linear"):
    HW.replace(adc_scaling="log")


def test_puma_preset_charges_what_its_simulator_charges():
  """puma-simulator (commit a206f75), one 16-bit MVM of one physical 128x128 crossbar with
  every column converted: 16 cycles x (xbar_ip 100 ns x 1.70 mW + 128 ADC accesses x 1.8 mW x
  1 ns + 128 / 8 DAC accesses x 0.00350625 mW x 1 ns), latency adc_lat 100 ns x (16 + 2)."""
  hw = HardwareSpec.preset("puma_128x128")
  assert (hw.array_rows, hw.array_cols, hw.input_cycles) == (128, 128, 16)
  K = _models.keras_module("keras3")
  inp = K.layers.Input((128,))
  model = K.Model(inp, K.layers.Dense(16, name="fc")(inp))
  spec = CrossbarSpec(rows=128, cols=128, weight_bits=8, cell_bits=2, differential=True)
  mapping = build_mapping(model, spec, "column")
  p = estimate_cost(mapping, hw, {"fc": 1}).layers[0].pruned
  assert p.crossbars == 1 and p.conversions == 16 * 128
  assert p.energy_array_pj == pytest.approx(16 * 100 * (1.37 * 2 - 1.04))
  assert p.energy_adc_pj == pytest.approx(16 * 128 * 1.8)
  assert p.energy_dac_pj == pytest.approx(16 * 128 / 8 * 0.00350625)
  assert p.latency_ns == pytest.approx(100 * (16 + 3 - 1))
  assert p.area_mm2 == pytest.approx(2.5e-5 + 4 / 16 * 0.0012 + 128 * 1.67e-7 / 8)
  # PUMA's ADC power is 0.225 mW per bit, its area the same at every resolution
  four = estimate_cost(mapping, hw.replace(adc_bits=4), {"fc": 1}).layers[0].pruned
  assert four.energy_adc_pj == pytest.approx(16 * 128 * 0.9) and four.area_mm2 == p.area_mm2


def test_mnsim_preset_charges_what_its_simulator_charges():
  """MNSIM 2.0 (thu-nics/MNSIM-2.0, commit ca39ccb), default SimConfig.ini at behaviour level:
  one 8-bit MVM of a fully used 256x256 crossbar of 128 differential pairs, half of an MNSIM PE
  (a positive and a negative crossbar on 128 DACs and 128 ADCs). MNSIM charges each component
  its power times its latency, over multiple_time = 8 input bits x 2 row steps x 2 column steps."""
  hw = HardwareSpec.preset("mnsim2_256x256")
  assert "mnsim2_256x256" in preset_names() and "MNSIM 2.0" in hw.sources[0]
  assert HardwareSpec.from_dict(hw.to_dict()) == hw
  assert parse_hardware("mnsim2_256x256") == hw
  assert (hw.array_rows, hw.array_cols, hw.input_cycles, hw.adc_bits) == (256, 256, 8, 6)
  assert hw.differential_read == "array" and hw.on_off_ratio == 1e6 / 1e4
  # the known answer, from SimConfig.ini and the component models, in W, ns and um^2
  cell_w = (0.9 * 0.0 ** 2 + 0.1 * 0.15 ** 2) * (0.67 / 1e6 + 0.33 / 1e4)  # V^2 / R, Device.py
  kb = 256 * 256 / 1024 / 8
  xbar_ns = 3.16 + 0.001 * (0.0002 * kb ** 2 + 5e-6 * kb + 4e-14)  # Crossbar.py read latency
  adc_ns, dac_ns = (6 + 2) / 1.0, (1 + 2) / 1.0  # (bits + 2) / 1 GS/s, ADC.py and DAC.py
  steps = 8 * 2 * 2  # PE_latency.py multiple_time
  pe_xbar_w = 2 * 256 * 256 * cell_w / 2 / 2  # PE.py: 2 polarities / input_demux / output_mux
  pe_adc_w, pe_dac_w = 256 // 2 * 1.26e-3, 256 // 2 * 0.0039e-3  # ceil(used / 2) converters
  K = _models.keras_module("keras3")
  inp = K.layers.Input((256,))
  model = K.Model(inp, K.layers.Dense(16, name="fc")(inp))
  spec = CrossbarSpec(rows=256, cols=256, weight_bits=8, cell_bits=1, differential=True)
  mapping = build_mapping(model, spec, "column")
  p = estimate_cost(mapping, hw, {"fc": 1}).layers[0].pruned
  assert p.crossbars == 1 and p.conversions == 8 * 128  # one per pair and cycle, as counted
  # our crossbar is one of the PE's two: half of what MNSIM charges the PE (W x ns = nJ)
  assert p.energy_array_pj == pytest.approx(pe_xbar_w * steps * xbar_ns * 1e3 / 2, rel=1e-6)
  assert p.energy_adc_pj == pytest.approx(pe_adc_w * steps * adc_ns * 1e3 / 2, rel=1e-6)
  assert p.energy_dac_pj == pytest.approx(pe_dac_w * steps * dac_ns * 1e3 / 2, rel=1e-6)
  assert p.energy_pj == pytest.approx(8 * 2599.164, rel=1e-6)  # 20.8 nJ, 99% ADC
  assert p.latency_ns == pytest.approx(steps * (dac_ns + xbar_ns + adc_ns), rel=1e-6)
  pe_um2 = 2 * (256 * 256 * 1.44 + 1150 * 256) + 128 * 1650 + 128 * 0.166  # PE.py area
  assert p.area_mm2 == pytest.approx(pe_um2 * 1e-6 / 2, rel=1e-6)
