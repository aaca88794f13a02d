"""prune_crossbar on tf_keras, what is TFMOT-specific: the pinned override point, schedules as
TFMOT schedules, TFMOT's own `UpdatePruningStep`, and the RPP mask update inside TFMOT's
`Pruning` object. The shared behaviour of both flavours is in test_pruning.py.
"""

import _pruning_models as pm
import numpy as np
import pytest
import tf_keras as keras

from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import project
from xbar_tfmot.core.schedules import (CrossbarConstant, CrossbarPolynomialDecay,
                                       CrossbarTemperatureDecay)
from xbar_tfmot.pruning.api import crossbar_wrappers, prune_crossbar, strip_crossbar_pruning
from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning

SPEC = pm.SPEC
X, Y = pm.digits()


def schedule(end_step=100, frequency=10, final=0.7):
  return CrossbarPolynomialDecay(final_reduction=final, begin_step=0, end_step=end_step,
                                 frequency=frequency)


def adapter():
  from xbar_tfmot.pruning import tf_keras as pruning_tf_keras
  return pruning_tf_keras


def test_wrapper_is_tfmot_wrapper_with_crossbar_pruning_object():
  tk = adapter()
  from tensorflow_model_optimization.python.core.sparsity.keras import pruning_impl, pruning_wrapper
  layer = tk.CrossbarPrune(keras.layers.Dense(16), spec=SPEC, final_budget=1)
  layer.build((None, 72))
  assert isinstance(layer, pruning_wrapper.PruneLowMagnitude)
  assert isinstance(layer.pruning_obj, tk.CrossbarPruning)
  assert isinstance(layer.pruning_obj, pruning_impl.Pruning)


def test_schedules_count_as_tfmot_pruning_schedules():
  adapter()
  from tensorflow_model_optimization.python.core.sparsity.keras.pruning_schedule import \
      PruningSchedule
  assert isinstance(schedule(), PruningSchedule)
  assert isinstance(CrossbarConstant(0.5), PruningSchedule)


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
def test_rpp_samples_by_seed_and_step_and_is_exact_at_temperature_zero(granularity):
  tk = adapter()
  layer = tk.CrossbarPrune(keras.layers.Dense(64), spec=SPEC, final_budget=20,
                           granularity=granularity, pruning_schedule=schedule(end_step=100),
                           temperature=CrossbarTemperatureDecay(5.0, 0, 100), seed=1, layer_index=2)
  layer.build((None, 512))
  obj, kernel = layer.pruning_obj, layer.layer.kernel

  def mask_at(step, seed=1, index=2):
    layer.pruning_step.assign(step)
    obj.seed, obj.layer_index = seed, index
    return obj._maybe_update_block_mask(kernel)[1].numpy()  # the hook TFMOT calls

  np.testing.assert_array_equal(mask_at(50), mask_at(50))
  assert not np.array_equal(mask_at(50), mask_at(50, seed=2))
  assert not np.array_equal(mask_at(50), mask_at(50, index=3))
  assert not np.array_equal(mask_at(50), mask_at(60))
  exact = project(layer.geometry, kernel, 20, granularity).numpy()
  np.testing.assert_array_equal(mask_at(100), exact)
  np.testing.assert_array_equal(mask_at(100, seed=9), exact)


def test_tfmot_update_pruning_step_works_unchanged():
  from tensorflow_model_optimization.python.core.sparsity.keras.pruning_callbacks import \
      UpdatePruningStep
  pruned = prune_crossbar(pm.cnn(), spec=SPEC, schedule=schedule(end_step=40), seed=1)
  pm.compile_model(pruned)
  pruned.fit(X, Y, batch_size=64, epochs=2, shuffle=False, verbose=0,
             callbacks=[UpdatePruningStep()])
  counts = pm.mapped_counts(strip_crossbar_pruning(pruned))
  for w in crossbar_wrappers(pruned):
    assert counts[w.layer.name].blocks == w.final_budget
  assert isinstance(UpdateCrossbarPruning(flavour="tf_keras"), UpdatePruningStep)
  callback = UpdateCrossbarPruning()  # flavour from the model it is set on
  callback.set_model(pruned)
  assert isinstance(callback.implementation, UpdatePruningStep)


@pytest.mark.parametrize("tfmot_callback", [True, False])
def test_a_shared_budget_fit_without_our_callback_fails_at_strip(tfmot_callback):
  from tensorflow_model_optimization.python.core.sparsity.keras.pruning_callbacks import \
      UpdatePruningStep
  pruned = prune_crossbar(pm.cnn(), spec=SPEC, schedule=schedule(end_step=6, frequency=3),
                          policy=CrossbarPolicy(mode="global_score"), seed=1)
  pm.compile_model(pruned)
  callback = UpdatePruningStep() if tfmot_callback else UpdateCrossbarPruning()
  pruned.fit(X[:256], Y[:256], batch_size=32, epochs=1, verbose=0, callbacks=[callback])
  if tfmot_callback:
    with pytest.raises(ValueError, match="conv2.*fit without xbar_tfmot.UpdateCrossbarPruning"):
      strip_crossbar_pruning(pruned)
  else:
    ws = crossbar_wrappers(pruned)
    assert sum(w.current_budget() for w in ws) == ws[0].allocation["total"]
    strip_crossbar_pruning(pruned)


def test_a_shared_budget_is_checked_from_the_end_step_itself():
  """Fit exactly to end_step with TFMOT's callback: the pool was never split, and strip says
  so at that step already (not only one step past it)."""
  from tensorflow_model_optimization.python.core.sparsity.keras.pruning_callbacks import \
      UpdatePruningStep
  pruned = prune_crossbar(pm.cnn(), spec=SPEC, schedule=schedule(end_step=8, frequency=4),
                          policy=CrossbarPolicy(mode="global_score"), seed=1)
  pm.compile_model(pruned)
  pruned.fit(X[:256], Y[:256], batch_size=32, epochs=1, verbose=0,
             callbacks=[UpdatePruningStep()])
  ws = crossbar_wrappers(pruned)
  assert int(np.asarray(ws[0].pruning_step)) == ws[0].pruning_schedule.end_step == 8
  with pytest.raises(ValueError, match="fit without xbar_tfmot.UpdateCrossbarPruning"):
    strip_crossbar_pruning(pruned)
