"""SeparableConv2D: its pointwise kernel is mapped, pruned, counted, exported and verified in
both Keras flavours; its depthwise kernel stays digital and is reported so.

Counts are checked against a brute force written from docs/design.md alone: the pointwise
kernel `(1, 1, cin * depth_multiplier, filters)` is a matrix of `cin * depth_multiplier` rows
(one per depthwise output channel) and `filters` columns, cut into input groups of `Kin` rows
and output groups of `Kout` columns.
"""

import math

import _pruning_models as pm
import numpy as np
import pytest

from xbar_tfmot.core.hardware import HardwareSpec
from xbar_tfmot.core.mapping import CrossbarMapping
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.schedules import CrossbarConstant
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.export.exporter import export
from xbar_tfmot.export.verification import verify
from xbar_tfmot.models import crossbar_model as explicit
from xbar_tfmot.models import introspection
from xbar_tfmot.models.analog_model import analog_model
from xbar_tfmot.models.model_mapping import build_mapping
from xbar_tfmot.models.reorder import reorder_model
from xbar_tfmot.models.report import crossbar_report
from xbar_tfmot.pruning.api import FLAVOURS, prune_crossbar, strip_crossbar_pruning
from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning

SPEC = CrossbarSpec(rows=4, cols=2)  # kernel_aligned 1x1: Kin = 4 rows, Kout = 2
DIRECT = CrossbarSpec(rows=8, cols=8, mapping="direct", kin=3, kout=2)
SEPARABLE = ("sep1", "sep2")
X, Y = pm.digits(256)


def model_of(flavour: str, seed: int = 0):
  """Digits CNN with a separable layer of depth multiplier 1 (same padding) and one of 2
  (stride 2, no bias), between a Conv2D and a Dense layer."""
  K = introspection.keras_module(flavour)
  K.utils.set_random_seed(seed)
  L = K.layers
  inp = K.Input((8, 8, 1), name="image")
  x = L.Conv2D(6, 2, padding="same", activation="relu", name="conv")(inp)  # 4 taps: fits 4 rows
  x = L.SeparableConv2D(9, 3, padding="same", activation="relu", name="sep1")(x)
  x = L.SeparableConv2D(7, 3, strides=2, depth_multiplier=2, use_bias=False, name="sep2")(x)
  x = L.BatchNormalization(name="bn")(x)
  x = L.GlobalAveragePooling2D(name="gap")(x)
  out = L.Dense(10, name="fc")(x)
  model = K.Model(inp, out, name="separable_cnn")
  rng = np.random.default_rng(seed)
  for name in SEPARABLE:  # non-zero biases: a dropped bias or step shows in the outputs
    layer = model.get_layer(name)
    layer.set_weights([w if w.ndim > 1 else rng.normal(0, 0.3, w.shape)
                       for w in layer.get_weights()])
  return model


def pointwise_rows_cols(layer) -> tuple[int, int]:
  """`(cin * depth_multiplier, filters)` from the layer's config and its input, not its kernel."""
  config = layer.get_config()
  return int(layer.input.shape[-1]) * config["depth_multiplier"], config["filters"]


def brute_counts(matrix: np.ndarray, kin: int, kout: int) -> tuple[int, int, int]:
  """`(dense, blocks, packed)` of a `(rows, cols)` matrix, block by block, column by column."""
  rows, cols = matrix.shape
  dense = blocks = packed = 0
  for r in range(0, rows, kin):
    live_columns = 0
    for c in range(0, cols, kout):
      dense += 1
      block = matrix[r:r + kin, c:c + kout]
      blocks += int(np.any(block != 0))
      live_columns += int(np.sum(np.any(block != 0, axis=0)))
    packed += math.ceil(live_columns / kout)
  return dense, blocks, packed


def pointwise_matrix(layer) -> np.ndarray:
  kernel = np.asarray(layer.get_weights()[1])  # depthwise, pointwise[, bias]
  return kernel.reshape(kernel.shape[-2], kernel.shape[-1])


def zero_some_blocks(model, seed: int = 3) -> None:
  """Zeroes a few pointwise weights, whole rows and a block, so the counts are not all dense."""
  rng = np.random.default_rng(seed)
  for name in SEPARABLE:
    layer = model.get_layer(name)
    depthwise, pointwise, *rest = layer.get_weights()
    pointwise[..., rng.choice(pointwise.shape[-2], 3, replace=False), :] = 0.0
    pointwise[..., :4, :2] = 0.0
    layer.set_weights([depthwise, pointwise, *rest])


def pruned(flavour: str, granularity: str, regrowth: str = "reset", reduction: float = 0.5,
           steps: int = 3):
  """The model crossbar-pruned on digits for a few steps (every mapped layer, exact budgets).

  `straight_through` never freezes within the steps, so the stored kernels keep their pruned
  weights and only the wrapper's mask zeroes them.
  """
  model = model_of(flavour)
  end_step = steps - 1 if regrowth == "reset" else 100
  wrapped = prune_crossbar(model, SPEC, granularity,
                           CrossbarConstant(reduction, begin_step=0, end_step=end_step,
                                            frequency=1),
                           projection="topk", regrowth=regrowth,
                           policy=CrossbarPolicy(leave_dense=()), seed=0)
  pm.compile_model(wrapped)
  wrapped.fit(X, Y, batch_size=32, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0,
              callbacks=[UpdateCrossbarPruning()])
  return wrapped


@pytest.mark.parametrize("spec", [SPEC, DIRECT], ids=lambda s: s.to_string())
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pointwise_is_mapped_and_counted_the_depthwise_part_reported_digital(flavour, spec):
  model = model_of(flavour)
  zero_some_blocks(model)
  report = crossbar_report(model, spec)
  by_name = {r.name: r for r in report.layers}
  assert [r.name for r in report.mapped] == ["conv", "sep1", "sep2", "fc"]
  kin = spec.kin if spec.mapping == "direct" else spec.rows
  kout = spec.kout if spec.mapping == "direct" else spec.cols
  for name, cin, multiplier in zip(SEPARABLE, (6, 9), (1, 2)):
    layer = model.get_layer(name)
    rows, cols = pointwise_rows_cols(layer)
    assert rows == cin * multiplier
    entry = by_name[name]
    assert entry.kernel_shape == (1, 1, rows, cols) and entry.mapped_kernel == "pointwise_kernel"
    assert entry.counts.dense == math.ceil(rows / kin) * math.ceil(cols / kout)
    counts = entry.counts
    assert (counts.dense, counts.blocks, counts.packed) == brute_counts(
        pointwise_matrix(layer), kin, kout)
    assert counts.nonzero_weights == np.count_nonzero(pointwise_matrix(layer))
    assert entry.digital.startswith(f"depthwise_kernel 3x3x{cin}x{multiplier} stays digital")
    assert entry.to_dict()["digital_part"] == entry.digital
  assert by_name["conv"].digital is None and by_name["conv"].to_dict()["mapped_kernel"] == "kernel"
  assert [r.name for r in report.partly_mapped] == list(SEPARABLE)
  assert "partly mapped: sep2 (SeparableConv2D): depthwise_kernel 3x3x9x2" in str(report)
  assert [r.name for r in report.unmapped] == ["bn"]

  mapping = build_mapping(model, spec, "column")
  for name in SEPARABLE:
    layer = mapping.layer(name)
    assert layer["type"] == "Conv2D" and layer["kernel_shape"] == list(by_name[name].kernel_shape)
    assert layer["counts"]["crossbars"] == by_name[name].counts.packed
  digital = {u["name"]: u for u in mapping.data["unmapped"]}
  assert sorted(digital) == ["bn", "sep1", "sep2"]
  assert digital["sep2"]["type"] == "SeparableConv2D"
  assert "depthwise_kernel 3x3x9x2 stays digital" in digital["sep2"]["reason"]
  assert "pointwise_kernel 1x1x18x7 is on crossbars" in digital["sep2"]["reason"]


@pytest.mark.parametrize("granularity,regrowth", [("crossbar", "reset"),
                                                  ("column", "straight_through")])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_prune_crossbar_prunes_the_pointwise_kernel_to_its_budget_and_strip_keeps_it(
    flavour, granularity, regrowth):
  wrapped = pruned(flavour, granularity, regrowth)
  stripped = strip_crossbar_pruning(wrapped)
  original = model_of(flavour)
  report = crossbar_report(stripped, SPEC)
  by_name = {r.name: r for r in report.layers}
  for name in SEPARABLE:
    rows, cols = pointwise_rows_cols(original.get_layer(name))
    dense = math.ceil(rows / SPEC.rows) * math.ceil(cols / SPEC.cols)
    layer = stripped.get_layer(name)
    got = brute_counts(pointwise_matrix(layer), SPEC.rows, SPEC.cols)
    kept = got[1] if granularity == "crossbar" else got[2]
    assert got[0] == dense and kept == crossbar_budget(dense, 0.5) < dense
    assert by_name[name].counts.dense == dense
    assert (by_name[name].counts.blocks if granularity == "crossbar"
            else by_name[name].counts.packed) == kept
    assert np.all(np.asarray(layer.depthwise_kernel) != 0)  # the digital part is not pruned
  # the wrapped model computes with the zeros strip keeps
  x = X[:16]
  np.testing.assert_allclose(stripped(x, training=False), wrapped(x, training=False),
                             rtol=1e-5, atol=1e-6)
  assert crossbar_report(wrapped, SPEC).total("packed") == report.total("packed")


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_crossbar_explicit_model_equals_the_model(flavour, granularity):
  model = model_of(flavour)
  zero_some_blocks(model)
  rng = np.random.default_rng(5)
  permutations = {"sep2": rng.permutation(18)}  # mapping-only reorder of the depthwise outputs
  mapping = build_mapping(model, SPEC, granularity, permutations)
  crossbar = explicit.crossbar_model(model, mapping)
  x = X[:8]
  reference = np.asarray(model(x, training=False))
  assert pm_error(crossbar(x, training=False), reference) < 1e-5
  layer = crossbar.get_layer("sep2")
  assert layer.depthwise["strides"] == (2, 2) and tuple(layer.depthwise_kernel.shape) == (3, 3, 9, 2)
  assert np.count_nonzero(np.asarray(layer.crossbars)) == np.count_nonzero(
      pointwise_matrix(model.get_layer("sep2")))
  clone = type(layer).from_config(layer.get_config())  # the depthwise stage round-trips
  inputs = np.asarray(crossbar.get_layer("sep1")(crossbar.get_layer("conv")(x)))
  clone.build(inputs.shape)
  clone.set_weights(layer.get_weights())
  np.testing.assert_allclose(clone(inputs), layer(inputs), rtol=1e-6)


def pm_error(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_export_and_verify_a_pruned_separable_model(flavour, tmp_path):
  wrapped = pruned(flavour, "column")
  result = export(wrapped, tmp_path / "export", SPEC, "column",
                  formats=("saved_model", "tflite", "json"))
  assert set(result.mapping.layer_names) == {"conv", "sep1", "sep2", "fc"}
  report = crossbar_report(strip_crossbar_pruning(wrapped), SPEC)
  assert result.mapping.totals["crossbars"] == report.total("packed")
  written = CrossbarMapping.from_json(tmp_path / "export" / "mapping.json")
  digital = {u["name"]: u["reason"] for u in written.data["unmapped"]}
  assert sorted(digital) == ["bn", *SEPARABLE] and "depthwise_kernel" in digital["sep1"]
  check = verify(str(tmp_path / "export"))
  assert check.ok and set(check.differences) == {"crossbar-explicit", "saved_model", "tflite"}, \
      check.format()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_mapping_only_reorder_permutes_the_pointwise_rows_materialised_leaves_them(flavour):
  model = model_of(flavour)
  _, result = reorder_model(model, SPEC, 0.5, "column", materialize=False, rounds=20)
  assert sorted(result.permutations["sep2"]) == list(range(18))
  assert result.kept_after["sep2"] >= result.kept_before["sep2"]
  mapping = build_mapping(model, SPEC, "column", result.permutations)
  x = X[:4]
  assert pm_error(explicit.crossbar_model(model, mapping)(x), model(x)) < 1e-5
  copy, materialised = reorder_model(model, SPEC, 0.5, "column", rounds=20)
  for name in SEPARABLE:
    assert name in materialised.skipped
    np.testing.assert_array_equal(materialised.permutations[name], np.arange(
        pointwise_rows_cols(model.get_layer(name))[0]))
  assert pm_error(copy(x), model(x)) < 1e-5


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_analog_model_refuses_a_separable_layer_naming_it(flavour):
  model = model_of(flavour)
  mapping = build_mapping(model, SPEC, "column")
  with pytest.raises(explicit.DigitalPartError, match="layer 'sep1' \\(SeparableConv2D\\).*"
                     "depthwise_kernel 3x3x6x1 stays digital"):
    analog_model(model, mapping, HardwareSpec(quantize_weights=False))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_xception_maps_every_separable_pointwise_kernel(flavour):
  K = introspection.keras_module(flavour)
  model = K.applications.Xception(weights=None, input_shape=(71, 71, 3), classes=10)
  kinds = [type(l).__name__ for l in model.layers]
  report = crossbar_report(model, CrossbarSpec.preset("isaac_128x128"))
  assert len(report.mapped) == sum(k in ("Conv2D", "SeparableConv2D", "Dense") for k in kinds)
  assert len(report.partly_mapped) == kinds.count("SeparableConv2D") > 0
  assert {r.type for r in report.unmapped} == {"BatchNormalization"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_one_shot_masks_cut_the_pointwise_kernel_to_its_budget(flavour):
  """`xbar-prune`'s one-shot path (`schedule.prune_epochs=0`) projects and zeroes the pointwise
  kernel, leaving the depthwise kernel whole."""
  from xbar_tfmot.pruning import one_shot
  model = model_of(flavour)
  depthwise = {n: np.asarray(model.get_layer(n).get_weights()[0]) for n in SEPARABLE}
  masks = one_shot.one_shot_masks(model, SPEC, CrossbarPolicy(leave_dense=()), 0.5, "crossbar")
  one_shot.apply_masks(model, masks)
  for name in SEPARABLE:
    layer = model.get_layer(name)
    rows, cols = pointwise_rows_cols(layer)
    assert masks[name].shape == (1, 1, rows, cols)
    dense, blocks, _ = brute_counts(pointwise_matrix(layer), SPEC.rows, SPEC.cols)
    assert blocks == crossbar_budget(dense, 0.5)
    np.testing.assert_array_equal(layer.get_weights()[0], depthwise[name])
