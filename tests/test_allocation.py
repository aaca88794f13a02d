"""Network-level allocation: CrossbarPolicy modes `global_score` and `sensitivity`.

The model-wide budget is met exactly, counted independently on the stripped kernels, for every
mode on random models of both flavours inside `model.fit`; budgets change only at mask updates;
runs are deterministic for a seed; the knapsack is exact; a planted insensitive layer gets the
cut.
"""

import itertools

import _pruning_models as pm
import numpy as np
import pytest

import xbar_tfmot as xt
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.policy import (NORMALISATION, SCORES, CrossbarPolicy, allocate_by_curves,
                                    allocate_by_score, unit_scores)
from xbar_tfmot.core.projection import crossbar_budget, project
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models.introspection import keras_module
from xbar_tfmot.pruning.api import FLAVOURS

X, Y = pm.digits(320)
BATCH = 32  # 10 steps per epoch
REDUCTION = 0.7


# --- the maths, Keras-free ------------------------------------------------------------------

def test_allocate_by_score_meets_the_total_with_one_crossbar_each():
  rng = np.random.default_rng(0)
  for _ in range(200):
    dense = rng.integers(1, 30, rng.integers(1, 6))
    scores = [rng.exponential(size=d) * rng.choice([0.0, 1e-3, 1.0, 1e3]) for d in dense]
    total = int(rng.integers(len(dense), dense.sum() + 1))
    budgets = allocate_by_score(scores, total)
    assert sum(budgets) == total
    assert all(1 <= b <= d for b, d in zip(budgets, dense))
    # a larger pool never takes a crossbar from a layer (one ranking, prefixes of it)
    if total < dense.sum():
      more = allocate_by_score(scores, total + 1)
      assert all(m >= b for m, b in zip(more, budgets))


def test_allocate_by_score_normalises_per_layer():
  # Layer 0 has 100x the raw energy per unit of layer 1, spread over 10 units (a tenth of its
  # layer each); each of layer 1's 4 units holds a quarter of its layer: normalised, they win.
  scores = [np.full(10, 100.0), np.ones(4)]
  assert allocate_by_score(scores, 5) == [1, 4]
  assert allocate_by_score([np.full(10, 100.0), np.array([1.0] + [1e-6] * 9)], 11) == [10, 1]
  with pytest.raises(ValueError, match="total=1 is invalid"):
    allocate_by_score(scores, 1)


@pytest.mark.parametrize("normalisation, expected", [
    ("layer", [2, 2]),  # fc2's units hold half their layer each, fc1's a quarter: fc2 first
    ("mean", [3, 1]),   # every unit is its layer's average: a tie, the earlier layer wins
    ("none", [2, 2]),   # fc2's 5 beats fc1's 4, then fc1's 4
])
def test_allocate_by_score_normalisations_by_hand(normalisation, expected):
  """fc1: four units of 4, fc2: two units of 5, four crossbars: each layer keeps one, and the
  other two places go by the normalised scores, as computed by hand beside each case."""
  scores = [np.full(4, 4.0), np.full(2, 5.0)]
  assert allocate_by_score(scores, 4, normalisation) == expected
  with pytest.raises(ValueError, match="normalisation='sum' is unknown"):
    allocate_by_score(scores, 4, "sum")


def test_the_size_free_scores_keep_what_a_large_layer_needs():
  """The size bias on a planted pair: fc1 (20 units) carries the signal in 5 of its units,
  fc2 (2 units) is flat. Per layer, each fc1 unit is worth at most 1/5 against fc2's 1/2, so
  `magnitude` keeps fc2 whole and fc1 gets 4 of its 5 strong units at a total of 6; per mean
  unit (`relative_magnitude`) a strong fc1 unit is worth 4 against fc2's 1: fc1 keeps all 5."""
  fc1 = np.array([1.0] * 5 + [0.0] * 15)
  fc2 = np.ones(2)
  by_layer = allocate_by_score([fc1, fc2], 6, NORMALISATION["magnitude"])
  by_mean = allocate_by_score([fc1, fc2], 6, NORMALISATION["relative_magnitude"])
  assert by_layer == [4, 2] and by_mean == [5, 1]
  assert NORMALISATION["fisher"] == "none" and set(NORMALISATION) == set(SCORES)


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
def test_unit_scores_are_what_the_projection_keeps(granularity):
  g = LayerGeometry("fc", "Dense", (100, 30), CrossbarSpec(rows=36, cols=8))
  kernel = np.random.default_rng(1).normal(size=g.kernel_shape).astype("float32")
  scores = unit_scores(g, kernel, granularity)
  assert len(scores) == g.dense_crossbars
  for b in range(1, g.dense_crossbars + 1):
    mask = np.asarray(project(g, kernel, b, granularity))
    np.testing.assert_allclose(np.sum((kernel * mask) ** 2), scores[:b].sum(), rtol=1e-4)


def test_allocate_by_curves_is_the_exact_optimum():
  rng = np.random.default_rng(2)
  for _ in range(60):
    dense = rng.integers(1, 7, rng.integers(1, 4))
    curves = [[(b, float(v)) for b, v in zip(sorted(rng.choice(np.arange(1, d + 1), min(d, 3),
                                                                  replace=False)),
                                                rng.uniform(0, 5, 3))] for d in dense]
    total = int(rng.integers(len(dense), dense.sum() + 1))
    got = allocate_by_curves(curves, dense, total)
    assert sum(got) == total and all(1 <= b <= d for b, d in zip(got, dense))

    def cost(budgets):
      return sum(np.interp(b, [p[0] for p in c], [p[1] for p in c])
                 for b, c in zip(budgets, curves))

    best = min(cost(c) for c in itertools.product(*[range(1, d + 1) for d in dense])
               if sum(c) == total)
    assert cost(got) == pytest.approx(best)


def random_geometries(rng):
  spec = CrossbarSpec(rows=int(rng.choice([18, 36])), cols=int(rng.choice([4, 8])))
  out = [LayerGeometry("conv0", "Conv2D", (3, 3, 1, int(rng.integers(4, 16))), spec)]
  for i in range(int(rng.integers(1, 4))):
    out.append(LayerGeometry(f"fc{i}", "Dense", (int(rng.integers(8, 200)),
                                                 int(rng.integers(2, 40))), spec))
  return out


@pytest.mark.parametrize("mode", ["global", "global_score", "sensitivity"])
def test_every_mode_plans_the_model_wide_budget_exactly(mode):
  rng = np.random.default_rng(3)
  for _ in range(100):
    gs = random_geometries(rng)
    reduction = float(rng.uniform(0.1, 0.9))
    curves = ({g.name: [(1, float(rng.uniform(1, 3))), (g.dense_crossbars, 0.0)] for g in gs}
              if mode == "sensitivity" else None)
    policy = CrossbarPolicy(mode=mode, curves=curves)
    dense_total = sum(g.dense_crossbars for g in gs)
    try:
      plan = policy.plan(gs, reduction)
    except ValueError as err:  # the first conv left dense may hold more than the budget
      assert "valid: between" in str(err)
      continue
    counted = sum(g.dense_crossbars if plan[g.name] is None else plan[g.name] for g in gs)
    assert counted == crossbar_budget(dense_total, reduction)


def test_policy_config_round_trip_and_errors():
  curves = {"fc1": [[1, 2.0], [120, 0.0]]}
  policy = CrossbarPolicy(mode="sensitivity", curves=curves)
  assert CrossbarPolicy.from_config(policy.get_config()) == policy
  assert CrossbarPolicy.from_config(CrossbarPolicy(mode="global_score", score="saliency")
                                    .get_config()).score == "saliency"
  with pytest.raises(ValueError, match="needs curves"):
    CrossbarPolicy(mode="sensitivity")
  with pytest.raises(ValueError, match="score='grad' is unknown"):
    CrossbarPolicy(mode="global_score", score="grad")
  with pytest.raises(ValueError, match="curves are for mode='sensitivity'"):
    CrossbarPolicy(curves=curves)


# --- inside model.fit, both flavours --------------------------------------------------------

def random_model(flavour, seed):
  keras = keras_module(flavour)
  keras.utils.set_random_seed(seed)
  rng = np.random.default_rng(seed)
  L = keras.layers
  inp = keras.Input((8, 8, 1))
  x = L.Conv2D(int(rng.integers(4, 12)), 3, padding="same", activation="relu", name="conv1")(inp)
  x = L.Conv2D(int(rng.integers(8, 24)), 3, padding="same", activation="relu", name="conv2")(x)
  x = L.MaxPooling2D()(x)
  x = L.Flatten()(x)
  x = L.Dense(int(rng.integers(16, 64)), activation="relu", name="fc1")(x)
  return keras.Model(inp, L.Dense(10, name="fc2")(x))


class Recorder:
  """Each batch's step and the wrappers' budgets and masks after it."""

  def __init__(self, flavour):
    base = keras_module(flavour).callbacks.Callback
    rows = self.rows = []

    class Callback(base):
      def on_train_batch_end(self, batch, logs=None):
        ws = xt.crossbar_wrappers(self.model)
        rows.append((int(np.asarray(ws[0].pruning_step)), [w.current_budget() for w in ws],
                     [np.asarray(w.mask).copy() for w in ws]))

    self.callback = Callback()


def prune_and_fit(flavour, mode, seed, granularity, score="energy", curves=None):
  model = random_model(flavour, seed)
  schedule = xt.CrossbarPolynomialDecay(REDUCTION, begin_step=0, end_step=9, frequency=3)
  policy = CrossbarPolicy(mode=mode, score=score, curves=curves)
  pruned = xt.prune_crossbar(model, spec=pm.SPEC, granularity=granularity, schedule=schedule,
                             policy=policy, seed=seed)
  pm.compile_model(pruned)
  recorder = Recorder(flavour)
  update = xt.UpdateCrossbarPruning(allocation_data=[(X[:64], Y[:64])])
  pruned.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
             callbacks=[update, recorder.callback])
  return pruned, recorder.rows, schedule


def whole_model_count(model, granularity):
  """Crossbars of every mapped layer of the stripped model, read from its kernels."""
  counts = pm.mapped_counts(xt.strip_crossbar_pruning(model))
  used = sum(c.packed if granularity == "column" else c.blocks for c in counts.values())
  return used, sum(c.dense for c in counts.values())


# (flavour, mode, score, granularity, repeat to check determinism). The shared-pool mode runs
# in both flavours; the static plans (global, sensitivity) in one each, to keep the suite short.
CASES = [("tf_keras", "global", "energy", "crossbar", False),
         ("keras3", "sensitivity", "energy", "column", False),
         ("tf_keras", "global_score", "energy", "column", True),
         ("keras3", "global_score", "energy", "column", False),
         ("tf_keras", "global_score", "saliency", "crossbar", False),
         ("keras3", "global_score", "saliency", "crossbar", True),
         ("tf_keras", "global_score", "fisher", "column", False),
         ("keras3", "global_score", "relative_magnitude", "column", False)]


@pytest.mark.parametrize("flavour,mode,score,granularity,repeat", CASES)
def test_global_budget_met_exactly_inside_fit(flavour, mode, score, granularity, repeat):
  seed = 7 + CASES.index((flavour, mode, score, granularity, repeat))
  curves = None
  if mode == "sensitivity":
    model = pm.compile_model(random_model(flavour, seed))
    curves = xt.sensitivity_curves(model, pm.SPEC, (X[:128], Y[:128]),
                                   granularity=granularity, reductions=(0.5, 0.9))["curves"]
  pruned, rows, schedule = prune_and_fit(flavour, mode, seed, granularity, score, curves)
  used, dense = whole_model_count(pruned, granularity)
  assert used == crossbar_budget(dense, REDUCTION)
  # budgets and masks change only at the schedule's mask updates
  for (_, b0, m0), (step, b1, m1) in zip(rows, rows[1:]):
    if not bool(schedule.should_update(step)):
      assert b1 == b0 and all(np.array_equal(a, b) for a, b in zip(m0, m1)), step
  if mode == "global_score":
    wrappers = xt.crossbar_wrappers(pruned)  # the pool moved between layers: not proportional
    assert [w.current_budget() for w in wrappers] != [w.final_budget for w in wrappers]
  if repeat:
    again, rows2, _ = prune_and_fit(flavour, mode, seed, granularity, score, curves)
    assert [r[1] for r in rows2] == [r[1] for r in rows]  # deterministic for a seed
    assert all(np.array_equal(a, b) for a, b in zip(rows[-1][2], rows2[-1][2]))


def test_saliency_needs_data():
  pruned = xt.prune_crossbar(random_model("keras3", 0), spec=pm.SPEC, seed=0,
                             policy=CrossbarPolicy(mode="global_score", score="saliency"))
  wrapper = xt.crossbar_wrappers(pruned)[0]
  config = wrapper.get_config()
  assert config["allocation"] == {"mode": "global_score", "score": "saliency",
                                  "total": config["allocation"]["total"]}
  assert type(wrapper).from_config(config).allocation == config["allocation"]
  pm.compile_model(pruned)
  with pytest.raises(ValueError, match="allocation_data"):
    pruned.fit(X[:32], Y[:32], epochs=1, verbose=0, callbacks=[xt.UpdateCrossbarPruning()])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_shared_budget_refuses_several_steps_per_execution(flavour):
  keras = keras_module(flavour)
  pruned = xt.prune_crossbar(random_model(flavour, 0), spec=pm.SPEC, seed=0,
                             policy=CrossbarPolicy(mode="global_score"))
  pruned.compile(keras.optimizers.Adam(1e-3), steps_per_execution=2,
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  with pytest.raises(ValueError, match="steps_per_execution=2, which runs batches the callback"):
    pruned.fit(X[:64], Y[:64], batch_size=32, epochs=1, verbose=0,
               callbacks=[xt.UpdateCrossbarPruning()])


# --- sensitivity on a planted case ------------------------------------------------------------

@pytest.mark.parametrize("flavour", FLAVOURS)
def test_sensitivity_gives_the_cut_to_a_planted_insensitive_layer(flavour):
  model = pm.compile_model(pm.two_branch(flavour))
  model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0)
  fc = model.get_layer("fc")
  kernel = np.asarray(fc.kernel).reshape(4, 4, 32, 10)
  kernel[:, :, 16:, :] = 0.0  # what follows branch_b is zeroed: branch_b cannot matter
  fc.kernel.assign(kernel.reshape(512, 10))
  result = xt.sensitivity_curves(model, pm.SPEC, (X[:160], Y[:160]))
  assert result["evaluations"] > 1 and result["seconds"] > 0
  flat = [loss for _, loss in result["curves"]["branch_b"]]
  assert max(flat) - min(flat) < 1e-6
  policy = CrossbarPolicy(mode="sensitivity", curves=result["curves"],
                          leave_dense=["conv1", "fc"])
  geometries = [LayerGeometry(n, "Conv2D", (3, 3, 8, 16), pm.SPEC)
                for n in ("branch_a", "branch_b")]
  dense = geometries[0].dense_crossbars  # 2 x 2 = 4 each
  plan = policy.plan([LayerGeometry("conv1", "Conv2D", (3, 3, 1, 8), pm.SPEC), *geometries,
                      LayerGeometry("fc", "Dense", (512, 10), pm.SPEC)], 0.08)
  assert plan["branch_b"] == 1 and plan["branch_a"] == dense
  proportional = CrossbarPolicy(mode="global", leave_dense=["conv1", "fc"]).plan(
      [LayerGeometry("conv1", "Conv2D", (3, 3, 1, 8), pm.SPEC), *geometries,
       LayerGeometry("fc", "Dense", (512, 10), pm.SPEC)], 0.08)
  assert proportional["branch_b"] > 1  # the uniform split does not see it


def test_global_score_under_mirrored_strategy():
  import json
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  main = os.path.join(os.path.dirname(__file__), "_allocation_distributed_main.py")
  run = subprocess.run([sys.executable, main, "saliency"], env=env, timeout=300,
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result["replicas"] == 2 and result["masks_agree"]
  assert result["crossbars"] == crossbar_budget(result["dense"], 0.7)


def test_sensitivity_curves_are_losses_of_each_layer_pruned_alone():
  """Every point is the mean loss over all images (batches of 64, 64 and 32 weighted by their
  size) with that one layer projected to the budget; budgets are the grid's plus 1 and the
  dense count; the kernels are restored, so later layers are measured on the dense model."""
  model = pm.compile_model(pm.cnn(flavour="keras3"))
  x, y = X[:160], Y[:160]
  before = [np.asarray(w).copy() for w in model.weights]

  def mean_loss():
    z = np.asarray(model(x, training=False), np.float64)
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))

  dense_loss = mean_loss()
  result = xt.sensitivity_curves(model, pm.SPEC, (x, y), batch_size=64,
                                 reductions=(0.5,), layers=["conv2", "fc1"])
  for w, saved in zip(model.weights, before):
    np.testing.assert_array_equal(np.asarray(w), saved)
  assert list(result["curves"]) == ["conv2", "fc1"]
  for name, points in result["curves"].items():
    layer = model.get_layer(name)
    g = LayerGeometry(name, type(layer).__name__, tuple(layer.kernel.shape), pm.SPEC)
    dense = g.dense_crossbars
    assert [b for b, _ in points] == sorted({1, crossbar_budget(dense, 0.5), dense}), name
    assert points[-1][1] == pytest.approx(dense_loss, rel=1e-5)
    for budget, loss in points[:-1]:
      saved = np.asarray(layer.kernel).copy()
      layer.kernel.assign(saved * np.asarray(project(g, saved, budget, "crossbar")))
      expected = mean_loss()
      layer.kernel.assign(saved)
      assert loss == pytest.approx(expected, rel=1e-5), (name, budget)
  assert result["evaluations"] == 1 + 2 * 2  # the dense model once, two pruned points a layer


def _pool_gradients(score: str, batches: list):
  """A keras3 `global_score` model's pool for `score`: `(model, wrappers, magnitudes over
  batches, kernels as float64, the gradients of each batch taken here)`."""
  import tensorflow as tf

  from xbar_tfmot.pruning import allocation
  keras = keras_module("keras3")
  pruned = xt.prune_crossbar(pm.cnn(flavour="keras3"), spec=pm.SPEC, seed=0,
                             policy=CrossbarPolicy(mode="global_score", score=score))
  pm.compile_model(pruned)
  (group,) = allocation.shared_groups(xt.crossbar_wrappers(pruned))
  got = allocation.magnitudes(pruned, group, score, iter(batches))  # a generator too
  variables = [w._kernel() for w in group]
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  grads = []
  for x, y in batches:
    with tf.GradientTape() as tape:
      value = loss(y, pruned(x, training=False))
    grads.append([np.asarray(g, np.float64) for g in tape.gradient(value, variables)])
  assert len(got) == len(group) >= 2
  return pruned, group, got, [np.asarray(k, np.float64) for k in variables], grads


def test_saliency_magnitudes_are_the_root_of_summed_weight_times_gradient():
  """`score='saliency'` ranks a unit by the sum over its weights of `|w * dL/dw|` accumulated
  over the batches (`magnitudes` returns the root, whose squares the unit scores sum)."""
  from xbar_tfmot.pruning import allocation
  batches = [(X[:32], Y[:32]), (X[32:64], Y[32:64])]
  pruned, group, got, kernels, grads = _pool_gradients("saliency", batches)
  for i, (m, k) in enumerate(zip(got, kernels)):
    total = sum(np.abs(k * g[i]) for g in grads)
    np.testing.assert_allclose(m, np.sqrt(total), rtol=1e-4, atol=1e-7)
  energy = allocation.magnitudes(pruned, group, "energy", None)
  for m, k in zip(energy, kernels):
    np.testing.assert_array_equal(m, k.astype(np.float32))


def test_fisher_magnitudes_are_weight_times_root_mean_squared_gradient():
  """`score='fisher'` ranks a unit by the sum over its weights of `w^2 * mean(g^2)` over the
  batches (OBD with the empirical Fisher diagonal): the magnitude is `|w| * sqrt(mean g^2)`."""
  batches = [(X[:32], Y[:32]), (X[32:64], Y[32:64]), (X[64:96], Y[64:96])]
  _, _, got, kernels, grads = _pool_gradients("fisher", batches)
  for i, (m, k) in enumerate(zip(got, kernels)):
    mean_square = sum(g[i] ** 2 for g in grads) / len(grads)
    np.testing.assert_allclose(m, np.abs(k) * np.sqrt(mean_square), rtol=1e-4, atol=1e-9)
