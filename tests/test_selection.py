"""`choose_allocation`: candidates cut without training, scored on validation, the best one wins."""

from __future__ import annotations

import _pruning_models as pm
import numpy as np
import pytest

import xbar_tfmot as xt
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import project
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning import selection

X, Y = pm.digits(600)
TRAIN, VALIDATION = (X[:400], Y[:400]), (X[400:], Y[400:])


@pytest.fixture(scope="module")
def trained():
  model = pm.compile_model(pm.cnn(seed=1, flavour="keras3"))
  model.fit(*TRAIN, epochs=4, batch_size=32, verbose=0)
  return model


def _accuracy_after(model, budgets, granularity="column"):
  """Validation accuracy of `model` cut to `budgets` by hand (no BatchNorm re-estimation)."""
  weights = model.get_weights()
  for layer in introspection.iter_layers(model):
    if introspection.is_mapped(layer) and budgets.get(layer.name) is not None:
      kernel = introspection.mapped_kernel(layer)
      g = introspection.geometry_of(layer, pm.SPEC)
      kernel.assign(np.asarray(kernel) * np.asarray(project(g, kernel, budgets[layer.name],
                                                            granularity)))
  logits = np.asarray(model(VALIDATION[0], training=False))
  model.set_weights(weights)
  return float(np.mean(np.argmax(logits, -1) == VALIDATION[1]))


def test_the_planted_best_candidate_wins_and_the_model_is_left_as_it_was(trained):
  """`heavy` cuts every layer to 5%, `light` to 90%: light wins wherever it stands in the
  order; each row's accuracy equals a cut made here by hand; the weights are restored."""
  before = [w.copy() for w in trained.get_weights()]
  candidates = {"heavy": CrossbarPolicy(targets={".*": 0.95}, leave_dense=()),
                "light": CrossbarPolicy(targets={".*": 0.1}, leave_dense=())}
  names = [l.name for l in introspection.iter_layers(trained) if introspection.is_mapped(l)]
  costs = {n: 1000.0 * (i + 1) for i, n in enumerate(names)}  # pJ per crossbar
  choice = xt.choose_allocation(trained, pm.SPEC, candidates, 0.5, "column", VALIDATION,
                                costs=costs)
  assert choice.chosen == "light"
  rows = {r["name"]: r for r in choice.rows}
  assert rows["light"]["validation_accuracy"] > rows["heavy"]["validation_accuracy"] + 0.2
  for name, row in rows.items():
    assert row["validation_accuracy"] == pytest.approx(_accuracy_after(trained, row["budgets"]))
    assert row["crossbars"] == sum(row["budgets"].values())
    assert row["energy_nj"] == pytest.approx(sum(i + 1 for i, n in enumerate(names)
                                                 for _ in range(row["budgets"][n])))
  after = trained.get_weights()
  assert all(np.array_equal(a, b) for a, b in zip(before, after))
  reordered = xt.choose_allocation(trained, pm.SPEC, dict(reversed(candidates.items())), 0.5,
                                   "column", VALIDATION)
  assert reordered.chosen == "light"
  assert any(line.startswith("* light:") for line in choice.table())


def test_a_tie_goes_to_the_earlier_candidate_and_infeasible_ones_are_recorded(trained):
  same = CrossbarPolicy(leave_dense=())
  candidates = {"first": same, "second": same,
                "impossible": CrossbarPolicy(mode="global_score", leave_dense=("conv1", "conv2"))}
  choice = xt.choose_allocation(trained, pm.SPEC, candidates, 0.9, "column", VALIDATION)
  assert choice.chosen == "first"
  rows = {r["name"]: r for r in choice.rows}
  assert "infeasible" in rows["impossible"] and "validation_accuracy" not in rows["impossible"]
  with pytest.raises(ValueError, match="no candidate can meet"):
    xt.choose_allocation(trained, pm.SPEC, {"impossible": candidates["impossible"]}, 0.9,
                         "column", VALIDATION)
  with pytest.raises(ValueError, match="validation split is empty"):
    xt.choose_allocation(trained, pm.SPEC, {"first": same}, 0.5, "column", (X[:0], Y[:0]))


def test_one_shot_budgets_split_a_score_pool_as_the_score_ranks_it(trained):
  """`global_score` one-shot: the pool is split by `allocate_by_score` over the current
  kernels' unit scores (its last mask update's split), not uniformly as `plan` does."""
  from xbar_tfmot.core.policy import NORMALISATION, allocate_by_score, unit_scores
  policy = CrossbarPolicy(mode="global_score", score="relative_magnitude")
  budgets = xt.one_shot_budgets(trained, pm.SPEC, policy, 0.7, "column")
  mapped = [l for l in introspection.iter_layers(trained) if introspection.is_mapped(l)]
  geometries = [introspection.geometry_of(l, pm.SPEC) for l in mapped]
  pool = policy.shared_pool(geometries, 0.7)
  names = [g.name for g in geometries if g.name in pool]
  scores = [unit_scores(g, np.asarray(introspection.mapped_kernel(l)), "column")
            for l, g in zip(mapped, geometries) if g.name in pool]
  want = allocate_by_score(scores, pool[names[0]], NORMALISATION["relative_magnitude"])
  assert [budgets[n] for n in names] == want
  assert sum(budgets[n] for n in names) == pool[names[0]]
  with pytest.raises(ValueError, match="needs batches"):
    xt.one_shot_budgets(trained, pm.SPEC, CrossbarPolicy(mode="global_score", score="fisher"),
                        0.7, "column")


def test_candidate_names():
  assert selection.candidate_policy("per_layer").mode == "per_layer"
  fisher = selection.candidate_policy("global_score:fisher", leave_dense=())
  assert (fisher.mode, fisher.score, fisher.leave_dense) == ("global_score", "fisher", ())
  curves = {"conv2": [[1, 1.0], [4, 0.0]]}
  assert selection.candidate_policy("sensitivity", curves=curves).mode == "sensitivity"


def test_batchnorm_is_re_estimated_on_the_calibration_images_after_each_cut():
  """With `calibration_images`, each cut is scored after BatchNorm re-estimation on them (in
  inference mode), and the model's statistics are restored afterwards."""
  keras = introspection.keras_module("keras3")
  keras.utils.set_random_seed(3)
  L = keras.layers
  inp = keras.Input((8, 8, 1))
  x = L.Conv2D(16, 3, padding="same", name="conv1")(inp)
  x = L.ReLU()(L.BatchNormalization(name="bn1")(x))
  x = L.Conv2D(32, 3, padding="same", name="conv2")(x)
  x = L.ReLU()(L.BatchNormalization(name="bn2")(x))
  out = L.Dense(10, name="fc")(L.Flatten()(L.MaxPooling2D()(x)))
  model = pm.compile_model(keras.Model(inp, out))
  model.fit(*TRAIN, epochs=3, batch_size=32, verbose=0)
  before = [w.copy() for w in model.get_weights()]
  candidates = {"half": CrossbarPolicy(targets={".*": 0.5}, leave_dense=())}
  choice = xt.choose_allocation(model, pm.SPEC, candidates, 0.5, "column", VALIDATION,
                                calibration_images=TRAIN[0])
  assert 0 <= choice.seconds < 600
  budgets = choice.rows[0]["budgets"]
  for layer in introspection.iter_layers(model):
    if introspection.is_mapped(layer):
      kernel = introspection.mapped_kernel(layer)
      g = introspection.geometry_of(layer, pm.SPEC)
      kernel.assign(np.asarray(kernel) * np.asarray(project(g, kernel, budgets[layer.name],
                                                            "column")))
  plain = float(np.mean(np.argmax(np.asarray(model(VALIDATION[0], training=False)), -1)
                        == VALIDATION[1]))
  xt.recalibrate_batchnorm(model, TRAIN[0], batch_size=256)
  recalibrated = float(np.mean(np.argmax(np.asarray(model(VALIDATION[0], training=False)), -1)
                               == VALIDATION[1]))
  model.set_weights(before)
  assert choice.rows[0]["validation_accuracy"] == pytest.approx(recalibrated)
  assert recalibrated != plain  # the re-estimation is what the score saw
  after = model.get_weights()
  assert all(np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("counts,reduction", [((1, 9, 30, 2), 0.72), ((5, 40, 12, 3), 0.85),
                                              ((2, 3, 4, 5, 6), 0.5), ((8, 8), 0.9),
                                              ((8, 8), 0.44)])  # the last: exactly one a layer
def test_equal_count_meets_the_global_total_with_the_least_reduction(counts, reduction):
  """With the first layer left dense, per_layer at `reduction` holds more than the global
  modes' total; `equal_count`'s targets hold no more, and a brute force over finer reductions
  finds none lower that also fits."""
  spec = xt.CrossbarSpec(rows=16, cols=4)
  geometries = [xt.LayerGeometry(f"d{i}", "Dense", (16 * n, 4), spec)
                for i, n in enumerate(counts)]
  policy = CrossbarPolicy(leave_dense=("d0",))
  limit = xt.crossbar_budget(sum(counts), reduction)
  if counts[0] + len(counts) - 1 > limit:  # the dense layer alone is over the total
    with pytest.raises(xt.PolicyError, match="more than the whole-model total"):
      selection.equal_count(policy, geometries, reduction)
    return
  scored = selection.equal_count(policy, geometries, reduction)

  def held(p, r):
    plan = p.plan(geometries, r)
    return sum(g.dense_crossbars if plan[g.name] is None else plan[g.name] for g in geometries)

  assert held(scored, reduction) <= limit
  if scored is policy:
    return
  target = dict(scored.targets)
  assert set(target) == {g.name for g in geometries[1:]}
  r = next(iter(target.values()))
  finer = [x for x in np.linspace(reduction, 1.0, 20001) if x < r - 1e-6]
  assert all(held(policy, x) > limit for x in finer)
  assert selection.equal_count(CrossbarPolicy(mode="global_score"), geometries, reduction).mode \
      == "global_score"


def test_the_per_layer_candidate_competes_at_the_global_count(trained):
  """In `choose_allocation` the per_layer row holds no more crossbars than global_score's,
  and the policy returned for the winner is the one scored."""
  candidates = {"per_layer": CrossbarPolicy(),
                "global_score": CrossbarPolicy(mode="global_score")}
  choice = xt.choose_allocation(trained, pm.SPEC, candidates, 0.5, "column", VALIDATION)
  rows = {r["name"]: r for r in choice.rows}
  assert rows["per_layer"]["crossbars"] <= rows["global_score"]["crossbars"]
  assert choice.policy.mode == candidates[choice.chosen].mode
  if choice.chosen == "per_layer":
    assert dict(choice.policy.targets)


def test_finetune_batches_cover_the_images_once_an_epoch_in_a_seeded_order():
  x, y = np.arange(10)[:, None] * 1.0, np.arange(10)
  batches = selection.finetune_batches((x, y), steps=7, batch_size=3, seed=5)
  assert [len(b[1]) for b in batches] == [3] * 7
  seen = np.concatenate([b[1] for b in batches])
  assert sorted(seen[:10]) == list(range(10)) and len(set(seen[10:20])) == 10
  assert all(np.array_equal(bx[:, 0], by) for bx, by in batches)  # images keep their labels
  again = selection.finetune_batches((x, y), steps=7, batch_size=3, seed=5)
  assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))
  assert not np.array_equal(seen, np.concatenate(
      [b[1] for b in selection.finetune_batches((x, y), 7, 3, seed=6)]))
  assert [len(b[1]) for b in selection.finetune_batches((x[:2], y[:2]), 3, 128)] == [2] * 3
  assert selection.finetune_batches((x, y), 0) == []
  with pytest.raises(ValueError, match="fine-tuning data is empty"):
    selection.finetune_batches((x[:0], y[:0]), 2)


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_masked_finetune_takes_adams_first_step_and_keeps_the_zeros(flavour):
  """Adam's first step moves every weight by lr * g / (|g| + eps) against its gradient g (the
  bias-corrected moments are g and g^2); a masked kernel's pruned weights stay exactly zero and
  its kept ones move; more steps lower the training loss."""
  import tensorflow as tf
  model = pm.compile_model(pm.cnn(seed=2, flavour=flavour))
  kernel = introspection.mapped_kernel(model.get_layer("conv2"))
  mask = (np.random.default_rng(0).random(kernel.shape) < 0.5).astype("float32")
  kernel.assign(np.asarray(kernel) * mask)
  x, y = TRAIN[0][:64], TRAIN[1][:64]
  variables = list(model.trainable_variables)
  loss_fn = introspection.compiled_loss(model, "test")
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
  grads = [np.asarray(g) for g in tape.gradient(loss, variables)]
  before = [np.asarray(v).copy() for v in variables]
  kernel_before = np.asarray(kernel).copy()
  selection.masked_finetune(model, {"conv2": mask}, [(x, y)], learning_rate=0.01)
  for v, b, g in zip(variables, before, grads):
    if v is kernel:
      g = g * mask
    np.testing.assert_allclose(np.asarray(v), b - 0.01 * g / (np.abs(g) + 1e-7), atol=1e-6)
  after = np.asarray(kernel)
  assert np.all(after[mask == 0] == 0)
  assert np.mean(after[mask == 1] != kernel_before[mask == 1]) > 0.5
  selection.masked_finetune(model, {"conv2": mask}, [(x, y)] * 20, learning_rate=0.01)
  assert np.all(np.asarray(kernel)[mask == 0] == 0)
  assert float(tf.reduce_mean(loss_fn(y, model(x, training=False)))) < float(loss)


def test_masked_finetune_takes_adams_second_step_with_its_moments():
  """Two steps equal Adam by hand (beta1 0.9, beta2 0.999, bias-corrected moments): the first
  step alone cannot tell beta1, the second can."""
  import tensorflow as tf
  model = pm.compile_model(pm.cnn(seed=3, flavour="keras3"))
  x, y = TRAIN[0][:32], TRAIN[1][:32]
  variables = list(model.trainable_variables)
  loss_fn = introspection.compiled_loss(model, "test")
  start = [np.asarray(v).copy() for v in variables]

  def grads():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
    return [np.asarray(g, np.float64) for g in tape.gradient(loss, variables)]

  w = [np.asarray(v, np.float64) for v in start]
  m, v2 = [0 * a for a in w], [0 * a for a in w]
  for t in (1, 2):
    for var, a in zip(variables, w):
      var.assign(a.astype(np.float32))
    for i, g in enumerate(grads()):
      m[i] = 0.9 * m[i] + 0.1 * g
      v2[i] = 0.999 * v2[i] + 0.001 * g * g
      w[i] = w[i] - 0.01 * (m[i] / (1 - 0.9**t)) / (np.sqrt(v2[i] / (1 - 0.999**t)) + 1e-7)
  for var, a in zip(variables, start):
    var.assign(a)
  selection.masked_finetune(model, {}, [(x, y)] * 2, learning_rate=0.01)
  for var, want in zip(variables, w):
    np.testing.assert_allclose(np.asarray(var), want, atol=1e-4)  # float32 against float64


def test_fine_tuned_scores_equal_a_cut_fine_tuned_by_hand_on_the_same_batches(trained):
  """With `finetune_steps`, each row's score is its cut after `masked_finetune` on the seeded
  batches (every candidate the same ones), its trajectory starts at the score without steps
  and passes the score after half the steps;
  the model is left as it was; steps without training data are refused."""
  before = [w.copy() for w in trained.get_weights()]
  candidates = {"heavy": CrossbarPolicy(targets={".*": 0.9}, leave_dense=()),
                "light": CrossbarPolicy(targets={".*": 0.3}, leave_dense=())}
  plain = xt.choose_allocation(trained, pm.SPEC, candidates, 0.5, "column", VALIDATION)
  tuned = xt.choose_allocation(trained, pm.SPEC, candidates, 0.5, "column", VALIDATION,
                               train_data=TRAIN, finetune_steps=9, learning_rate=3e-3, seed=4)
  assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))
  batches = selection.finetune_batches(TRAIN, 9, seed=4)
  for p, t in zip(plain.rows, tuned.rows):
    assert t["trajectory"][0] == [0, p["validation_accuracy"]] and t["budgets"] == p["budgets"]
    assert [s for s, _ in t["trajectory"]] == [0, 2, 4, 9]  # a quarter, half, all
    masks = {}
    for layer in introspection.iter_layers(trained):
      if introspection.is_mapped(layer):
        g = introspection.geometry_of(layer, pm.SPEC)
        masks[layer.name] = np.asarray(project(g, introspection.mapped_kernel(layer),
                                               t["budgets"][layer.name], "column"))
    xt.apply_masks(trained, masks)
    selection.masked_finetune(trained, masks, batches[:4], 3e-3)
    at_half = selection.accuracy(trained, *VALIDATION)
    trained.set_weights(before)
    xt.apply_masks(trained, masks)
    selection.masked_finetune(trained, masks, batches, 3e-3)
    by_hand = selection.accuracy(trained, *VALIDATION)
    trained.set_weights(before)
    assert t["validation_accuracy"] == by_hand == t["trajectory"][-1][1]
    assert t["trajectory"][2][1] == at_half
  heavy = {r["name"]: r for r in tuned.rows}["heavy"]
  assert heavy["validation_accuracy"] > heavy["trajectory"][0][1]  # the steps recover the cut
  assert f"(as cut {tuned.rows[0]['trajectory'][0][1]:.4f})" in tuned.table()[0]
  with pytest.raises(ValueError, match="needs training data"):
    xt.choose_allocation(trained, pm.SPEC, candidates, 0.5, "column", VALIDATION,
                         finetune_steps=3)
