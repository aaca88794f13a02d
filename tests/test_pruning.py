"""prune_crossbar's shared behaviour, run for both Keras flavours (tf_keras and Keras 3):
wrapping, training on real data, budgets and structured zeros, regrowth, seeds, saving,
callbacks. Flavour-specific tests: test_pruning_tf_keras.py (TFMOT), test_pruning_keras3.py.

TFMOT is imported on the first tf_keras `prune_crossbar` call, not at collection, so other test
modules of the same process start without `TF_USE_LEGACY_KERAS`.
"""

import glob

import _pruning_models as pm
import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.schedules import CrossbarConstant, CrossbarPolynomialDecay
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning.api import (FLAVOURS, crossbar_pruning_scope, crossbar_wrappers,
                                    prune_crossbar, strip_crossbar_pruning)
from xbar_tfmot.pruning.callbacks import CrossbarPruningSummaries, UpdateCrossbarPruning

SPEC = pm.SPEC
X, Y = pm.digits()
BATCH = 64
STEPS_PER_EPOCH = -(-len(Y) // BATCH)  # 29


def schedule(end_step=100, frequency=10, final=0.7):
  return CrossbarPolynomialDecay(final_reduction=final, begin_step=0, end_step=end_step,
                                 frequency=frequency)


@pytest.fixture(params=FLAVOURS)
def flavour(request):
  return request.param


def wrappers(model):
  return crossbar_wrappers(model)


def cnn(flavour, seed=0):
  return pm.cnn(seed=seed, flavour=flavour)


def update(model):
  return UpdateCrossbarPruning(flavour=introspection.flavour(model))


def fit(model, epochs, callbacks=None, **kwargs):
  pm.compile_model(model)
  model.fit(X, Y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
            callbacks=[update(model)] if callbacks is None else callbacks, **kwargs)
  return model


# --- what gets wrapped ---------------------------------------------------------------------


def test_functional_model_wraps_mapped_layers_except_first_conv(flavour):
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, schedule=schedule(), seed=0)
  kinds = {l.name: type(l).__name__ for l in pruned.layers}
  assert kinds == {"image": "InputLayer", "conv1": "Conv2D", "crossbar_prune_conv2": "CrossbarPrune",
                   "pool": "MaxPooling2D", "flatten": "Flatten",
                   "crossbar_prune_fc1": "CrossbarPrune", "crossbar_prune_fc2": "CrossbarPrune"}
  assert [w.layer_index for w in wrappers(pruned)] == [1, 2, 3]
  assert [w.final_budget for w in wrappers(pruned)] == [
      crossbar_budget(16, 0.7), crossbar_budget(120, 0.7), crossbar_budget(4, 0.7)]


def test_sequential_nested_and_unmapped_layers(flavour):
  keras = pm.keras_module(flavour)
  inner = keras.Sequential([keras.layers.Conv2D(8, 3, padding="same", name="inner_conv"),
                            keras.layers.BatchNormalization(name="inner_bn")], name="block")
  model = keras.Sequential([
      keras.Input((8, 8, 4)),
      keras.layers.Conv2D(8, 3, padding="same", name="first"),
      keras.layers.DepthwiseConv2D(3, padding="same", name="dw"),
      inner,
      keras.layers.Flatten(),
      keras.layers.Dense(24, name="head"),
  ])
  pruned = prune_crossbar(model, spec=SPEC, schedule=CrossbarConstant(0.5), seed=0)
  names = [type(l).__name__ for l in pruned.layers]
  assert names == ["Conv2D", "DepthwiseConv2D", "Sequential", "Flatten", "CrossbarPrune"]
  block = pruned.layers[2]
  assert [type(l).__name__ for l in block.layers] == ["CrossbarPrune", "BatchNormalization"]
  assert [w.layer.name for w in wrappers(pruned)] == ["inner_conv", "head"]
  out = pruned(np.ones((2, 8, 8, 4), "float32"))
  assert out.shape == (2, 24)


def test_single_unbuilt_layer_and_list(flavour):
  keras = pm.keras_module(flavour)
  layer = prune_crossbar(keras.layers.Dense(16), spec=SPEC, schedule=CrossbarConstant(0.5), seed=0)
  model = keras.Sequential([keras.Input((72,)), layer, keras.layers.Dense(3)])
  assert type(model.layers[0]).__name__ == "CrossbarPrune"
  assert wrappers(model)[0].final_budget == crossbar_budget(4, 0.5)
  items = [keras.layers.Dense(8), keras.layers.Dropout(0.1), keras.layers.Conv1D(8, 3)]
  out = prune_crossbar(items, spec=SPEC, schedule=CrossbarConstant(0.5), seed=0)
  assert [type(l).__name__ for l in out] == ["CrossbarPrune", "Dropout", "CrossbarPrune"]
  assert out[1] is items[1]


def subclassed(flavour):
  keras = pm.keras_module(flavour)

  class Subclassed(keras.Model):

    def __init__(self):
      super().__init__()
      self.fc = keras.layers.Dense(4)

    def call(self, x):
      return self.fc(x)

  return Subclassed()


def test_subclassed_models_are_rejected(flavour):
  keras = pm.keras_module(flavour)
  with pytest.raises(ValueError, match="[Ss]ubclassed models"):
    prune_crossbar(subclassed(flavour), spec=SPEC)
  inner = subclassed(flavour)
  inp = keras.Input((4,))
  outer = keras.Model(inp, inner(keras.layers.Dense(72)(inp)))
  with pytest.raises(ValueError, match="[Ss]ubclassed models"):
    prune_crossbar(outer, spec=SPEC)


@pytest.mark.parametrize("kwargs,field", [
    ({"granularity": "block"}, "granularity"),
    ({"projection": "greedy"}, "projection"),
    ({"regrowth": "regrow"}, "regrowth"),
    ({"schedule": "poly"}, "schedule"),
    ({"spec": {"rows": 3}}, "spec"),
    ({"policy": {"mode": "global"}}, "policy"),
    ({"seed": 1.5}, "seed"),
    ({"temperature": -1.0}, "initial_temperature"),
])
def test_bad_arguments(flavour, kwargs, field):
  args = {"spec": SPEC, "schedule": schedule()} | kwargs
  with pytest.raises(ValueError, match=field):
    prune_crossbar(cnn(flavour), **args)


@pytest.mark.parametrize("make,field", [
    (lambda: CrossbarPolynomialDecay(1.0, 0, 10), "final_reduction"),
    (lambda: CrossbarPolynomialDecay(0.5, 10, 5), "end_step"),
    (lambda: CrossbarConstant(-0.5), "reduction"),
])
def test_bad_schedules(flavour, make, field):
  with pytest.raises(ValueError, match=field):
    prune_crossbar(cnn(flavour), spec=SPEC, schedule=make())


def test_model_without_mappable_layer(flavour):
  keras = pm.keras_module(flavour)
  model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.DepthwiseConv2D(3, name="dw"),
                            keras.layers.Flatten()])
  with pytest.raises(ValueError, match=r"no mappable layer .*Not mapped: dw: depthwise "
                     r"convolution \(one filter per channel\) is not mapped"):
    prune_crossbar(model, spec=SPEC)
  with pytest.raises(ValueError, match="no layer would lose a crossbar"):
    prune_crossbar(cnn(flavour), spec="512x512", schedule=CrossbarConstant(0.3))


def test_not_a_keras_object():
  with pytest.raises(ValueError, match="can only prune"):
    prune_crossbar("model.keras", spec=SPEC)
  with pytest.raises(ValueError, match="empty"):
    prune_crossbar([], spec=SPEC)


# --- training on digits --------------------------------------------------------------------


@pytest.mark.parametrize("granularity,regrowth,projection", [
    ("crossbar", "reset", "rpp"),
    ("column", "reset", "rpp"),
    ("crossbar", "straight_through", "rpp"),
    ("column", "straight_through", "topk"),
])
def test_end_to_end_meets_budget_with_structured_zeros(flavour, granularity, regrowth, projection):
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, granularity=granularity, regrowth=regrowth,
                          projection=projection, schedule=schedule(end_step=100), seed=3)
  fit(pruned, epochs=6)
  final = strip_crossbar_pruning(pruned)
  counts = pm.mapped_counts(final)
  field = "blocks" if granularity == "crossbar" else "packed"
  assert counts["conv1"].nonzero_weights == 144  # left dense
  for w in wrappers(pruned):
    got = getattr(counts[w.layer.name], field)
    assert got == w.final_budget == crossbar_budget(w.geometry.dense_crossbars, 0.7), w.layer.name
    assert pm.structured(w.geometry, w.mask.numpy(), granularity)
    kernel = dict((l.name, l) for l in final.layers)[w.layer.name].kernel.numpy()
    np.testing.assert_array_equal(kernel, w.masked_kernel())
    assert w.current_budget() == w.final_budget  # the budget of the last mask update
  total = sum(getattr(c, field) for c in counts.values())
  dense = sum(c.dense for c in counts.values())
  assert total <= 0.45 * dense
  acc = pm.accuracy(final, X, Y)
  assert acc > 0.6, acc  # chance is 0.1
  np.testing.assert_allclose(final.predict(X[:64], verbose=0), pruned.predict(X[:64], verbose=0),
                             rtol=1e-5, atol=1e-5)


def test_masks_change_only_at_update_steps_and_freeze_after_end_step(flavour):
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, granularity="column", schedule=schedule(
      end_step=45, frequency=10), regrowth="straight_through", seed=5)
  fc1 = wrappers(pruned)[1]
  history = []
  keras = pm.keras_module(flavour)
  record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: history.append(
      (int(fc1.pruning_step.numpy()), fc1.mask.numpy().copy(), fc1.layer.kernel.numpy().copy())))
  fit(pruned, epochs=3, callbacks=[update(pruned), record])
  steps = [s for s, _, _ in history]
  assert steps == list(range(1, len(history) + 1))
  changed = [s for (s, m, _), (_, prev, _) in zip(history[1:], history) if not np.array_equal(m, prev)]
  assert changed and set(changed) <= {10, 20, 30, 40, 45} and 45 in changed
  budgets = [int(np.asarray(fc1.geometry.counts(m).packed)) for _, m, _ in history]
  # Every step holds the budget of the last update, dense - round((dense - N) * s(t) / s_final)
  # with s(t) / s_final = 1 - (1 - t / 45) ** 3, computed here independently: 76, 50, 39, 36, 36.
  final = crossbar_budget(120, 0.7)

  def budget_of_update(t):
    return 120 - round((120 - final) * (1.0 - (1.0 - min(t, 45) / 45) ** 3))
  assert [budget_of_update(t) for t in (10, 20, 30, 40, 45)] == [76, 50, 39, 36, 36]
  expected = [120 if s < 10 else budget_of_update(45 if s >= 45 else s // 10 * 10)
              for s in steps]
  assert budgets == expected
  # Straight-through: before end_step pruned weights live on and move; from it, they are zero.
  _, mask30, kernel30 = history[34]
  _, _, kernel31 = history[35]
  pruned30 = mask30 == 0
  assert np.any(kernel30[pruned30] != 0)
  assert np.any(kernel30[pruned30] != kernel31[pruned30])
  # Each step from end_step starts by zeroing them; Adam's momentum then moves them at most
  # about one learning rate (3e-3) before the next step zeroes them again.
  for _, m, k in history[44:]:
    assert np.abs(k[m == 0]).max() < 4e-3
    np.testing.assert_array_equal(m, history[-1][1])
  assert np.all(fc1.layer.kernel.numpy()[history[-1][1] == 0] == 0)  # re-masked at epoch end


def test_reset_zeroes_pruned_weights_every_step(flavour):
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, schedule=schedule(end_step=60, frequency=10),
                          seed=5)
  fit(pruned, epochs=1)
  for w in wrappers(pruned):
    assert np.all(w.layer.kernel.numpy()[w.mask.numpy() == 0] == 0)
    assert np.any(w.mask.numpy() == 0)


def test_straight_through_strip_before_end_step_is_exact_and_leaves_pruned_model_alone(flavour):
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, schedule=schedule(end_step=1000), seed=2,
                          regrowth="straight_through")
  fit(pruned, epochs=1)
  fc1 = wrappers(pruned)[1]
  before = fc1.layer.kernel.numpy().copy()
  assert np.any(before[fc1.mask.numpy() == 0] != 0)
  final = strip_crossbar_pruning(pruned)
  np.testing.assert_array_equal(fc1.layer.kernel.numpy(), before)
  np.testing.assert_array_equal(final.get_layer("fc1").kernel.numpy(), fc1.masked_kernel())
  np.testing.assert_allclose(final.predict(X[:64], verbose=0), pruned.predict(X[:64], verbose=0),
                             rtol=1e-5, atol=1e-5)


def masks_after(flavour, seed, step):
  """The masks of each wrapper's own mask update at `step`, called directly (no training)."""
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, granularity="crossbar", seed=seed,
                          schedule=schedule(end_step=1000, frequency=10))
  masks = []
  for w in wrappers(pruned):
    if flavour == "tf_keras":  # TFMOT's hook, which reads the step from pruning_step
      w.pruning_step.assign(step)
      masks.append(w.pruning_obj.update_mask(w.layer.kernel)[1].numpy())
    else:  # the step's bookkeeping: step + 1, then the update that step is due
      w.pruning_step.assign(step - 1)
      w._update()
      masks.append(w.mask.numpy())
    assert masks[-1].min() == 0  # the budget is below dense: the draw matters
  return masks


def test_same_seed_same_masks_other_seed_other_masks(flavour):
  first, again, other = masks_after(flavour, 7, 300), masks_after(flavour, 7, 300), masks_after(flavour, 8, 300)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, c) for a, c in zip(first, other))


def test_global_policy_meets_model_wide_target(flavour):
  policy = CrossbarPolicy(mode="global")
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, schedule=schedule(end_step=60), policy=policy,
                          seed=1)
  fit(pruned, epochs=3)
  counts = pm.mapped_counts(strip_crossbar_pruning(pruned))
  total = sum(c.blocks for c in counts.values())
  assert total == crossbar_budget(sum(c.dense for c in counts.values()), 0.7)
  assert counts["conv1"].blocks == counts["conv1"].dense


def test_energy_score_is_a_deprecated_alias_of_magnitude(flavour):
  """`score="energy"`, the former name of `"magnitude"`, warns naming the new value, is the same
  policy (a saved config holding it loads), and gives the same masks, also from wrappers whose
  stored `allocation` still says "energy" (a model saved before the rename)."""
  with pytest.warns(DeprecationWarning, match="score='magnitude'"):
    old = CrossbarPolicy(mode="global_score", score="energy")
  new = CrossbarPolicy(mode="global_score", score="magnitude")
  assert old == new and old.get_config() == new.get_config()
  assert new.get_config()["score"] == "magnitude" and CrossbarPolicy().score == "magnitude"
  with pytest.warns(DeprecationWarning, match="score='magnitude'"):
    assert CrossbarPolicy.from_config({**new.get_config(), "score": "energy"}) == new
  masks = []
  for policy, stored in ((old, "energy"), (new, "magnitude")):
    pruned = prune_crossbar(cnn(flavour), spec=SPEC, schedule=schedule(end_step=40),
                            policy=policy, seed=3)
    for w in wrappers(pruned):
      w.allocation = {**w.allocation, "score": stored}
    fit(pruned, epochs=1, callbacks=[UpdateCrossbarPruning(flavour=flavour)])
    masks.append([np.asarray(w.mask).copy() for w in wrappers(pruned)])
  assert any(not m.all() for m in masks[1])  # the budgets did cut
  for a, b in zip(*masks):
    np.testing.assert_array_equal(a, b)


def test_update_callback_is_required(flavour):
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, schedule=schedule(end_step=40), seed=1)
  with pytest.raises(tf.errors.InvalidArgumentError, match="UpdatePruningStep"):
    fit(pruned, epochs=1, callbacks=[])
  with pytest.raises(ValueError, match="no crossbar-pruned layer"):
    fit(cnn(flavour), epochs=1, callbacks=[UpdateCrossbarPruning(flavour=flavour)])


# --- saving and resuming -------------------------------------------------------------------


@pytest.mark.parametrize("flavour,fmt", [
    ("tf_keras", ".keras"), ("tf_keras", ".h5"), ("tf_keras", "savedmodel"), ("keras3", ".keras")])
def test_save_reload_and_resume(flavour, tmp_path, fmt):
  sched = schedule(end_step=80, frequency=10)
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, granularity="column", schedule=sched, seed=4,
                          regrowth="straight_through")
  fit(pruned, epochs=1)  # 29 steps: mid-schedule
  path = str(tmp_path / ("model" + (fmt if fmt != "savedmodel" else "")))
  pruned.save(path, **({"save_format": "tf"} if fmt == "savedmodel" else {}))
  if flavour == "keras3":  # registered serialisables: no scope needed
    import keras
    loaded = keras.saving.load_model(path)
  else:
    import tf_keras
    with crossbar_pruning_scope():
      loaded = tf_keras.models.load_model(path)
  saved, restored = wrappers(pruned), wrappers(loaded)
  assert [w.name for w in restored] == [w.name for w in saved]
  for a, b in zip(saved, restored):
    np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
    np.testing.assert_array_equal(a.layer.kernel.numpy(), b.layer.kernel.numpy())
    assert int(b.pruning_step.numpy()) == STEPS_PER_EPOCH
    assert (b.regrowth, b.granularity, b.seed, b.final_budget, b.layer_index) == (
        a.regrowth, a.granularity, a.seed, a.final_budget, a.layer_index)
    assert b.pruning_schedule == sched
  if loaded.optimizer is None or fmt == ".h5":
    pm.compile_model(loaded)
  loaded.fit(X, Y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
             callbacks=[update(loaded)])  # 58 more steps: past end_step 80
  counts = pm.mapped_counts(strip_crossbar_pruning(loaded))
  for w in wrappers(loaded):
    assert int(w.pruning_step.numpy()) == 3 * STEPS_PER_EPOCH
    assert counts[w.layer.name].packed == w.final_budget


# --- TensorBoard summaries -----------------------------------------------------------------


def test_summaries_write_counts_and_kept_energy(flavour, tmp_path):
  pruned = prune_crossbar(cnn(flavour), spec=SPEC, schedule=schedule(end_step=40), seed=1,
                          regrowth="straight_through")
  summaries = CrossbarPruningSummaries(str(tmp_path))
  assert isinstance(summaries, CrossbarPruningSummaries)
  fit(pruned, epochs=2, callbacks=[update(pruned), summaries])
  values = {}
  for path in glob.glob(str(tmp_path / "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        values[(v.tag, event.step)] = float(tf.make_ndarray(v.tensor))
  last = 2 * STEPS_PER_EPOCH
  counts = pm.mapped_counts(strip_crossbar_pruning(pruned))
  assert values[("crossbars/total", last)] == sum(c.blocks for c in counts.values())
  assert values[("dense_crossbars/total", last)] == sum(c.dense for c in counts.values())
  for w in wrappers(pruned):
    name = w.layer.name
    assert values[("crossbars/" + name, last)] == counts[name].blocks == w.final_budget
    assert values[("crossbar_budget/" + name, last)] == w.final_budget
    assert values[("kept_energy/" + name, last)] == pytest.approx(1.0)  # zeroed after end_step
  first = STEPS_PER_EPOCH  # mid-schedule: straight-through weights still carry energy
  assert values[("kept_energy/fc1", first)] < 1.0
  assert values[("crossbars/fc1", first)] > values[("crossbars/fc1", last)]


# --- files saved by earlier releases, and callbacks that follow the model ------------------


def test_a_model_saved_before_the_layout_move_loads(flavour):
  """tests/fixtures holds a pruned model per flavour saved by release 21b80ec (flat modules)."""
  import pathlib
  fixtures = pathlib.Path(__file__).with_name("fixtures")
  keras = introspection.keras_module(flavour)
  with crossbar_pruning_scope(flavour):
    model = keras.models.load_model(fixtures / f"pruned_{flavour}.keras")
  saved = np.load(fixtures / f"pruned_{flavour}_io.npz")
  np.testing.assert_allclose(model.predict(saved["x"], verbose=0), saved["y"], rtol=1e-5,
                             atol=1e-6)
  assert [(w.layer.name, w.current_budget()) for w in wrappers(model)] == [("conv2", 2),
                                                                           ("fc", 8)]
  assert all(type(w).__module__ == f"xbar_tfmot.pruning.{flavour}" for w in wrappers(model))


def test_callbacks_take_the_flavour_of_the_fitted_model():
  """One callback object per kind serves both flavours, whatever was built last."""
  callback = UpdateCrossbarPruning()
  summaries = CrossbarPruningSummaries(log_dir="/tmp/unused-summaries")
  for flavour in ("tf_keras", "keras3", "tf_keras"):
    model = prune_crossbar(cnn(flavour), spec=SPEC, schedule=schedule(end_step=4, frequency=2),
                           seed=1)
    prune_crossbar(cnn("keras3" if flavour == "tf_keras" else "tf_keras"), spec=SPEC, seed=1)
    callback.set_model(model)
    summaries.set_model(model)
    assert introspection.flavour(callback.implementation) == flavour
    assert introspection.flavour(summaries.implementation) == flavour
  assert isinstance(callback, UpdateCrossbarPruning)
  assert not isinstance(callback, CrossbarPruningSummaries)
  with pytest.raises(ValueError, match="update_freq=0"):
    CrossbarPruningSummaries(log_dir="/tmp/x", update_freq=0)


def test_masks_reach_the_named_kernels_wrapped_or_not(flavour):
  from xbar_tfmot.pruning.callbacks import fixed_masks
  from xbar_tfmot.pruning.one_shot import apply_masks
  pruned = prune_crossbar(pm.cnn(flavour=flavour), spec=SPEC, schedule=schedule(), seed=0)
  kernel = introspection.mapped_kernel(introspection.unwrap(wrappers(pruned)[0]))
  before = np.asarray(kernel).copy()
  mask = (np.random.default_rng(0).random(before.shape) < 0.5).astype(before.dtype)
  apply_masks(pruned, {"conv2": mask})
  np.testing.assert_array_equal(np.asarray(kernel), before * mask)
  for owner, call in (("apply_masks", apply_masks), ("fixed_masks", fixed_masks)):
    for name in ("conv9", "pool"):  # no such layer; not a mapped one
      with pytest.raises(ValueError, match=f"{owner}: no mapped layer '{name}'.*valid: conv1, "
                                           f"conv2, fc1, fc2"):
        call(pruned, {name: mask})
