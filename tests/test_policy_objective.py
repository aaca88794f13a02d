"""Allocation by what the chip pays: `CrossbarPolicy(objective="energy")` (issue 27, item 2).

The pool's units are taken by score per unit of energy while they fit an energy budget of
`(1 - s) * E`; each layer's energy per crossbar comes from the cost model (output positions x
input cycles x the array, ADC and DAC energy of one activation). Checked against a brute force
over small cases, a hand computation from the cost model on a planted two-layer model (one-shot
and inside `model.fit`, both flavours), and the errors of every field.
"""

import itertools

import _pruning_models as pm
import numpy as np
import pytest

import xbar_tfmot as xt
from xbar_tfmot.core.cost import estimate_cost
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.hardware import HardwareSpec
from xbar_tfmot.core.policy import CrossbarPolicy, allocate_by_score, unit_costs
from xbar_tfmot.models import introspection
from xbar_tfmot.models.introspection import keras_module
from xbar_tfmot.models.model_mapping import build_mapping
from xbar_tfmot.pruning.allocation import crossbar_costs
from xbar_tfmot.pruning.api import FLAVOURS
from xbar_tfmot.pruning.one_shot import one_shot_budgets

SPEC = pm.SPEC  # 36 x 8, 8-bit weights in one cell: Kin 4 channels or 36 inputs, Kout 8
# ISAAC's constants with the converters charged at their quoted resolution (no scaling), so
# that the hand formula below is the cost model's docstring term by term.
HW = HardwareSpec.preset("isaac_32nm").replace(adc_reference_bits=None, dac_reference_bits=None)


def hand_energy_per_crossbar(positions: int, hw: HardwareSpec = HW) -> float:
  """One crossbar's energy per inference, from core/cost.py's docstring: activated
  `positions x input cycles` times; each activation charges the array (scaled to the crossbar's
  cells), one conversion per column (SPEC is not differential) and one DAC per row."""
  cycles = -(-hw.input_bits // hw.dac_bits)  # bit-serial
  array = hw.array_energy_pj * SPEC.rows * SPEC.cols / (hw.array_rows * hw.array_cols)
  return positions * cycles * (array + SPEC.cols * hw.adc_energy_pj
                               + SPEC.rows * hw.dac_energy_pj)


# --- the maths, Keras-free ------------------------------------------------------------------

def normalised(scores):
  return [np.sort(np.asarray(s, float))[::-1] / np.sum(s) for s in scores]


def brute_force(scores, costs, total):
  """Every split (each layer 1..dense) within `total`: `{budgets: kept normalised score}`."""
  values = normalised(scores)
  out = {}
  for budgets in itertools.product(*(range(1, len(s) + 1) for s in scores)):
    if sum(b * c for b, c in zip(budgets, costs)) <= total:
      out[budgets] = sum(v[:b].sum() for v, b in zip(values, budgets))
  return out


def test_equal_costs_give_the_crossbar_ranking():
  rng = np.random.default_rng(0)
  for _ in range(200):
    dense = rng.integers(1, 20, rng.integers(1, 5))
    scores = [rng.exponential(size=d) * rng.choice([1e-3, 1.0, 1e3]) for d in dense]
    total = int(rng.integers(len(dense), dense.sum() + 1))
    cost = float(rng.choice([1.0, 0.37, 1e5]))
    assert (allocate_by_score(scores, total * cost, costs=[cost] * len(dense))
            == allocate_by_score(scores, total))


def test_cost_split_fits_is_maximal_and_within_one_unit_of_the_optimum():
  """Against a brute force over every split: the greedy's cost fits, no layer could keep one
  more crossbar, and it keeps at most one non-first unit's score less than the best split."""
  rng = np.random.default_rng(1)
  optimal = 0
  for _ in range(300):
    dense = rng.integers(1, 7, rng.integers(1, 4))
    scores = [rng.exponential(size=d) for d in dense]
    costs = [float(c) for c in rng.choice([1.0, 2.5, 9.0, 16.0], len(dense))]
    low, high = sum(costs), sum(d * c for d, c in zip(dense, costs))
    total = float(rng.uniform(low, high))
    got = tuple(allocate_by_score(scores, total, costs=costs))
    splits = brute_force(scores, costs, total)
    assert got in splits  # 1 <= b <= dense and within the budget
    for layer, (b, d, c) in enumerate(zip(got, dense, costs)):
      if b < d:
        assert sum(x * y for x, y in zip(got, costs)) + c > total, (got, layer)
    best = max(splits.values())
    unit = max((v[1:].max() for v in normalised(scores) if len(v) > 1), default=0.0)
    assert splits[got] >= best - unit - 1e-12
    optimal += splits[got] >= best - 1e-12
  print(f"the greedy found the optimum in {optimal} of 300 cases")
  assert optimal > 250  # mostly the optimum itself, not merely within the bound


def test_cost_split_by_hand():
  # Layer 0 costs 16 a crossbar, layer 1 costs 1. Normalised unit scores: layer 0 [.4, .3, .2,
  # .1], layer 1 [.25] x 4. Budget 40: the first units take 17; by score per cost the three
  # layer-1 units (.25) come before layer 0's .3/16; 20 spent, then layer 0's second (36),
  # its third (52) no longer fits.
  scores = [np.array([4.0, 3.0, 2.0, 1.0]), np.ones(4)]
  assert allocate_by_score(scores, 40.0, costs=[16.0, 1.0]) == [2, 4]
  assert allocate_by_score(scores, 36.0, costs=[16.0, 1.0]) == [2, 4]  # exactly the budget
  assert allocate_by_score(scores, 36.0 - 1e-6, costs=[16.0, 1.0]) == [1, 4]
  assert allocate_by_score(scores, 17.0, costs=[16.0, 1.0]) == [1, 1]
  # the same 5 crossbars counted alike: layer 0's .3 beats layer 1's .25
  assert allocate_by_score(scores, 5) == [2, 3]
  with pytest.raises(ValueError, match=r"total=16.0 is invalid; valid: at least 17.0"):
    allocate_by_score(scores, 16.0, costs=[16.0, 1.0])
  with pytest.raises(ValueError, match="costs=.* are invalid; valid: one finite cost > 0"):
    allocate_by_score(scores, 40.0, costs=[16.0, 0.0])
  with pytest.raises(ValueError, match="one finite cost > 0 per layer"):
    allocate_by_score(scores, 40.0, costs=[16.0])


def geometries():
  return [LayerGeometry("conv1", "Conv2D", (3, 3, 1, 16), SPEC),
          LayerGeometry("conv2", "Conv2D", (3, 3, 16, 32), SPEC),
          LayerGeometry("fc1", "Dense", (512, 64), SPEC),
          LayerGeometry("fc2", "Dense", (64, 10), SPEC)]


POSITIONS = {"conv1": 64, "conv2": 64, "fc1": 1, "fc2": 1}


def test_unit_costs_are_the_cost_model_per_crossbar():
  costs = unit_costs(geometries(), HW, POSITIONS)
  for name, p in POSITIONS.items():
    assert costs[name] == pytest.approx(hand_energy_per_crossbar(p), rel=1e-12)
  with pytest.raises(ValueError, match="objective='latency' cannot be allocated"):
    unit_costs(geometries(), HW, POSITIONS, "latency")
  with pytest.raises(ValueError, match="objective='crossbars' has no cost per crossbar"):
    unit_costs(geometries(), HW, POSITIONS, "crossbars")


def test_energy_plan_and_pool_total_by_hand():
  gs = geometries()
  costs = unit_costs(gs, HW, POSITIONS)
  policy = CrossbarPolicy(mode="global_score", objective="energy", layer_costs=costs)
  reduction = 0.6
  plan = policy.plan(gs, reduction)
  pool = policy.shared_pool(gs, reduction)
  assert plan["conv1"] is None and set(pool) == {"conv2", "fc1", "fc2"}
  dense = {g.name: g.dense_crossbars for g in gs}
  budget = (1 - reduction) * sum(dense[n] * costs[n] for n in dense)
  assert pool["fc1"] == pytest.approx(budget - dense["conv1"] * costs["conv1"], rel=1e-12)
  spent = sum(plan[n] * costs[n] for n in pool)
  assert spent <= pool["fc1"]  # the placeholder split fits too
  assert all(plan[n] == dense[n] or spent + costs[n] > pool["fc1"] for n in pool)
  # explicit targets and one-crossbar layers are charged outside the pool
  targeted = CrossbarPolicy(targets={"fc2": 0.5}, leave_dense=(), mode="global_score",
                            objective="energy", layer_costs=costs)
  pool = targeted.shared_pool(gs, reduction)
  assert set(pool) == {"conv1", "conv2", "fc1"}
  assert pool["fc1"] == pytest.approx(budget - targeted.plan(gs, reduction)["fc2"] * costs["fc2"],
                                      rel=1e-12)


def test_objective_errors_and_config():
  costs = unit_costs(geometries(), HW, POSITIONS)
  policy = CrossbarPolicy(mode="global_score", objective="energy", layer_costs=costs)
  again = CrossbarPolicy.from_config(policy.get_config())
  assert again == policy and hash(again) == hash(policy)
  assert CrossbarPolicy.from_config(CrossbarPolicy().get_config()).objective == "crossbars"
  old = {k: v for k, v in CrossbarPolicy().get_config().items()
         if k not in ("objective", "layer_costs")}  # saved before the objective existed
  assert CrossbarPolicy.from_config(old) == CrossbarPolicy()
  cases = [
      (dict(objective="joules"), "objective='joules' is unknown; valid: crossbars, energy, "
                                 "latency"),
      (dict(mode="global_score", objective="latency"), "objective='latency' cannot be allocated"
                                                       ".*replicas"),
      (dict(objective="energy", layer_costs=costs), "valid: mode='global_score', not "
                                                    "'per_layer'"),
      (dict(mode="global_score", objective="energy"), r"layer_costs=None is invalid"),
      (dict(mode="global_score", objective="energy", layer_costs={"fc1": -1.0}),
       r"layer_costs\['fc1'\]=-1.0 is invalid; valid: a finite number > 0"),
      (dict(mode="global_score", layer_costs=costs), "layer_costs are for objective='energy'"),
  ]
  for kwargs, message in cases:
    with pytest.raises(ValueError, match=message):
      CrossbarPolicy(**kwargs)
  partial = CrossbarPolicy(mode="global_score", objective="energy", layer_costs={"fc1": 1.0})
  with pytest.raises(ValueError, match=r"no layer_costs for mapped layers \['conv1', 'conv2', "
                                       r"'fc2'\]"):
    partial.plan(geometries(), 0.5)
  with pytest.raises(ValueError, match="leaving .* valid: a share between the two"):
    policy.plan(geometries(), 0.99)  # the dense first convolution alone costs more than 1%
  cut_first = CrossbarPolicy(targets={"conv1": 0.5}, leave_dense=(), mode="global_score",
                             objective="energy", layer_costs=costs)
  with pytest.raises(ValueError, match="leaving .* valid: a share between the two"):
    cut_first.plan(geometries(), 0.01)  # conv1's target alone saves more than 1%


# --- the planted two-layer model --------------------------------------------------------------

REDUCTION = 0.55
# Planted share of each conv crossbar in its layer's sum of squares; fc: 12 blocks of
# magnitude 1 and 10 of 0.25 (the last input group has 24 rows, not 36).
CONV_SHARES = (0.3, 0.25, 0.2, 0.15, 0.07, 0.03)


def planted(flavour: str):
  """conv (3x3, 8 -> 24 channels, 4x4 outputs: 2 x 3 = 6 crossbars activated 16 times) and fc
  (384 -> 16: 11 x 2 = 22 crossbars activated once), every crossbar block of one planted
  magnitude. Per crossbar a conv unit outscores every fc unit, per pJ every large fc unit
  outscores it: counting crossbars and counting energy cut differently."""
  keras = keras_module(flavour)
  keras.utils.set_random_seed(0)
  L = keras.layers
  inp = keras.Input((6, 6, 8))
  x = L.Conv2D(24, 3, name="conv", use_bias=False)(inp)
  x = L.Flatten()(x)
  model = keras.Model(inp, L.Dense(16, name="fc", use_bias=False)(x))
  conv = np.zeros((3, 3, 8, 24), np.float32)
  fc = np.zeros((384, 16), np.float32)
  blocks = {"conv": {}, "fc": {}}
  shares = iter(CONV_SHARES)
  for i, j in itertools.product(range(2), range(3)):  # Kin = 4 channels, Kout = 8 outputs
    a = blocks["conv"][i, j] = float(np.sqrt(next(shares)))
    conv[:, :, 4 * i:4 * i + 4, 8 * j:8 * j + 8] = a
  for i, j in itertools.product(range(11), range(2)):  # Kin = 36 inputs (the last 24)
    a = blocks["fc"][i, j] = 1.0 if i < 6 else 0.25
    fc[36 * i:36 * i + 36, 8 * j:8 * j + 8] = a
  model.get_layer("conv").set_weights([conv])
  model.get_layer("fc").set_weights([fc])
  return model, blocks


def hand_expectation(blocks):
  """The best split within `(1 - s) x` the dense energy, by brute force, with each layer's
  energy per crossbar from the cost model by hand and each block's score its sum of squares
  (a constant times its weights: 9 taps x 4 channels x 8 outputs, or 36 (24) inputs x 8)."""
  costs = {"conv": hand_energy_per_crossbar(16), "fc": hand_energy_per_crossbar(1)}
  scores = {"conv": [a * a * 9 * 4 * 8 for a in blocks["conv"].values()],
            "fc": [a * a * (24 if i == 10 else 36) * 8 for (i, _), a in blocks["fc"].items()]}
  budget = (1 - REDUCTION) * (6 * costs["conv"] + 22 * costs["fc"])
  splits = brute_force([scores["conv"], scores["fc"]], [costs["conv"], costs["fc"]], budget)
  best = max(splits, key=splits.get)
  return costs, scores, budget, {"conv": best[0], "fc": best[1]}


def test_planted_model_cut_where_the_cost_model_says_one_shot():
  model, blocks = planted("tf_keras")
  costs, scores, budget, expected = hand_expectation(blocks)
  measured = crossbar_costs(model, SPEC, HW)
  assert measured == pytest.approx(costs, rel=1e-12)
  policy = CrossbarPolicy(leave_dense=(), mode="global_score", objective="energy",
                          layer_costs=measured)
  budgets = one_shot_budgets(model, SPEC, policy, REDUCTION, "crossbar")
  assert budgets == expected
  assert 1 < expected["conv"] < 6 and expected["fc"] < 22  # both layers cut
  assert expected["fc"] > 22 * (1 - REDUCTION)  # the cheap layer keeps more than its share
  # not what counting crossbars keeps, nor a cost-blind ranking filled while the energy fits
  by_count = allocate_by_score([scores["conv"], scores["fc"]], sum(expected.values()))
  assert by_count != [expected["conv"], expected["fc"]]
  blind = brute_force([scores["conv"], scores["fc"]], [costs["conv"], costs["fc"]], budget)
  values = normalised([scores["conv"], scores["fc"]])
  order = sorted((-v, layer, k) for layer, vs in enumerate(values) for k, v in enumerate(vs)
                 if k > 0)
  kept, spent = [1, 1], costs["conv"] + costs["fc"]
  for _, layer, _ in order:
    c = (costs["conv"], costs["fc"])[layer]
    if spent + c <= budget:
      kept[layer] += 1
      spent += c
  assert tuple(kept) in blind and kept != [expected["conv"], expected["fc"]]


def strip_and_cost(pruned):
  stripped = xt.strip_crossbar_pruning(pruned)
  mapping = build_mapping(stripped, SPEC, "crossbar")
  positions = xt.output_positions(stripped, mapping.layer_names)
  return stripped, estimate_cost(mapping, HW, positions)


def reloaded(pruned, flavour: str, path: str):
  pruned.save(path)
  if flavour == "keras3":
    import keras
    return keras.saving.load_model(path)
  import tf_keras
  with xt.crossbar_pruning_scope():
    return tf_keras.models.load_model(path)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_planted_model_cut_where_the_cost_model_says_inside_fit(flavour, tmp_path):
  """The shared pool inside `model.fit` (learning rate 0, pruned weights kept: the scores stay
  the planted ones), saved and loaded, then the stripped model counted and costed on its own."""
  model, blocks = planted(flavour)
  _, _, budget, expected = hand_expectation(blocks)
  policy = CrossbarPolicy(leave_dense=(), mode="global_score", objective="energy",
                          layer_costs=crossbar_costs(model, SPEC, HW))
  schedule = xt.CrossbarPolynomialDecay(REDUCTION, begin_step=0, end_step=4, frequency=2)
  pruned = xt.prune_crossbar(model, spec=SPEC, granularity="crossbar", schedule=schedule,
                             policy=policy, regrowth="straight_through", seed=0)
  wrappers = xt.crossbar_wrappers(pruned)
  config = wrappers[0].get_config()["allocation"]
  assert config["objective"] == "energy" and config["total"] == pytest.approx(budget, rel=1e-9)
  assert type(wrappers[0]).from_config(wrappers[0].get_config()).allocation == config
  keras = keras_module(flavour)
  pruned.compile(keras.optimizers.SGD(0.0),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x = np.random.default_rng(0).normal(size=(48, 6, 6, 8)).astype("float32")
  y = np.arange(48) % 16
  rows = []

  class Record(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      rows.append((int(np.asarray(wrappers[0].pruning_step)),
                   [w.current_budget() for w in wrappers]))

  pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
             callbacks=[xt.UpdateCrossbarPruning(), Record()])
  assert {w.layer.name: w.current_budget() for w in wrappers} == expected
  # before the end, each update's split fits the budget falling along the schedule, and is
  # maximal within it: the pool does not jump to its final budget
  costs = [hand_energy_per_crossbar(16), hand_energy_per_crossbar(1)]
  dense_cost = 6 * costs[0] + 22 * costs[1]
  updates = [t for t in range(1, 7) if bool(schedule.should_update(t))]  # training steps 1..6
  seen = set()
  for step, budgets in rows:
    if step < updates[0]:
      continue  # not split yet
    last = max(u for u in updates if u <= step)
    allowed = dense_cost - (dense_cost - budget) * float(schedule.progress(last))
    spent = sum(b * c for b, c in zip(budgets, costs))
    assert spent <= allowed * (1 + 1e-9), step
    assert all(b == d or spent + c > allowed for b, d, c in zip(budgets, (6, 22), costs)), rows
    seen.add(tuple(budgets))
  assert len(seen) >= 2, rows  # the budgets fell over more than one update
  pruned = reloaded(pruned, flavour, str(tmp_path / ("pruned.keras" if flavour == "keras3"
                                                     else "pruned.h5")))
  assert xt.crossbar_wrappers(pruned)[1].get_config()["allocation"] == config
  stripped, cost = strip_and_cost(pruned)
  counts = pm.mapped_counts(stripped)
  assert {n: c.blocks for n, c in counts.items()} == expected
  assert cost.pruned.energy_pj <= (1 - REDUCTION) * cost.dense.energy_pj * (1 + 1e-9)
  assert cost.pruned.energy_pj == pytest.approx(
      sum(expected[n] * hand_energy_per_crossbar(p) for n, p in (("conv", 16), ("fc", 1))),
      rel=1e-9)


def test_an_energy_pool_fit_without_our_callback_fails_at_strip():
  from tensorflow_model_optimization.python.core.sparsity.keras.pruning_callbacks import \
      UpdatePruningStep
  model, _ = planted("tf_keras")
  policy = CrossbarPolicy(leave_dense=(), mode="global_score", objective="energy",
                          layer_costs=crossbar_costs(model, SPEC, HW))
  schedule = xt.CrossbarPolynomialDecay(REDUCTION, begin_step=0, end_step=4, frequency=2)
  pruned = xt.prune_crossbar(model, spec=SPEC, granularity="crossbar", schedule=schedule,
                             policy=policy, seed=0)
  pruned.compile("sgd", "sparse_categorical_crossentropy")
  x = np.zeros((48, 6, 6, 8), np.float32)
  pruned.fit(x, np.zeros(48), batch_size=8, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
  with pytest.raises(ValueError, match=r"conv, fc share a global_score budget of .* pJ of energy "
                                       r"but hold .* fit without xbar_tfmot.UpdateCrossbarPruning"):
    xt.strip_crossbar_pruning(pruned)


def test_crossbar_costs_agree_with_the_cost_model_of_the_dense_mapping():
  """On the digits CNN at column grain with the unscaled ISAAC preset: each layer's cost per
  crossbar times its dense crossbars is the cost model's dense energy of that layer."""
  model = pm.cnn()
  hw = HardwareSpec.preset("isaac_32nm")
  costs = crossbar_costs(model, SPEC, hw)
  mapping = build_mapping(model, SPEC, "column")
  report = estimate_cost(mapping, hw, xt.output_positions(model, mapping.layer_names))
  for layer in report.layers:
    assert costs[layer.name] * mapping.geometry(layer.name).dense_crossbars == pytest.approx(
        layer.dense.energy_pj, rel=1e-12)


# --- xbar-prune: allocation.objective ---------------------------------------------------------

VALIDATED = ("global_score:magnitude", "global_score:relative_magnitude")


@pytest.mark.parametrize("mode", ["global_score", "validated"])
def test_the_run_meets_an_energy_budget_and_reports_energy_and_latency(tmp_path, mode):
  """`allocation.objective="energy"` on the tiny config: the pruned model's energy per inference
  on `hardware.preset` (the report's cost model) is at most `1 - reduction` of the dense
  model's, and the report gives energy and latency per layer beside the crossbars (and per
  candidate when they are chosen on validation)."""
  import json

  from _configs import load_config

  from xbar_tfmot.app import pipeline
  lines: list[str] = []
  config = load_config(workdir=str(tmp_path), train__verbose=0, train__baseline_epochs=1,
                       report__plots=False, export__enabled=False, allocation__mode=mode,
                       allocation__objective="energy", allocation__reduction=0.5,
                       allocation__candidates=",".join(VALIDATED),
                       allocation__validation_images=256)
  metrics = pipeline.run(config, log=lines.append)
  chip, objective = metrics["chip_cost"], metrics["objective"]
  assert objective["objective"] == "energy" and objective["hardware"] == config.hardware.preset
  assert objective["dense_nj"] == pytest.approx(chip["dense"]["energy_nj"], rel=1e-9)
  assert chip["pruned"]["energy_nj"] <= 0.5 * chip["dense"]["energy_nj"] * (1 + 1e-9)
  assert objective["budget_nj"] == pytest.approx(0.5 * objective["dense_nj"], rel=1e-12)
  rows = metrics["layers"]
  assert sum(r["energy_pruned_nj"] for r in rows) == pytest.approx(chip["pruned"]["energy_nj"])
  assert sum(r["latency_ns"] for r in rows) == pytest.approx(chip["pruned"]["latency_ns"])
  assert any(line.startswith("[prune] allocation by energy") for line in lines)
  report = (tmp_path / "report" / "report.md").read_text()
  assert "chip energy nJ dense / pruned | latency ns |" in report
  assert f"a budget of {objective['budget_nj']:.1f} of the dense" in report
  assert json.loads((tmp_path / "config.json").read_text())["allocation.objective"] == "energy"
  if mode == "validated":
    rows = {r["name"]: r for r in metrics["allocation"]["candidates"]}
    assert list(rows) == list(VALIDATED)
    chosen = rows[metrics["allocation"]["chosen"]]  # its one-shot cut; training re-splits it
    assert all(r["energy_nj"] <= objective["budget_nj"] * (1 + 1e-9) for r in rows.values())
    assert f"| {chosen['crossbars']} | {chosen['energy_nj']:.1f} nJ |" in report


@pytest.mark.parametrize("mode", ["global_score", "validated"])
def test_an_energy_budget_that_cannot_be_met_is_refused_before_training(mode):
  """`check_budgets` (run before the baseline trains) refuses an energy reduction whose pool
  cannot give every pruned layer one crossbar, names the objective, and its bound is the
  largest reduction whose plan the policy accepts (a brute force over the same grid)."""
  from _configs import load_config

  from xbar_tfmot.app import configuration, preparation
  from xbar_tfmot.app.configuration import ConfigError
  from xbar_tfmot.pruning.allocation import crossbar_costs

  def parsed(reduction: float):
    return configuration.parse(load_config(
        allocation__mode=mode, allocation__objective="energy", allocation__reduction=reduction,
        allocation__candidates="global_score:magnitude"))

  config = parsed(0.5)
  model = preparation.initial_model(config, preparation.load_data(config), {})
  preparation.check_budgets(config, model)  # 0.5 fits
  spec = config.chip.crossbar
  mapped = [l for l in introspection.iter_layers(model) if introspection.is_mapped(l)]
  policy = CrossbarPolicy(mode="global_score", objective="energy", layer_costs=crossbar_costs(
      model, spec, config.hardware.hardware_spec))
  shapes = [introspection.geometry_of(l, spec) for l in mapped]

  def fits(r: float) -> bool:
    try:
      policy.plan(shapes, r)
      return True
    except ValueError:
      return False

  high = max(k / 1000 for k in range(1, 1000) if fits(k / 1000))
  assert high < 0.999
  with pytest.raises(ConfigError, match=rf"reduction=0.999: too high .*allocation.objective="
                                        rf"'energy' on isaac_32nm\); valid: reduction <= {high:g}"):
    preparation.check_budgets(parsed(0.999), model)
