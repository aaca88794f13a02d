"""Issue 26 on the analog model: one dataflow for the simulation and the cost model (the
conversions counted while simulating equal those charged), ADC ranges per slice on the
programmed chip, a finite g_min, the read-out of differential pairs, the bias of the clipped
programming noise, and read noise per image whatever the batch."""

import _models
import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot.core import analog
from xbar_tfmot.core.cost import estimate_cost
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import analog_model as am
from xbar_tfmot.models.crossbar_model import crossbar_model
from xbar_tfmot.models.model_mapping import build_mapping

DIFF = CrossbarSpec(rows=36, cols=8, weight_bits=4, cell_bits=2, differential=True)
# 10 columns hold 2 weights of 4 columns: 2 columns no weight slot reaches
SPARE = CrossbarSpec(rows=36, cols=10, weight_bits=4, cell_bits=2, differential=True)
SINGLE = CrossbarSpec(rows=36, cols=4, weight_bits=4, cell_bits=2)


def pruned(spec):
  model = _models.vgg("keras3")
  _models.prune(model, spec, 0.5, "column")
  return model, build_mapping(model, spec, "column")


@pytest.mark.parametrize("spec", [DIFF, SPARE, SINGLE], ids=["diff", "spare", "single"])
@pytest.mark.parametrize("read", ["array", "polarity"])
@pytest.mark.parametrize("skip", [False, True], ids=["every", "skip"])
def test_the_conversions_simulated_are_the_conversions_charged(spec, read, skip):
  """Layer by layer, the ADC conversions the analog model performs on a batch, per image,
  equal those the cost model charges per inference, for both dataflows."""
  model, mapping = pruned(spec)
  x = _models.random_inputs(model, n=3)
  positions = am.output_positions(model, mapping.layer_names)
  counted = {}
  for serial in (True, False):
    hw = HardwareSpec(input_bits=4, dac_bits=2, bit_serial=serial, adc_bits=6,
                      differential_read=read, skip_idle_columns=skip)
    chip = am.analog_model(model, mapping, hw, 0, calibration=x)
    chip(x)
    layers = am.analog_layers(chip)
    charged = estimate_cost(mapping, hw, positions).layers
    assert [l.name for l in layers] == [c.name for c in charged]
    counted[serial] = [int(l.conversions.numpy()) // len(x) for l in layers]
    assert counted[serial] == [c.pruned.conversions for c in charged], (serial, hw)
    assert all(int(l.conversions.numpy()) % len(x) == 0 for l in layers)
  # two cycles of 2 bits against one 4-bit analog input
  assert counted[True] == [2 * c for c in counted[False]] and min(counted[False]) > 0


def test_the_isaac_preset_is_bit_serial_and_the_dataflow_sets_the_cycles():
  isaac = HardwareSpec.preset("isaac_32nm")
  assert isaac.bit_serial and isaac.serial and isaac.input_cycles == 16 and isaac.dac_bits == 1
  assert isaac.replace(bit_serial=False).input_cycles == 1  # one 16-bit analog input
  assert isaac.replace(input_bits=None).input_cycles == 1  # float inputs: one ideal cycle
  # a pair read in the array is one conversion: half the lines of a differential crossbar
  assert HardwareSpec(differential_read="array").converted_columns(DIFF) == (4, 2)
  assert HardwareSpec(differential_read="polarity").converted_columns(DIFF) == (8, 4)
  assert HardwareSpec(differential_read="array").converted_columns(SINGLE) == (4, 2)
  for field, value in (("differential_read", "both"), ("adc_ranges", "cycle"),
                       ("on_off_ratio", 1.0), ("on_off_ratio", 0.5)):
    with pytest.raises(HardwareError, match=field):
      HardwareSpec(**{field: value})


def planted_core(hw, columns=((0, 1, -1),)):
  """One crossbar, one row, three output slots (the third unused), differential, two slices:
  conductances planted by hand, `(n, rows, kout, P, q)`."""
  g = np.zeros((1, 1, 3, 2, 2), np.float32)
  g[0, 0, 0] = [[0.1, 0.2], [0.3, 0.4]]  # slot 0: positive slices, negative slices
  g[0, 0, 1] = [[0.5, 0.6], [0.2, 0.1]]
  g[0, 0, 2] = 0.9  # unused: must not reach any range
  enc = analog.Encoded(g, np.array([[1.0, 4.0], [-1.0, -4.0]], np.float32), False,
                       np.asarray(1.0, np.float32), 0.0)
  return am.AnalogCore(hw, enc, np.array(columns), seed=0, index=0)


def ranges(core):
  return np.stack([core.adc_low, core.adc_high], -1)


def test_per_slice_adc_ranges_on_planted_partial_sums():
  """Calibration rows x = 1 and x = 2 on one row: a line's current is x * g. With the
  percentile at 100 each range is [min, max] of the currents of its group."""
  rows = np.array([[[1.0]], [[2.0]]], np.float32)  # (rows, n, r)
  hw = HardwareSpec(adc_bits=4, adc_percentile=100.0, differential_read="polarity")
  core = planted_core(hw)
  core.calibrate_adc(rows)
  # (cycle, polarity, slice): slot 0 gives x * g, slot 1 likewise, pooled over x and slots
  expected = [[[[0.1, 1.0], [0.2, 1.2]],   # + slice 0: {0.1, 0.2, 0.5, 1.0}; + slice 1
               [[0.2, 0.6], [0.1, 0.8]]]]  # - slice 0: {0.3, 0.6, 0.2, 0.4}; - slice 1
  np.testing.assert_allclose(ranges(core), expected, rtol=1e-6)
  # pairs read in the array: one line of g+ - g- per slice
  core = planted_core(hw.replace(differential_read="array"))
  core.calibrate_adc(rows)
  np.testing.assert_allclose(ranges(core), [[[[-0.4, 0.6], [-0.4, 1.0]]]], rtol=1e-6, atol=1e-6)
  # one range per layer pools all of them (the behaviour before issue 26)
  core = planted_core(hw.replace(adc_ranges="layer"))
  core.calibrate_adc(rows)
  np.testing.assert_allclose(ranges(core), [[[[0.1, 1.2]]]], rtol=1e-6)
  # per column: slot 0's positive slice 0 is {0.1, 0.2}, slot 1's negative slice 1 {0.1, 0.2}
  core = planted_core(hw.replace(adc_ranges="column"))
  core.calibrate_adc(rows)
  got = ranges(core)
  assert got.shape == (1, 1, 3, 2, 2, 2)  # cycle, crossbar, slot, polarity, slice, (low, high)
  np.testing.assert_allclose(got[0, 0, 0], [[[0.1, 0.2], [0.2, 0.4]], [[0.3, 0.6], [0.4, 0.8]]],
                             rtol=1e-6)
  np.testing.assert_allclose(got[0, 0, 1], [[[0.5, 1.0], [0.6, 1.2]], [[0.2, 0.4], [0.1, 0.2]]],
                             rtol=1e-6)


def test_per_cycle_ranges_of_a_bit_serial_chip():
  """2-bit inputs over [0, 3], one bit per cycle: x = 1 is bits (1, 0) and x = 3 bits (1, 1),
  so cycle 0 sees inputs {1, 1} and cycle 1 sees {0, 1}."""
  hw = HardwareSpec(input_bits=2, dac_bits=1, bit_serial=True, adc_bits=4,
                    adc_percentile=100.0, differential_read="polarity")
  core = planted_core(hw)
  core.input_range = (0.0, 3.0)
  core.calibrate_adc(np.array([[[1.0]], [[3.0]]], np.float32))
  got = ranges(core)
  np.testing.assert_allclose(got[0, 0], [[0.1, 0.5], [0.2, 0.6]], rtol=1e-6)  # + slices
  np.testing.assert_allclose(got[1, 0], [[0.0, 0.5], [0.0, 0.6]], rtol=1e-6, atol=1e-7)


def test_the_ranges_are_calibrated_on_the_programmed_chip():
  """Every cell stuck on (g = g_max = 1): whatever the planted conductances, every range is
  [1, 2] for inputs 1 and 2; calibrating on the ideal conductances would give the planted."""
  hw = HardwareSpec(adc_bits=4, adc_percentile=100.0, differential_read="polarity",
                    stuck_on_rate=1.0)
  core = planted_core(hw)
  core.calibrate_adc(np.array([[[1.0]], [[2.0]]], np.float32))
  np.testing.assert_allclose(ranges(core), np.broadcast_to([1.0, 2.0], (1, 2, 2, 2)))


def hand_core(hw, weights, spec):
  enc = analog.encode(np.asarray(weights, np.float32), hw, spec.weight_bits, spec.cell_bits,
                      spec.differential)
  return enc, am.AnalogCore(hw, enc, np.zeros((1, enc.conductances.shape[2]), np.int64), 0, 0)


@pytest.mark.parametrize("read", ["array", "polarity"])
def test_g_min_by_hand_on_a_differential_pair(read):
  """4-bit weights in 2-bit cells, on/off ratio 10 (g_min = 0.1): w = 0.6 is m = 9 = 2*4 + 1,
  cells 0.1 + 0.9 * (1/3, 2/3) = (0.4, 0.7) in the positive column, g_min in the negative;
  w = -1 is m = 15: cells (1, 1) in the negative column. Inputs (1, 2): positive currents
  (0.4 + 0.2, 0.7 + 0.2), negative (0.1 + 2, 0.1 + 2); the shift-add gives
  (3 * 0.6 + 12 * 0.9 - 3 * 2.1 - 12 * 2.1) / 15 / 0.9 = -1.4 = 0.6 * 1 - 1 * 2."""
  hw = HardwareSpec(on_off_ratio=10.0, differential_read=read, adc_bits=16,
                    adc_percentile=100.0)
  enc, core = hand_core(hw, [[[0.6], [-1.0]]], DIFF)
  np.testing.assert_allclose(enc.conductances[0, :, 0], [[[0.4, 0.7], [0.1, 0.1]],
                                                         [[0.1, 0.1], [1.0, 1.0]]], rtol=1e-6)
  x = tf.constant([[[1.0, 2.0]]])
  lines = np.asarray(core.line_sums(x))[0, 0, 0]
  want = [[0.6 - 2.1, 0.9 - 2.1]] if read == "array" else [[0.6, 0.9], [2.1, 2.1]]
  np.testing.assert_allclose(lines, want, rtol=1e-5)
  np.testing.assert_allclose(core.combine(tf.constant(lines[None, None, None]), x), [[[-1.4]]],
                             rtol=1e-5)
  np.testing.assert_allclose(enc.effective(enc.conductances)[0, :, 0], [0.6, -1.0], rtol=1e-5)
  core.calibrate_adc(np.array([[[1.0, 2.0]], [[2.0, 1.0]]], np.float32))
  np.testing.assert_allclose(core.forward(x), [[[-1.4]]], rtol=1e-3)


def test_g_min_by_hand_on_an_offset_column():
  """2-bit weights in one 2-bit cell, g_min = 0.1: w = 0.5 stores v = 0.75 -> 2 of 3 levels,
  g = 0.1 + 0.9 * 2/3 = 0.7; w = -1 stores v = 0, g = g_min. Inputs (1, 2): current 0.9; the
  digital side removes g_min's current and the offset: 2 * (0.9 - 0.1 * 3) / 0.9 - 3 = -5/3
  (= 1/3 * 1 - 1 * 2, the stored levels)."""
  hw = HardwareSpec(on_off_ratio=10.0, adc_bits=16, adc_percentile=100.0)
  spec = CrossbarSpec(rows=2, cols=1, weight_bits=2, cell_bits=2)
  enc, core = hand_core(hw, [[[0.5], [-1.0]]], spec)
  np.testing.assert_allclose(enc.conductances[0, :, 0, 0, 0], [0.7, 0.1], rtol=1e-6)
  x = tf.constant([[[1.0, 2.0]]])
  np.testing.assert_allclose(np.asarray(core.line_sums(x)).reshape(-1), [0.9], rtol=1e-6)
  np.testing.assert_allclose(core.combine(core.line_sums(x), x), [[[-5 / 3]]], rtol=1e-5)
  np.testing.assert_allclose(enc.effective(enc.conductances)[0, :, 0], [1 / 3, -1.0], rtol=1e-5)


@pytest.mark.parametrize("ratio", [None, 10.0, 100.0])
@pytest.mark.parametrize("read", ["array", "polarity"])
def test_a_clean_chip_computes_the_same_with_any_g_min_and_read(ratio, read):
  model, mapping = pruned(DIFF)
  x = _models.random_inputs(model, n=4)
  ref = crossbar_model(model, mapping)(x)
  hw = HardwareSpec(quantize_weights=False, on_off_ratio=ratio, differential_read=read)
  assert _models.max_rel_error(am.analog_model(model, mapping, hw, 1)(x), ref) < 1e-5
  hw = hw.replace(adc_bits=16, adc_percentile=100.0)
  assert _models.max_rel_error(am.analog_model(model, mapping, hw, 1, x)(x), ref) < 2e-3


@pytest.mark.parametrize("g_min", [0.0, 0.05, 0.1])
def test_the_bias_of_the_clipped_programming_noise_is_the_stated_one(g_min):
  """Cells at g_min with absolute variation s = 0.05, clipped at 0: the mean shift is
  `clip_bias` (0.40 s at g_min = 0, 0.083 s at g_min = s, 0.0085 s at 2 s). 400,000 cells:
  the standard error of the mean is below 1e-4."""
  s = 0.05
  ratio = None if g_min == 0 else 1 / g_min
  hw = HardwareSpec(on_off_ratio=ratio, variation=s)
  g = tf.fill((400_000,), hw.g_min)
  shift = float(np.mean(analog.program(g, hw, (3, 4)))) - hw.g_min
  expected = float(analog.clip_bias(hw.g_min, s))
  assert expected == pytest.approx({0.0: 0.3989, 0.05: 0.0833, 0.1: 0.0085}[g_min] * s, rel=0.01)
  assert abs(shift - expected) < 4e-4, (shift, expected)


def test_per_image_normals_do_not_depend_on_the_batch():
  a = analog.per_image_normal(7, 0, (5, 3, 2), 1).numpy()
  parts = [analog.per_image_normal(7, i, (1, 3, 2), 1).numpy() for i in range(5)]
  np.testing.assert_array_equal(a, np.concatenate(parts))
  b = analog.per_image_normal(7, 2, (3, 3, 2), 1).numpy()
  np.testing.assert_array_equal(a[2:], b)
  assert not np.array_equal(a[0], a[1])  # each image its own draw
  assert not np.array_equal(a, analog.per_image_normal(7, 0, (5, 3, 2), 2).numpy())
  assert abs(a.std() - 1) < 0.5


@pytest.mark.parametrize("fields", [
    {"quantize_weights": False},
    {"input_bits": 8, "adc_bits": 12},
    {"input_bits": 4, "dac_bits": 2, "bit_serial": True, "adc_bits": 12,
     "differential_read": "polarity"}], ids=["folded", "adc", "serial"])
def test_read_noise_does_not_depend_on_the_batch_size(fields):
  """Read noise is drawn per image (and output position and cycle): the same images in one
  batch of 6 or in 6 batches of 1 give the same outputs and the same accuracies; two copies
  of one image in a batch get different noise."""
  model, mapping = pruned(DIFF)
  x = _models.random_inputs(model, n=6)
  hw = HardwareSpec(read_noise=0.05, **fields)
  clean = np.asarray(am.analog_model(model, mapping, hw.replace(read_noise=0.0), 0, x)(x))
  whole = np.asarray(am.analog_model(model, mapping, hw, 0, x)(x))
  chip = am.analog_model(model, mapping, hw, 0, x)
  single = np.concatenate([np.asarray(chip(x[i:i + 1])) for i in range(len(x))])
  np.testing.assert_allclose(single, whole, rtol=1e-4, atol=1e-4)
  assert np.abs(whole - clean).max() > 1e-2  # the noise is there
  twice = np.asarray(am.analog_model(model, mapping, hw, 0, x)(np.concatenate([x[:1], x[:1]])))
  assert np.abs(twice[0] - twice[1]).max() > 1e-3
  y = np.argmax(whole, -1)
  one = am.analog_accuracy(model, mapping, hw, x, y, [0, 1], x, batch_size=1)
  assert one == am.analog_accuracy(model, mapping, hw, x, y, [0, 1], x, batch_size=6)
  assert one[0] == 1.0


@pytest.mark.parametrize("read", ["array", "polarity"])
def test_read_noise_per_product_has_the_cell_noise_variance(read):
  """Fresh Gaussian noise s on every cell at every read adds s^2 * sum(x^2) * sum(coef^2) /
  (1 - g_min)^2 * scale^2 to the variance of a product: measured on 4000 reads of one input
  through one Dense layer, folded and through the ADC path (the noise is added to the line
  currents there), against that formula and against cells perturbed in numpy."""
  K = _models.keras_module("keras3")
  K.utils.set_random_seed(3)
  inp = K.layers.Input((6,))
  model = K.Model(inp, K.layers.Dense(2, use_bias=False, name="fc")(inp))
  spec = CrossbarSpec(rows=6, cols=8, weight_bits=4, cell_bits=2, differential=True)
  mapping = build_mapping(model, spec, "column")
  x = np.tile(np.linspace(-1, 1, 6, dtype=np.float32), (4000, 1))
  calibration = np.random.default_rng(1).uniform(-2, 2, (64, 6)).astype(np.float32)
  s = 0.02
  hw = HardwareSpec(read_noise=s, differential_read=read, on_off_ratio=10.0)
  kernel = np.asarray(model.get_layer("fc").kernel)
  enc = analog.encode(kernel[None], hw, 4, 2, True)
  rng = np.random.default_rng(0)
  cells = enc.conductances[None] + s * rng.standard_normal((4000, *enc.conductances.shape))
  brute = np.einsum("br,bnrkpq,pq->bk", x, cells - 0.1, enc.coef) / 0.9 * enc.scale
  formula = s * np.sqrt((x[0] ** 2).sum() * (enc.coef ** 2).sum()) / 0.9 * enc.scale
  for fields in ({}, {"adc_bits": 16, "adc_percentile": 100.0}):
    out = np.asarray(am.analog_model(model, mapping, hw.replace(**fields), 0, calibration)(x))
    assert np.allclose(out.std(0), formula, rtol=0.06), (fields, out.std(0), formula)
    assert np.allclose(out.std(0), brute.std(0), rtol=0.08)


@pytest.mark.parametrize("mode,serial,noise", [("slice", False, 0.0), ("column", True, 0.02),
                                               ("layer", True, 0.0), ("column", False, 0.02)])
def test_the_forward_is_the_lines_digitised_in_crossbar_order(mode, serial, noise):
  """`forward` (ADC and shift-add on each group's product as it comes, in slot order, the
  dequantisation folded into the shift-add where ranges are shared) equals the plain
  dataflow: every line's current and read noise in crossbar order, `analog.quantize` with the
  cycle's ranges, the cycles shift-added, then `combine`."""
  model, mapping = pruned(SPARE)
  x = _models.random_inputs(model, n=3)
  hw = HardwareSpec(input_bits=4, dac_bits=2, bit_serial=serial, adc_bits=5, adc_ranges=mode,
                    read_noise=noise, on_off_ratio=10.0)
  chip = am.analog_model(model, mapping, hw, 0, calibration=x)
  K = _models.keras_module("keras3")  # not tf.keras: TFMOT, once imported, makes that tf_keras
  inputs = K.Model(chip.inputs, [l.input for l in am.analog_layers(chip)])(x)
  for layer, given in zip(am.analog_layers(chip), inputs):
    core = layer.core
    rows = layer.crossbar_inputs(given)
    start = tf.constant(4, tf.int32)
    if serial:
      code, unit = analog.input_code(rows, *core.input_range, hw.input_bits)
      cycles = [analog.input_slice(code, unit, j, hw.dac_bits) for j in range(hw.input_cycles)]
      read = tf.cast(code, tf.float32) * unit
    else:
      cycles, read = [rows], rows
    total = 0.0
    for j, cycle in enumerate(cycles):
      sums = core.line_sums(cycle)
      if noise:
        sigma = noise * (np.sqrt(2.0) if core.pairs else 1.0)
        sums = sums + sigma * core._read_noise(cycle, list(sums.shape[-3:]), start, j + 1)
      total = total + 2.0 ** (j * hw.dac_bits) * analog.quantize(
          sums, core.adc_low[j], core.adc_high[j], hw.adc_bits)
    want = core.combine(total, read).numpy()
    got = core.forward(rows, start).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
