"""Per-layer noise sensitivity (`pruning/robustness.py`) and `sensitivity_curves(perturb=...)`:
the chip perturbation has the chip's weight-noise statistics computed by hand, a layer planted
to be harmless under noise measures exactly the clean loss while a live one loses, and every
point of perturbed curves is the mean loss over the perturbed kernels of the cut layer."""

import _pruning_models as pm
import numpy as np
import pytest

import xbar_tfmot as xt
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.projection import crossbar_budget, project
from xbar_tfmot.models.introspection import keras_module
from xbar_tfmot.pruning import robustness

SPEC = xt.CrossbarSpec(rows=36, cols=8, weight_bits=8, cell_bits=2, differential=True)
CHIP = xt.HardwareSpec(on_off_ratio=10.0, variation=0.02)  # g_min = 0.1
X, Y = pm.digits(320)


def _mean_loss(model, x, y) -> float:
  z = np.asarray(model(x, training=False), np.float64)
  z = z - z.max(1, keepdims=True)
  return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def test_chip_perturbation_has_the_chips_noise_by_hand():
  """8-bit weights in four 2-bit cells of a differential pair, g_min = 0.1, variation s: a
  weight's noise is s * sqrt(sum of the 8 cells' shift-add weights squared) / (1 - g_min),
  times max|W|; with no variation only 8-bit rounding remains. Chips differ, a seed repeats,
  and a masked weight stays zero."""
  rng = np.random.default_rng(0)
  kernel = rng.uniform(-2.0, 2.0, (64, 64)).astype("float32")
  kernel[0, 0] = 2.5  # max |W| = g_max
  mask = np.ones_like(kernel)
  mask[:, :8] = 0.0
  clean = robustness.chip_perturbation(CHIP.replace(variation=0.0), SPEC, [0])("fc", kernel,
                                                                               mask)[0]
  step = 2.5 / 255  # one level of an 8-bit weight
  np.testing.assert_allclose(clean, np.round(kernel / step) * step * mask, atol=1e-5)
  chips = robustness.chip_perturbation(CHIP, SPEC, [0, 1, 0])("fc", kernel, mask)
  slices = 4.0 ** np.arange(4) * 3 / 255
  expected = 0.02 * np.sqrt(2 * np.sum(slices ** 2)) / 0.9 * 2.5
  noise = (chips[0] - clean)[:, 8:]
  assert np.std(noise) == pytest.approx(expected, rel=0.04)
  assert abs(np.mean(noise)) < 0.05 * expected  # zero weights too: the pair's clip bias cancels
  assert np.all(chips[0][:, :8] == 0)
  np.testing.assert_array_equal(chips[0], chips[2])
  assert np.abs(chips[0] - chips[1]).max() > expected
  other = robustness.chip_perturbation(CHIP, SPEC, [0])("fc2", kernel, mask)[0]
  assert np.abs(other - chips[0]).max() > expected  # another layer, another draw
  names = ["fc", "fc2", "conv1", "conv2", "dense"]
  assert len({tuple(robustness.chip_seed(0, n).numpy()) for n in names}) == len(names)


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_planted_harmless_layer_keeps_the_clean_loss_and_a_live_one_loses(flavour):
  """What follows branch_b is zeroed, so its programmed kernel cannot change the output: its
  loss under noise is the clean loss exactly, for every chip. branch_a, read by the classifier,
  loses on every chip at 20% variation; each value is the model evaluated with that layer's
  kernel replaced by the chip's kernel (recomputed here; branch_a's pruned, zero columns are
  not on the chip and stay zero), and the kernels are restored."""
  model = pm.compile_model(pm.two_branch(flavour))
  model.fit(X, Y, batch_size=32, epochs=3, verbose=0)
  fc = model.get_layer("fc")
  kernel = np.asarray(fc.kernel).reshape(4, 4, 32, 10)
  kernel[:, :, 16:, :] = 0.0
  fc.kernel.assign(kernel.reshape(512, 10))
  a_kernel = np.asarray(model.get_layer("branch_a").kernel).copy()
  a_kernel[..., :4] = 0.0  # branch_a pruned like a stripped model: 4 output columns gone
  model.get_layer("branch_a").kernel.assign(a_kernel)
  before = [np.asarray(w).copy() for w in model.weights]
  hw = CHIP.replace(variation=0.2)
  x, y = X[:160], Y[:160]
  result = robustness.layer_noise_sensitivity(model, hw, SPEC, (x, y), [3, 4],
                                              layers=["branch_a", "branch_b"], batch_size=64)
  for w, saved in zip(model.weights, before):
    np.testing.assert_array_equal(np.asarray(w), saved)
  clean = _mean_loss(model, x, y)
  assert result["(none)"]["loss"] == pytest.approx([clean, clean], rel=1e-5)
  assert result["branch_b"]["loss"] == pytest.approx([clean, clean], rel=1e-5)
  assert min(result["branch_a"]["loss"]) > clean + 0.01
  layer = model.get_layer("branch_a")
  saved = np.asarray(layer.kernel).copy()
  kept = (saved != 0).astype(saved.dtype)  # pruned weights are not on the chip
  chips = robustness.chip_perturbation(hw, SPEC, [3, 4])("branch_a", saved, kept)
  for chip, loss, acc in zip(chips, result["branch_a"]["loss"], result["branch_a"]["accuracy"]):
    assert np.all(chip[..., :4] == 0)
    layer.kernel.assign(chip)
    assert loss == pytest.approx(_mean_loss(model, x, y), rel=1e-5)
    assert acc == pytest.approx(pm.accuracy(model, x, y))
  layer.kernel.assign(saved)


def test_perturbed_curves_are_the_mean_loss_over_the_perturbed_cut_kernels():
  """With `perturb`, every point (the dense one too, with an all-ones mask) is the mean of the
  losses of the kernels `perturb` returns for the one-shot-cut kernel and its projection mask;
  there is no unperturbed evaluation."""
  model = pm.compile_model(pm.cnn(flavour="keras3"))
  x, y = X[:160], Y[:160]
  seen = []

  def perturb(name, cut, mask):
    seen.append((name, cut.copy(), mask.copy()))
    return [cut, 0.5 * cut]

  result = xt.sensitivity_curves(model, pm.SPEC, (x, y), "column", reductions=(0.5,),
                                 batch_size=64, layers=["conv2", "fc1"], perturb=perturb)
  assert list(result["curves"]) == ["conv2", "fc1"]
  assert result["evaluations"] == 2 * len(seen)
  calls = iter(seen)
  for name, points in result["curves"].items():
    layer = model.get_layer(name)
    saved = np.asarray(layer.kernel).copy()
    g = LayerGeometry(name, type(layer).__name__, tuple(saved.shape), pm.SPEC)
    assert [b for b, _ in points] == sorted({1, crossbar_budget(g.dense_crossbars, 0.5),
                                             g.dense_crossbars})
    for budget, loss in points:
      called, cut, mask = next(calls)
      expected_mask = (np.ones_like(saved) if budget == g.dense_crossbars else
                       np.asarray(project(g, saved, budget, "column"), saved.dtype))
      assert called == name
      np.testing.assert_array_equal(mask, expected_mask)
      np.testing.assert_array_equal(cut, saved * expected_mask)
      losses = []
      for k in (cut, 0.5 * cut):
        layer.kernel.assign(k)
        losses.append(_mean_loss(model, x, y))
      layer.kernel.assign(saved)
      assert loss == pytest.approx(np.mean(losses), rel=1e-5), (name, budget)
    # the layer is restored before the next one is measured
    np.testing.assert_array_equal(np.asarray(layer.kernel), saved)
