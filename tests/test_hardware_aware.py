"""Hardware-aware training (`xt.HardwareAware`, pruning/hardware_aware.py), both flavours: the
zero-noise forward is the plain one, the noise has the chip model's statistics relative to
g_max, pruned weights stay zero, quantisation's gradient is straight-through, strip is plain."""

import _pruning_models as pm
import numpy as np
import pytest
import tensorflow as tf

import xbar_tfmot as xt
from xbar_tfmot.core import analog
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning import hardware_aware as xhardware

FLAVOURS = ("tf_keras", "keras3")
SPEC = xt.CrossbarSpec(rows=16, cols=8, weight_bits=8, cell_bits=2, differential=True)


def _planted_dense(flavour: str, hw: xt.HardwareAware, reduction: float = 0.0, seed: int = 0):
  """A bias-free Dense(16 -> 16) with planted weights (max |w| = 2: g_max <-> 2), wrapped;
  fed the identity matrix in training mode, it outputs the kernel the forward computes with."""
  keras = introspection.keras_module(flavour)
  model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(16, use_bias=False)])
  rng = np.random.default_rng(seed)
  kernel = rng.uniform(0.5, 2.0, (16, 16)) * rng.choice([-1.0, 1.0], (16, 16))
  kernel[0, 0] = 2.0
  model.layers[-1].set_weights([kernel.astype("float32")])
  spec = xt.CrossbarSpec(rows=4, cols=8, weight_bits=8, cell_bits=2, differential=True)
  if reduction:
    pruned = xt.prune_crossbar(model, spec, schedule=xt.CrossbarConstant(reduction, frequency=1),
                               policy=xt.CrossbarPolicy(leave_dense=()), projection="topk",
                               seed=seed, hardware_aware=hw)
  else:
    pruned = xt.hardware_aware_model(model, spec, hw, seed=seed)
  wrapper = xt.crossbar_wrappers(pruned)[0]
  wrapper.pruning_step.assign(0)  # what UpdateCrossbarPruning does before the first step
  return pruned, wrapper, kernel


def _seen_kernels(pruned, steps: int) -> np.ndarray:
  eye = np.eye(16, dtype="float32")
  return np.stack([np.asarray(pruned(eye, training=True)) for _ in range(steps)])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_zero_noise_forward_equals_plain(flavour):
  x, _ = pm.digits(32)
  ideal = xt.HardwareSpec(variation=0.0, quantize_weights=False)
  outs = []
  for hw in (None, xt.HardwareAware(ideal)):
    pruned = xt.prune_crossbar(pm.cnn(flavour=flavour), spec=SPEC, seed=4, projection="topk",
                               policy=xt.CrossbarPolicy(leave_dense=()),
                               schedule=xt.CrossbarConstant(0.5, frequency=1),
                               hardware_aware=hw)
    for w in xt.crossbar_wrappers(pruned):
      w.pruning_step.assign(0)
    outs.append(np.asarray(pruned(x, training=True)))
    assert np.asarray(xt.crossbar_wrappers(pruned)[2].mask).mean() < 1
  assert np.abs(outs[0]).max() > 0
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_noise_has_the_chip_models_statistics_relative_to_g_max(flavour):
  """Absolute variation `v` of g_max on both cells of a pair, each cell's digit-slices shift-
  added: a weight's noise is `g_max-weight * v * noise_gain` (`analog.Encoded.noise_gain`,
  the simulator's), mean 0 (g_min = 0.1 keeps the clip at 0 ten deviations away)."""
  v = 0.01
  hw = xt.HardwareSpec(variation=v, quantize_weights=False, on_off_ratio=10.0)
  pruned, _, kernel = _planted_dense(flavour, xt.HardwareAware(hw, seed=3))
  seen = _seen_kernels(pruned, 8)
  noise = seen - kernel[None]
  encoded = analog.encode(kernel[None], hw, 8, 2, True)
  expected = 2.0 * v * encoded.noise_gain()  # max |w| = 2 is g_max
  assert expected == pytest.approx(2.0 * v * np.sqrt(2.0) / 0.9)
  assert noise.std() == pytest.approx(expected, rel=0.05)
  assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)
  assert not np.allclose(seen[0], seen[1])  # fresh noise every step
  again, _, _ = _planted_dense(flavour, xt.HardwareAware(hw, seed=3))
  np.testing.assert_array_equal(_seen_kernels(again, 2), seen[:2])  # seeded


def test_quantised_forward_is_the_simulators_and_its_gradient_straight_through():
  hw = xt.HardwareSpec(quantize_weights=True, on_off_ratio=10.0)
  rng = np.random.default_rng(0)
  kernel = tf.Variable(rng.normal(size=(16, 8)).astype("float32"))
  mask = (rng.uniform(size=(16, 8)) > 0.3).astype("float32")
  spec = xt.CrossbarSpec(rows=16, cols=8, weight_bits=3, cell_bits=1, differential=False)
  with tf.GradientTape() as tape:
    masked = kernel * mask
    seen = xhardware.chip_kernel(masked, mask, xt.HardwareAware(hw), spec, [0, 0])
    loss = tf.reduce_sum(seen * tf.constant(np.arange(128.0).reshape(16, 8), tf.float32))
  encoded = analog.encode((kernel.numpy() * mask)[None], hw, 3, 1, False)
  simulated = np.asarray(encoded.effective(encoded.conductances))[0] * mask
  np.testing.assert_allclose(seen.numpy(), simulated, atol=1e-5)
  assert not np.allclose(seen.numpy(), kernel.numpy() * mask, atol=1e-3)  # it is quantised
  grad = tape.gradient(loss, kernel).numpy()
  np.testing.assert_allclose(grad, np.arange(128.0).reshape(16, 8) * mask)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pruned_weights_stay_zero_under_noise_and_stuck_cells(flavour):
  hw = xt.HardwareSpec(variation=0.1, stuck_on_rate=0.3, on_off_ratio=10.0)
  pruned, wrapper, _ = _planted_dense(flavour, xt.HardwareAware(hw, stuck=True), reduction=0.5)
  seen = _seen_kernels(pruned, 3)
  mask = np.asarray(wrapper.mask)
  assert 0 < mask.mean() < 1
  assert np.all(seen[:, mask == 0] == 0)
  assert np.all(seen[:, mask == 1] != 0)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_training_with_noise_keeps_the_mask_and_strips_to_the_trained_kernel(flavour):
  x, y = pm.digits(128)
  hw = xt.HardwareAware(xt.HardwareSpec(variation=0.1, stuck_off_rate=0.05), stuck=True)
  pruned = xt.prune_crossbar(pm.cnn(flavour=flavour), spec=SPEC, seed=1, hardware_aware=hw,
                             schedule=xt.CrossbarConstant(0.5, frequency=2))
  pm.compile_model(pruned)
  history = pruned.fit(x, y, epochs=2, batch_size=32, verbose=0,
                       callbacks=[xt.UpdateCrossbarPruning()])
  assert np.isfinite(history.history["loss"]).all()
  wrappers = xt.crossbar_wrappers(pruned)
  assert [w.layer.name for w in wrappers] == ["conv1", "conv2", "fc1", "fc2"]  # all see the chip
  clone = type(wrappers[1]).from_config(wrappers[1].get_config())
  assert clone.hardware_aware == hw
  stripped = xt.strip_crossbar_pruning(pruned)
  assert not xt.crossbar_wrappers(stripped)
  for w in wrappers:
    trained = np.asarray(w._kernel()) * np.asarray(w.mask)
    plain = stripped.get_layer(w.layer.name).get_weights()[0]
    np.testing.assert_array_equal(plain, trained)
    if w.layer.name != "conv1":
      assert np.all(plain[np.asarray(w.mask) == 0] == 0) and np.asarray(w.mask).mean() < 1
  # Inference sees no noise: the pruned model predicts as its plain strip does, every time.
  first = pruned.predict(x[:32], verbose=0)
  np.testing.assert_allclose(first, pruned.predict(x[:32], verbose=0))
  np.testing.assert_allclose(stripped.predict(x[:32], verbose=0), first, rtol=1e-5, atol=1e-5)


def test_bad_arguments_name_the_field():
  with pytest.raises(xt.HardwareError, match="weight_scale"):
    xt.HardwareAware(xt.HardwareSpec(weight_scale="crossbar"))
  with pytest.raises(xt.HardwareError, match="stuck"):
    xt.HardwareAware(xt.HardwareSpec(), stuck=1)
  with pytest.raises(xt.PruningConfigError, match="hardware_aware"):
    xt.prune_crossbar(pm.cnn(), spec=SPEC, hardware_aware=xt.HardwareSpec())
  with pytest.raises(xt.HardwareError, match="weight_bits"):
    xt.prune_crossbar(pm.cnn(), spec=SPEC,
                      hardware_aware=xt.HardwareAware(xt.HardwareSpec(weight_bits=4)))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_fit_trains_on_the_chips_kernel(flavour):
  """In `model.fit` (a traced training step) the loss is the noisy forward's: at 300% of g_max
  it explodes, where the same fit without noise stays near ln(10)."""
  x, y = pm.digits(64)
  losses = []
  for v in (None, 3.0):
    hw = None if v is None else xt.HardwareAware(xt.HardwareSpec(variation=v))
    pruned = xt.prune_crossbar(pm.cnn(flavour=flavour), spec=SPEC, seed=0, hardware_aware=hw)
    pm.compile_model(pruned)
    history = pruned.fit(x, y, epochs=1, batch_size=32, verbose=0,
                         callbacks=[xt.UpdateCrossbarPruning()])
    losses.append(history.history["loss"][0])
  assert losses[0] < 5 and losses[1] > 10 * losses[0]
