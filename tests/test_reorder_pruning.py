"""Reorder, then prune (issue 4): `reorder_model(materialize=True)` is the explicit step before
`prune_crossbar`, so the masks are computed on the reordered copy's own channel groups.

One module-scoped pipeline per Keras flavour (tf_keras, Keras 3) on a small CNN trained briefly
on sklearn digits: train -> reorder (materialised copy) -> prune_crossbar on the copy -> fit ->
strip -> map -> crossbar-explicit model.
"""

import _pruning_models as pm
import numpy as np
import pytest

from xbar_tfmot.app.datasets import load_digits
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.schedules import CrossbarPolynomialDecay
from xbar_tfmot.models import crossbar_model as explicit
from xbar_tfmot.models import introspection
from xbar_tfmot.models.model_mapping import build_mapping, validate_mapping
from xbar_tfmot.models.reorder import reorder_model
from xbar_tfmot.pruning.api import prune_crossbar, strip_crossbar_pruning
from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning

SPEC = pm.SPEC  # 36x8: Kin 4 channels of 3x3, Kout 8
REDUCTION = 0.7
PRUNED = ["conv2", "fc1", "fc2"]  # the default policy leaves the first conv (conv1) dense
(X, Y), (X_TEST, Y_TEST) = load_digits()
BATCH = 64
STEPS = -(-len(Y) // BATCH)  # 22 per epoch


def max_rel_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.fixture(scope="module", params=("tf_keras", "keras3"))
def pipeline(request):
  flavour = request.param
  model = pm.compile_model(pm.cnn(seed=0, flavour=flavour))
  model.fit(X, Y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0)
  dense_acc = pm.accuracy(model, X_TEST, Y_TEST)
  reference = {n: np.array(model.get_layer(n).kernel) for n in ["conv1", *PRUNED]}
  copy, result = reorder_model(model, SPEC, {n: REDUCTION for n in PRUNED}, "column",
                               materialize=True, seed=0)
  before = np.asarray(copy(X_TEST))
  pruned = prune_crossbar(
      copy, spec=SPEC, granularity="column", projection="rpp", seed=0,
      schedule=CrossbarPolynomialDecay(final_reduction=REDUCTION, begin_step=0,
                                       end_step=2 * STEPS, frequency=5))
  pm.compile_model(pruned, lr=1e-3)
  pruned.fit(X, Y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
             callbacks=[UpdateCrossbarPruning(flavour=flavour)])
  stripped = strip_crossbar_pruning(pruned)
  return dict(model=model, copy=copy, result=result, before=before, stripped=stripped,
              dense_acc=dense_acc, reference=reference)


def test_reordered_copy_computes_the_same_function_before_pruning(pipeline):
  model, result = pipeline["model"], pipeline["result"]
  assert pipeline["dense_acc"] > 0.85  # trained, so the energies are not random
  assert max_rel_error(pipeline["before"], model(X_TEST)) < 1e-5
  # the original is untouched by reorder and by pruning the copy
  for name, kernel in pipeline["reference"].items():
    np.testing.assert_array_equal(model.get_layer(name).kernel.numpy(), kernel)
  assert result.materialized and result.mapping_permutations == {}
  assert sorted(result.kept_after) == PRUNED
  # reorder did something, and never lost kept energy
  assert not np.array_equal(result.permutations["conv2"], np.arange(16))
  for name in PRUNED:
    assert result.kept_after[name] >= result.kept_before[name] - 1e-12
  assert sum(result.kept_after.values()) > sum(result.kept_before.values()) + 1e-3
  assert result.skipped == {}  # conv1 (input from the model input) is not asked for


def test_pruned_reordered_copy_meets_the_budget_exactly(pipeline):
  stripped = pipeline["stripped"]
  assert [type(l).__name__ for l in stripped.layers if "crossbar_prune" in l.name] == []
  for name in ["conv1", *PRUNED]:
    layer = stripped.get_layer(name)
    geometry = introspection.geometry_of(layer, SPEC)
    counts = geometry.counts(layer.kernel.numpy())
    if name == "conv1":
      assert counts.packed == counts.dense  # left dense by the policy
    else:
      assert counts.packed == crossbar_budget(counts.dense, REDUCTION), name
      assert counts.packed < counts.dense
      # masks are whole column segments of the copy's (reordered) groups
      mask = (layer.kernel.numpy() != 0).astype("float32")
      assert pm.structured(geometry, mask, "column"), name
  assert pm.accuracy(stripped, X_TEST, Y_TEST) > 0.7


def test_mapping_of_the_stripped_model_validates_and_reproduces_it(pipeline):
  stripped = pipeline["stripped"]
  mapping = build_mapping(stripped, SPEC, "column")
  validate_mapping(mapping, stripped)
  budgets = {}
  for name in PRUNED:
    geometry = introspection.geometry_of(stripped.get_layer(name), SPEC)
    budgets[name] = crossbar_budget(geometry.dense_crossbars, REDUCTION)
    assert mapping.layer(name)["counts"]["crossbars"] == budgets[name]
    # the identity permutation: the grouping is the reordered copy's own channel order
    assert mapping.layer(name)["input_permutation"] == list(range(geometry.cin))
  conv1 = introspection.geometry_of(stripped.get_layer("conv1"), SPEC).dense_crossbars
  assert mapping.totals["crossbars"] == sum(budgets.values()) + conv1
  crossbar = explicit.crossbar_model(stripped, mapping)
  x = X_TEST[:128]
  assert max_rel_error(crossbar(x), stripped(x)) < 1e-5
