"""Model zoo: shapes, stable names, mapped layers and seeds, in both Keras flavours; the
benchmark's crossbar table in docs/usage.md; a pruning round trip through a zoo network."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from xbar_tfmot.app import datasets, zoo
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.schedules import CrossbarConstant
from xbar_tfmot.core.spec import CrossbarSpec, parse_spec
from xbar_tfmot.models import introspection
from xbar_tfmot.models.model_mapping import build_mapping
from xbar_tfmot.pruning.api import prune_crossbar, strip_crossbar_pruning
from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (name, input shape, width) -> mapped layers: convs + shortcuts + dense.
CASES = [
    ("vgg8", (28, 28, 1), 0.25, 8),
    ("vgg16", (32, 32, 3), 0.0625, 16),
    ("resnet20", (32, 32, 3), 0.5, 1 + 18 + 2 + 1),
    ("resnet18", (32, 32, 3), 0.125, 1 + 16 + 3 + 1),
    ("mlp", (28, 28, 1), 0.25, 3),
    ("lenet5", (28, 28, 1), 0.5, 2 + 3),
    ("lenet5", (8, 8, 1), 0.5, 2 + 3),  # the digits: conv2 keeps its 2x2 map (same padding)
    ("mobilenet", (28, 28, 1), 0.125, 1 + 7 + 1),  # stem + pointwise convs + fc
    ("mobilenet", (8, 8, 3), 0.125, 1 + 7 + 1),
    ("conv1d", (28, 28, 1), 0.25, 4 + 2),
    ("conv1d", (8, 8, 1), 0.25, 4 + 2),
]


@pytest.mark.parametrize("flavour", introspection.FLAVOURS)
@pytest.mark.parametrize("name,shape,width,mapped", CASES,
                         ids=[f"{c[0]}-{c[1][0]}" for c in CASES])
def test_builders(flavour, name, shape, width, mapped):
  model = zoo.build_model(name, shape, 7, width, flavour, seed=1)
  assert introspection.flavour(model) == flavour
  assert model.input_shape == (None, *shape)
  assert model.output_shape == (None, 7)
  names = [l.name for l in model.layers]
  assert len(names) == len(set(names))
  assert sum(introspection.is_mapped(l) for l in model.layers) == mapped
  x = np.random.default_rng(0).uniform(size=(2, *shape)).astype(np.float32)
  again = zoo.build_model(name, shape, 7, width, flavour, seed=1)
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(again(x)))
  other = zoo.build_model(name, shape, 7, width, flavour, seed=2)
  assert not np.array_equal(np.asarray(model(x)), np.asarray(other(x)))


def kernels(model) -> dict:
  """`{name: mapped kernel shape}` of the mapped layers, in model order."""
  return {l.name: tuple(introspection.mapped_kernel(l).shape) for l in model.layers
          if introspection.is_mapped(l)}


def test_mlp_is_784_300_100_10_at_width_1_and_scales():
  assert kernels(zoo.build_model("mlp", (28, 28, 1), 10)) == {
      "fc1": (784, 300), "fc2": (300, 100), "fc3": (100, 10)}
  assert kernels(zoo.build_model("mlp", (8, 8, 1), 10, 0.5)) == {
      "fc1": (64, 150), "fc2": (150, 50), "fc3": (50, 10)}


def test_lenet5_layers():
  assert kernels(zoo.build_model("lenet5", (28, 28, 1), 10)) == {
      "conv1": (5, 5, 1, 6), "conv2": (5, 5, 6, 16), "fc1": (5 * 5 * 16, 120),
      "fc2": (120, 84), "fc3": (84, 10)}
  small = zoo.build_model("lenet5", (8, 8, 1), 10, 0.5)  # 8 -> 4 -> 4 (same) -> 2
  assert small.get_layer("conv2").padding == "same"
  assert kernels(small)["fc1"] == (2 * 2 * 8, 60)


def test_mobilenet_blocks_are_depthwise_then_mapped_pointwise():
  model = zoo.build_model("mobilenet", (28, 28, 1), 10, 0.25)
  channels, size = 8, 28
  for b, (multiple, strides) in enumerate(zoo.MOBILENET_BLOCKS, start=1):
    dw, pw = model.get_layer(f"block{b}_dw"), model.get_layer(f"block{b}_pw")
    assert introspection.layer_kind(dw) == "DepthwiseConv2D" and not introspection.is_mapped(dw)
    assert "depthwise" in introspection.unmapped_reason(dw)
    assert dw.strides == (strides, strides) and dw.get_weights()[0].shape == (3, 3, channels, 1)
    size = -(-size // strides)
    assert dw.output.shape[1:] == (size, size, channels)
    assert introspection.mapped_kind(pw) == "Conv2D" and introspection.is_mapped(pw)
    assert tuple(pw.kernel.shape) == (1, 1, channels, 8 * multiple)
    channels = 8 * multiple
  assert list(kernels(model)) == ["conv1", *[f"block{b}_pw" for b in range(1, 8)], "fc"]
  assert kernels(model)["fc"] == (channels, 10)


def test_conv1d_reads_image_rows_as_a_sequence():
  model = zoo.build_model("conv1d", (28, 28, 1), 10, 0.5)
  assert model.get_layer("sequence").output.shape[1:] == (28, 28)
  assert {introspection.layer_kind(l) for l in model.layers if introspection.is_mapped(l)} == {
      "Conv1D", "Dense"}
  assert kernels(model) == {"conv1": (3, 28, 32), "conv2": (3, 32, 32), "conv3": (3, 32, 64),
                            "conv4": (3, 64, 64), "fc1": (64, 64), "fc2": (64, 10)}
  assert model.get_layer("conv4").output.shape[1] == 14  # one pool between conv2 and conv3
  x = np.random.default_rng(0).uniform(size=(1, 28, 28, 1)).astype(np.float32)
  # step t of the sequence is image row t, its features the row's pixels
  np.testing.assert_array_equal(np.asarray(model.get_layer("sequence")(x)), x[..., 0])


def usage_table() -> list:
  """`(network, spec, width, dense crossbars, parameters)` rows of docs/usage.md's zoo table."""
  text = (ROOT / "docs" / "usage.md").read_text()
  rows = re.findall(r"^ *\| `(\w+)` \| `([^`]+)` \| ([\d.]+) \| ([\d,]+) \| ([\d,]+) \|",
                    text, re.M)
  return [(n, s, float(w), int(d.replace(",", "")), int(p.replace(",", "")))
          for n, s, w, d, p in rows]


def test_usage_table_of_dense_crossbars_is_measured():
  table = usage_table()
  assert {"vgg8", "resnet20", "mlp", "lenet5", "mobilenet", "conv1d"} <= {r[0] for r in table}
  for name, spec, width, dense, parameters in table:
    model = zoo.build_model(name, (28, 28, 1), 10, width, seed=0)
    geometries = [introspection.geometry_of(l, parse_spec(spec)) for l in model.layers
                  if introspection.is_mapped(l)]
    assert (sum(g.dense_crossbars for g in geometries), model.count_params()) == (
        dense, parameters), f"{name} width {width} at {spec}"
    assert dense >= 100, f"{name}: {dense} dense crossbars at {spec}; the benchmark wants ~100+"


@pytest.mark.parametrize("flavour", introspection.FLAVOURS)
def test_mobilenet_prunes_pointwise_to_budget_and_strips(flavour):
  """The depthwise-separable network through prune_crossbar, a few steps of training, strip
  and build_mapping: every mapped layer (pointwise convs included) meets its budget, the
  depthwise kernels are untouched and the mapping reports them digital."""
  spec, reduction = CrossbarSpec(rows=16, cols=4), 0.5
  model = zoo.build_model("mobilenet", (8, 8, 1), 10, 0.125, flavour, seed=0)
  dense = {l.name: introspection.geometry_of(l, spec).dense_crossbars for l in model.layers
           if introspection.is_mapped(l)}
  wrapped = prune_crossbar(model, spec, "crossbar",
                           CrossbarConstant(reduction, begin_step=0, end_step=2, frequency=1),
                           projection="topk", policy=CrossbarPolicy(leave_dense=()), seed=0)
  K = introspection.keras_module(flavour)
  wrapped.compile(K.optimizers.Adam(1e-3),
                  K.losses.SparseCategoricalCrossentropy(from_logits=True))
  (x, y), _ = datasets.load_digits()
  wrapped.fit(x[:96], y[:96], batch_size=32, epochs=1, shuffle=False, verbose=0,
              callbacks=[UpdateCrossbarPruning()])
  stripped = strip_crossbar_pruning(wrapped)
  mapping = build_mapping(stripped, spec, "crossbar")
  kept = {name: mapping.layer(name)["counts"]["crossbars"] for name in dense}
  assert kept == {name: crossbar_budget(d, reduction) for name, d in dense.items()}
  assert sum(kept.values()) < sum(dense.values())
  digital = {u["name"] for u in mapping.data["unmapped"]}
  assert {f"block{b}_dw" for b in range(1, 8)} <= digital
  for b in range(1, 8):
    assert np.all(stripped.get_layer(f"block{b}_dw").get_weights()[0] != 0)  # not pruned
  np.testing.assert_allclose(stripped(x[:8], training=False), wrapped(x[:8], training=False),
                             rtol=1e-5, atol=1e-5)


def test_width_scales_channels():
  narrow = zoo.build_model("vgg8", (28, 28, 1), 10, 0.25)
  assert [narrow.get_layer(f"conv{i}").filters for i in range(1, 7)] == [16, 16, 32, 32, 64, 64]
  assert narrow.get_layer("fc1").units == 128


@pytest.mark.parametrize("shape,stem_kernel,pooled", [((224, 224, 3), 7, True),
                                                      ((32, 32, 3), 3, False)])
def test_resnet18_stem_follows_input_size(shape, stem_kernel, pooled):
  model = zoo.build_model("resnet18", shape, 10, 0.125)
  assert model.get_layer("conv1").kernel_size == (stem_kernel, stem_kernel)
  assert ("pool1" in [l.name for l in model.layers]) == pooled


def test_vgg_skips_pools_on_small_maps():
  model = zoo.build_model("vgg16", (8, 8, 1), 10, 0.0625)
  pools = [l for l in model.layers if l.name.startswith("pool")]
  assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, then no more pooling


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "alexnet"}, "model 'alexnet' is unknown; valid: conv1d, lenet5, mlp, mobilenet, "
                          "resnet18, resnet20, vgg16, vgg8"),
    ({"input_shape": (28, 28)}, "input_shape=(28, 28) is invalid"),
    ({"classes": 1}, "classes=1 is invalid; valid: an integer >= 2"),
    ({"width": 0}, "width=0 is invalid"),
    ({"flavour": "keras2"}, "flavour='keras2' is unknown"),
])
def test_bad_arguments(kwargs, message):
  args = {"name": "vgg8", "input_shape": (28, 28, 1), "classes": 10, **kwargs}
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    zoo.build_model(**args)
