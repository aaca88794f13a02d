"""Per-layer targets, layers left dense, and the global budget mode."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.spec import CrossbarSpec

SPEC = CrossbarSpec(rows=36, cols=8)


def geometries():
  """Dense crossbars: conv1 2, conv2 16, fc1 120, fc2 4 (the digits CNN of the e2e tests)."""
  return [
      LayerGeometry("conv1", "Conv2D", (3, 3, 1, 16), SPEC),
      LayerGeometry("conv2", "Conv2D", (3, 3, 16, 32), SPEC),
      LayerGeometry("fc1", "Dense", (512, 64), SPEC),
      LayerGeometry("fc2", "Dense", (64, 10), SPEC),
  ]


def test_default_leaves_first_conv_dense_and_prunes_the_rest():
  plan = CrossbarPolicy().plan(geometries(), 0.7)
  assert plan == {"conv1": None, "conv2": crossbar_budget(16, 0.7),
                  "fc1": crossbar_budget(120, 0.7), "fc2": crossbar_budget(4, 0.7)}
  assert CrossbarPolicy().plan(geometries(), 0.7, default_leave_dense=False)["conv1"] == 1


def test_targets_by_name_and_regex_first_match_wins():
  policy = CrossbarPolicy(targets={"fc2": 0.0, r"fc\d": 0.5, "conv.*": 0.9}, leave_dense=())
  plan = policy.plan(geometries(), 0.7)
  assert plan == {"conv1": crossbar_budget(2, 0.9), "conv2": crossbar_budget(16, 0.9),
                  "fc1": 60, "fc2": 4}


def test_leave_dense_by_regex():
  plan = CrossbarPolicy(leave_dense=[r"fc\d"]).plan(geometries(), 0.5)
  assert plan == {"conv1": 1, "conv2": 8, "fc1": None, "fc2": None}


@pytest.mark.parametrize("policy,message", [
    (CrossbarPolicy(targets={"fc3": 0.5}), "matches no mapped layer"),
    (CrossbarPolicy(leave_dense=["nope"]), "matches no mapped layer"),
    (CrossbarPolicy(targets={"conv1": 0.5}), "also left dense"),
])
def test_plan_errors(policy, message):
  with pytest.raises(ValueError, match=message):
    policy.plan(geometries(), 0.5)


@pytest.mark.parametrize("kwargs,field", [
    ({"targets": {"fc1": 1.0}}, "targets"),
    ({"targets": {"fc1": -0.2}}, "targets"),
    ({"targets": {"(": 0.2}}, "regex"),
    ({"leave_dense": [3]}, "leave_dense"),
    ({"mode": "model"}, "mode"),
])
def test_bad_policy_arguments(kwargs, field):
  with pytest.raises(ValueError, match=field):
    CrossbarPolicy(**kwargs)


def test_bad_schedule_reduction_is_rejected_by_plan():
  with pytest.raises(ValueError, match="final_reduction"):
    CrossbarPolicy().plan(geometries(), 1.0)


def test_global_mode_meets_the_model_wide_target_exactly():
  plan = CrossbarPolicy(mode="global").plan(geometries(), 0.7)
  total_dense = 2 + 16 + 120 + 4
  assert plan["conv1"] is None
  assert 2 + plan["conv2"] + plan["fc1"] + plan["fc2"] == crossbar_budget(total_dense, 0.7)


def test_global_mode_keeps_explicit_targets_and_spreads_the_rest():
  policy = CrossbarPolicy(targets={"fc2": 0.0}, leave_dense=(), mode="global")
  plan = policy.plan(geometries(), 0.5)
  assert plan["fc2"] == 4
  assert sum(plan.values()) == crossbar_budget(142, 0.5)


def test_global_mode_infeasible_target_is_explained():
  policy = CrossbarPolicy(leave_dense=["fc1"], mode="global")
  with pytest.raises(ValueError, match="leaving"):
    policy.plan(geometries(), 0.5)


@pytest.mark.parametrize("dense,reduction,expected", [
    # 14 of 35: shares 1.2, 2.0, 2.8, 3.6, 4.4; floors add up to 12; the two largest
    # remainders (0.8, 0.6) get the two crossbars left.
    ((3, 5, 7, 9, 11), 0.6, (1, 2, 3, 4, 4)),
    # 5 of 10: shares 1.5, 1.5, 2.0; the tie between the first two goes to model order.
    ((3, 3, 4), 0.5, (2, 1, 2)),
])
def test_global_mode_largest_remainder_by_hand(dense, reduction, expected):
  geos = [LayerGeometry(f"fc{i}", "Dense", (36 * d, 8), SPEC) for i, d in enumerate(dense)]
  assert [g.dense_crossbars for g in geos] == list(dense)
  plan = CrossbarPolicy(leave_dense=(), mode="global").plan(geos, reduction)
  assert tuple(plan[g.name] for g in geos) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=6),
       st.floats(0.0, 0.95))
def test_global_budgets_sum_exactly_and_stay_proportional(shapes, reduction):
  geos = [LayerGeometry(f"fc{i}", "Dense", (36 * a, 8 * b), SPEC) for i, (a, b) in enumerate(shapes)]
  dense = [g.dense_crossbars for g in geos]
  total = crossbar_budget(sum(dense), reduction)
  if total < len(geos):
    with pytest.raises(ValueError):
      CrossbarPolicy(leave_dense=(), mode="global").plan(geos, reduction)
    return
  plan = CrossbarPolicy(leave_dense=(), mode="global").plan(geos, reduction)
  budgets = [plan[g.name] for g in geos]
  assert sum(budgets) == total
  for b, d in zip(budgets, dense):
    assert 1 <= b <= d
    assert abs(b - total * d / sum(dense)) < 2 or b == 1


def test_reduction_for_unbuilt_layers():
  policy = CrossbarPolicy(targets={"fc.*": 0.3}, leave_dense=["head"])
  assert policy.reduction_for("fc1", 0.7) == 0.3
  assert policy.reduction_for("head", 0.7) is None
  assert policy.reduction_for("conv", 0.7) == 0.7
  with pytest.raises(ValueError, match="global"):
    CrossbarPolicy(mode="global").reduction_for("fc1", 0.5)


def test_config_round_trip():
  policy = CrossbarPolicy(targets={"fc1": 0.2}, leave_dense=["conv1"], mode="global")
  assert CrossbarPolicy.from_config(policy.get_config()) == policy


SMALL = CrossbarSpec(rows=4, cols=4)  # Kin 4 inputs, Kout 4 outputs per crossbar


def dense_layers(*shapes):
  return [LayerGeometry(f"fc{i}", "Dense", shape, SMALL) for i, shape in enumerate(shapes)]


def test_global_split_gives_back_the_crossbars_the_one_crossbar_floor_added():
  """100, 2 and 2 dense crossbars cut to 3: proportional shares 2.88, 0.06, 0.06 floor to 2, 1
  (raised to the one-crossbar floor) and 1, one too many; the largest layer gives it back."""
  gs = dense_layers((40, 40), (8, 4), (8, 4))
  assert [g.dense_crossbars for g in gs] == [100, 2, 2]
  assert crossbar_budget(104, 0.975) == 3
  plan = CrossbarPolicy(mode="global").plan(gs, 0.975)
  assert plan == {"fc0": 1, "fc1": 1, "fc2": 1}


@pytest.mark.parametrize("mode", ["global", "global_score"])
def test_a_one_crossbar_layer_keeps_its_crossbar_outside_the_shared_pool(mode):
  gs = dense_layers((4, 4), (40, 40), (16, 8))  # 1, 100 and 8 dense crossbars
  policy = CrossbarPolicy(mode=mode)
  plan = policy.plan(gs, 0.5)
  assert plan["fc0"] == 1 and sum(plan.values()) == crossbar_budget(109, 0.5)
  pool = policy.shared_pool(gs, 0.5)
  if mode == "global":
    assert pool == {}
  else:  # the pool holds what the two cuttable layers were given, not the one-crossbar layer
    assert pool == {"fc1": plan["fc1"] + plan["fc2"], "fc2": plan["fc1"] + plan["fc2"]}


def test_sensitivity_mode_needs_a_curve_for_every_pooled_layer():
  gs = dense_layers((40, 40), (16, 8))  # 100 and 8 dense crossbars
  curves = {"fc0": [(1, 5.0), (100, 0.0)], "fc1": [(1, 1.0), (8, 0.0)]}
  plan = CrossbarPolicy(mode="sensitivity", curves=curves).plan(gs, 0.5)
  assert sum(plan.values()) == crossbar_budget(108, 0.5)
  with pytest.raises(ValueError, match=r"no curve for layers \['fc1'\]; curves cover \['fc0'\]"):
    CrossbarPolicy(mode="sensitivity", curves={"fc0": curves["fc0"]}).plan(gs, 0.5)


def test_allocate_by_score_normalises_small_scores_too():
  """Layer 0's scores 0.09 and 0.01 (sum 0.1) are 0.9 and 0.1 of their layer, layer 1's two
  equal scores half each: the spare crossbar goes to layer 1, whatever the raw sums."""
  from xbar_tfmot.core.policy import allocate_by_score
  assert allocate_by_score([[0.09, 0.01], [0.05, 0.05]], 3) == [1, 2]
  assert allocate_by_score([[9.0, 1.0], [5.0, 5.0]], 3) == [1, 2]
  assert allocate_by_score([[0.0, 0.0], [3.0, 1.0]], 3) == [2, 1]  # no score: units alike


def test_a_one_crossbar_layer_needs_no_sensitivity_curve():
  """It cannot be cut, so it stays out of the pool at 1 crossbar, with or without a curve."""
  gs = dense_layers((4, 4), (40, 40), (16, 8))  # 1, 100 and 8 dense crossbars
  curves = {"fc1": [(1, 5.0), (100, 0.0)], "fc2": [(1, 1.0), (8, 0.0)]}
  plan = CrossbarPolicy(mode="sensitivity", curves=curves).plan(gs, 0.5)
  assert plan["fc0"] == 1 and sum(plan.values()) == crossbar_budget(109, 0.5)
