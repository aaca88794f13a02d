"""One-shot pruning through the public API (`xt.one_shot_masks`, `xt.apply_masks`): each pruned
layer keeps exactly its budget of crossbars, the ones of largest energy by an independent count,
layers left dense get no mask, and the masks become exact zeros in the kernels."""

import numpy as np
import pytest

import xbar_tfmot as xt
from xbar_tfmot.models.introspection import FLAVOURS, keras_module

SPEC = xt.CrossbarSpec(rows=8, cols=4, weight_bits=8, cell_bits=8)  # 8 x 4 weights a crossbar


def mlp(flavour: str):
  """Dense 64 -> 40 -> 16 -> 10: `a` has 8 x 10 = 80 crossbars, `b` 5 x 4 = 20, `out` 2 x 3."""
  keras = keras_module(flavour)
  keras.utils.set_random_seed(1)
  return keras.Sequential([keras.Input((64,)), keras.layers.Dense(40, name="a"),
                           keras.layers.Dense(16, name="b"), keras.layers.Dense(10, name="out")])


def blocks(kernel: np.ndarray) -> dict[tuple[int, int], float]:
  """`{(row, column) of a crossbar: sum of its squared weights}`, by slicing (no library code)."""
  return {(i, j): float(np.sum(np.square(kernel[i:i + 8, j:j + 4])))
          for i in range(0, kernel.shape[0], 8) for j in range(0, kernel.shape[1], 4)}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("reduction", [0.3, 0.75])
def test_one_shot_keeps_the_budget_of_strongest_crossbars(flavour, reduction):
  model = mlp(flavour)
  trained = {l.name: np.asarray(l.kernel).copy() for l in model.layers}
  policy = xt.CrossbarPolicy(leave_dense=["out"])
  masks = xt.one_shot_masks(model, SPEC, policy, reduction)
  assert sorted(masks) == ["a", "b"]  # `out` is left dense: no mask
  xt.apply_masks(model, masks)
  for name, dense in (("a", 80), ("b", 20)):
    energy = blocks(trained[name])
    assert len(energy) == dense
    budget = max(1, round((1 - reduction) * dense))  # the documented budget, counted here
    strongest = set(sorted(energy, key=energy.get, reverse=True)[:budget])
    kernel = np.asarray(model.get_layer(name).kernel)
    kept = {ij for ij, e in blocks(kernel).items() if e > 0}
    assert kept == strongest, name
    np.testing.assert_array_equal(kernel, trained[name] * masks[name])  # zeros, the rest as was
    assert set(np.unique(masks[name])) <= {0.0, 1.0}
  np.testing.assert_array_equal(np.asarray(model.get_layer("out").kernel), trained["out"])


@pytest.mark.parametrize("reduction", [0.3, 0.5, 0.75])
def test_column_grain_packs_the_kept_columns_into_the_budget(reduction):
  """At column grain whole 8-row column segments are kept, and a row of crossbars holds the
  kept segments of its 8 rows packed 4 to a crossbar: the packed count is the budget."""
  model = mlp("tf_keras")
  masks = xt.one_shot_masks(model, SPEC, xt.CrossbarPolicy(leave_dense=["b", "out"]),
                            reduction, "column")
  segments = masks["a"].reshape(8, 8, 40)  # (row of crossbars, row in it, kernel column)
  assert np.all(segments.min(axis=1) == segments.max(axis=1))  # whole segments kept or cut
  kept = segments[:, 0, :].sum(axis=1).astype(int)  # kept segments per row of crossbars
  assert sum(-(-k // 4) for k in kept) == max(1, round((1 - reduction) * 80))


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_ramp_reductions_are_the_training_schedules_at_its_mask_updates(steps):
  """The cut's ramp is `CrossbarPolynomialDecay`'s reduction at each of its `steps` updates."""
  from xbar_tfmot.pruning.one_shot import ramp_reductions
  every = 7
  schedule = xt.CrossbarPolynomialDecay(final_reduction=0.8, begin_step=0,
                                        end_step=steps * every, frequency=every)
  want = [float(schedule(k * every)[1]) for k in range(1, steps + 1)]
  assert ramp_reductions(0.8, steps) == pytest.approx(want)
  with pytest.raises(ValueError, match="an integer >= 1"):
    ramp_reductions(0.8, 0)


def _gradual_by_hand(kernels: dict, reduction: float, steps: int) -> tuple[dict, dict]:
  """`global_score` magnitude at crossbar grain along the ramp, by slicing: at each update the
  pool (the model-wide budget `round((1 - s) * 106)` less `out`'s 6) goes one unit to each of
  `a` and `b`, then to the blocks of largest energy over their layer's current total."""
  kernels = {n: k.copy() for n, k in kernels.items()}
  for k in range(1, steps + 1):
    s = reduction * (1 - (1 - k / steps) ** 3)
    pool = max(1, round((1 - s) * 106)) - 6
    energy = {n: blocks(kernels[n]) for n in kernels}
    ranked = {n: sorted(e, key=e.get, reverse=True) for n, e in energy.items()}
    budget = {n: 1 for n in kernels}
    rest = sorted(((energy[n][ij] / sum(energy[n].values()), i, j, n)
                   for i, n in enumerate(kernels) for j, ij in enumerate(ranked[n][1:])),
                  key=lambda t: (-t[0], t[1], t[2]))
    for _, _, _, n in rest[:pool - len(kernels)]:
      budget[n] += 1
    for n, kernel in kernels.items():
      for (i, j) in ranked[n][budget[n]:]:
        kernel[i:i + 8, j:j + 4] = 0.0
  return budget, kernels


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_gradual_cut_re_splits_the_pool_on_the_kernels_each_update_left(steps):
  """`gradual_cut` equals the ramp computed here by slicing, and it is not the cut at once
  (the per-layer normalisation favours the small layer `b` at once: the ramp evens it out)."""
  model = mlp("tf_keras")
  dense = {n: np.asarray(model.get_layer(n).kernel).copy() for n in ("a", "b")}
  policy = xt.CrossbarPolicy(leave_dense=["out"], mode="global_score")
  budgets, masks = xt.gradual_cut(model, SPEC, policy, 0.75, "crossbar", steps=steps)
  want, kernels = _gradual_by_hand(dense, 0.75, steps)
  assert {n: budgets[n] for n in ("a", "b")} == want and budgets["out"] is None
  for n in ("a", "b"):
    np.testing.assert_array_equal(np.asarray(model.get_layer(n).kernel), kernels[n])
    np.testing.assert_array_equal(kernels[n] * masks[n], kernels[n])
  at_once = _gradual_by_hand(dense, 0.75, 1)[0]
  assert (want == at_once) == (steps == 1), (want, at_once)
  default = xt.gradual_cut(mlp("tf_keras"), SPEC, policy, 0.75, "crossbar")[0]  # at once
  assert default == xt.one_shot_budgets(mlp("tf_keras"), SPEC, policy, 0.75, "crossbar")
  assert {n: default[n] for n in ("a", "b")} == at_once
  per_layer = mlp("tf_keras")  # no shared pool: one cut at the target, whatever the steps
  assert xt.gradual_cut(per_layer, SPEC, xt.CrossbarPolicy(leave_dense=["out"]), 0.75,
                        steps=steps)[0] == {"a": 20, "b": 5, "out": None}
