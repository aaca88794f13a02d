"""Input feature-map reorder: same function when materialised, never less kept energy."""

import _models
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.projection import crossbar_budget, project
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import crossbar_model as explicit
from xbar_tfmot.models.model_mapping import build_mapping
from xbar_tfmot.models.reorder import kept_energy, project_permuted, reorder_model

SPECS = [CrossbarSpec(rows=36, cols=4), CrossbarSpec(rows=20, cols=3, mapping="flat")]


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.to_string())
@pytest.mark.parametrize("builder", sorted(_models.BUILDERS))
@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_materialised_reorder_keeps_the_function(flavour, builder, spec, granularity):
  model = _models.BUILDERS[builder](flavour)
  copy, result = reorder_model(model, spec, 0.6, granularity, materialize=True, seed=0)
  x = _models.random_inputs(model)
  assert _models.max_rel_error(copy(x), model(x)) < 1e-5
  assert result.materialized and result.mapping_permutations == {}
  changed = any(not np.array_equal(p, np.arange(p.size)) for p in result.permutations.values())
  assert changed or builder == "conv1d"  # conv1d at 36x4 has one input group per layer
  assert "produced by the model input" in " ".join(result.skipped.values())
  for name, perm in result.permutations.items():
    assert sorted(perm.tolist()) == list(range(perm.size))
    # the copy's kernel is the original's with its input channels permuted (position k holds
    # original input perm[k]) and its output channels in some order of their own
    old = np.asarray(model.get_layer(name).kernel)
    new = np.asarray(copy.get_layer(name).kernel)
    restored = np.take(new, np.argsort(perm), axis=-2)
    old_cols = old.reshape(-1, old.shape[-1]).T
    new_cols = restored.reshape(-1, new.shape[-1]).T
    matches = [np.flatnonzero((old_cols == c).all(axis=1)) for c in new_cols]
    assert all(m.size == 1 for m in matches), name
    assert sorted(int(m[0]) for m in matches) == list(range(old.shape[-1])), name
  total_before = sum(result.kept_before.values())
  assert sum(result.kept_after.values()) >= total_before - 1e-9
  # the materialised copy's own identity grouping keeps what was reported
  _, again = reorder_model(copy, spec, 0.6, granularity, materialize=False, rounds=0)
  for name in result.kept_after:
    assert again.kept_before[name] == pytest.approx(result.kept_after[name], abs=1e-9)


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_mapping_only_reorder_prune_map_and_explicit_model(flavour):
  model = _models.resnet(flavour)
  spec = SPECS[0]
  same, result = reorder_model(model, spec, 0.6, "column", materialize=False, seed=3)
  assert same is model and not result.materialized
  for name, after in result.kept_after.items():
    assert after >= result.kept_before[name] - 1e-12
  assert result.kept_after["stem"] >= result.kept_before["stem"]  # input space: mapping only
  _models.prune(model, spec, 0.6, "column", result.permutations)
  mapping = build_mapping(model, spec, "column", result.mapping_permutations)
  crossbar = explicit.crossbar_model(model, mapping)
  x = _models.random_inputs(model)
  assert _models.max_rel_error(crossbar(x), model(x)) < 1e-5


def test_deterministic_for_a_seed():
  model = _models.vgg("keras3")
  _, a = reorder_model(model, SPECS[0], 0.6, "crossbar", materialize=False, seed=7)
  _, b = reorder_model(model, SPECS[0], 0.6, "crossbar", materialize=False, seed=7)
  assert all(np.array_equal(a.permutations[n], b.permutations[n]) for n in a.permutations)
  assert a.kept_after == b.kept_after


def _projected_ratio(geometry, kernel, budget, granularity, perm):
  """Independent: energy kept by projection.project on the permuted kernel."""
  mask = np.asarray(project_permuted(geometry, tf.constant(kernel), budget, granularity, perm))
  return float(np.sum((kernel * mask) ** 2) / np.sum(kernel ** 2))


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["Dense", "Conv2D"]), cin=st.integers(2, 14),
       cout=st.integers(1, 10), kin=st.integers(1, 4), kout=st.integers(1, 4),
       reduction=st.floats(0.0, 0.9), granularity=st.sampled_from(["crossbar", "column"]),
       seed=st.integers(0, 1000))
def test_reorder_never_lowers_kept_energy(kind, cin, cout, kin, kout, reduction, granularity,
                                          seed):
  """Property over random layers, checked against the TensorFlow projection itself."""
  import keras
  rng = np.random.default_rng(seed)
  spec = CrossbarSpec(rows=16, cols=16, mapping="direct", kin=kin, kout=kout)
  layer = (keras.layers.Dense(cout, name="l") if kind == "Dense"
           else keras.layers.Conv2D(cout, 2, name="l"))
  model = keras.Sequential([keras.Input((3, 3, cin) if kind == "Conv2D" else (cin,)), layer])
  kernel = (rng.normal(size=tuple(layer.kernel.shape)) *
            rng.gamma(0.5, size=(cin, 1))).astype(np.float32)  # uneven channel energies
  layer.kernel.assign(kernel)
  _, result = reorder_model(model, spec, reduction, granularity, materialize=False, seed=seed,
                            rounds=30)
  geometry = LayerGeometry("l", kind, kernel.shape, spec)
  budget = crossbar_budget(geometry.dense_crossbars, reduction)
  before = _projected_ratio(geometry, kernel, budget, granularity, None)
  after = _projected_ratio(geometry, kernel, budget, granularity, result.permutations["l"])
  assert result.kept_before["l"] == pytest.approx(before, rel=1e-5, abs=1e-6)
  assert result.kept_after["l"] == pytest.approx(after, rel=1e-5, abs=1e-6)
  assert after >= before - 1e-6


def test_kept_energy_matches_projection_on_a_batch():
  rng = np.random.default_rng(0)
  spec = CrossbarSpec(rows=16, cols=16, mapping="direct", kin=3, kout=2)
  geometry = LayerGeometry("d", "Dense", (10, 7), spec)
  kernels = rng.normal(size=(4, 10, 7))
  energy = kernels ** 2
  for granularity in ("crossbar", "column"):
    batch = kept_energy(geometry, energy, 5, granularity)
    for k in range(4):
      mask = np.asarray(project(geometry, tf.constant(kernels[k]), 5, granularity))
      assert batch[k] == pytest.approx(np.sum(energy[k] * mask))


def test_reorder_improves_a_scrambled_layer():
  """Channels of two energy levels, interleaved: sorting puts the weak ones together."""
  import keras
  spec = CrossbarSpec(rows=16, cols=16, mapping="direct", kin=4, kout=4)
  layer = keras.layers.Dense(8, name="l")
  model = keras.Sequential([keras.Input((16,)), layer])
  scale = np.where(np.arange(16) % 2 == 0, 10.0, 0.1)[:, None]
  layer.kernel.assign((np.random.default_rng(0).normal(size=(16, 8)) * scale).astype("float32"))
  _, result = reorder_model(model, spec, 0.5, "crossbar", materialize=False)
  assert result.kept_after["l"] > result.kept_before["l"] + 0.3
  assert result.kept_after["l"] > 0.99
