"""Model zoo: shapes, stable names, mapped layers and seeds, in both Keras flavours."""

from __future__ import annotations

import numpy as np
import pytest

from xbar_tfmot.app import zoo
from xbar_tfmot.models import introspection

# (name, input shape, width) -> mapped layers: convs + shortcuts + dense.
CASES = [
    ("vgg8", (28, 28, 1), 0.25, 8),
    ("vgg16", (32, 32, 3), 0.0625, 16),
    ("resnet20", (32, 32, 3), 0.5, 1 + 18 + 2 + 1),
    ("resnet18", (32, 32, 3), 0.125, 1 + 16 + 3 + 1),
]


@pytest.mark.parametrize("flavour", introspection.FLAVOURS)
@pytest.mark.parametrize("name,shape,width,mapped", CASES, ids=[c[0] for c in CASES])
def test_builders(flavour, name, shape, width, mapped):
  model = zoo.build_model(name, shape, 7, width, flavour, seed=1)
  assert introspection.flavour(model) == flavour
  assert model.output_shape == (None, 7)
  names = [l.name for l in model.layers]
  assert len(names) == len(set(names))
  assert sum(introspection.is_mapped(l) for l in model.layers) == mapped
  x = np.random.default_rng(0).uniform(size=(2, *shape)).astype(np.float32)
  again = zoo.build_model(name, shape, 7, width, flavour, seed=1)
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(again(x)))


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
    ({"name": "alexnet"}, "model 'alexnet' is unknown; valid: resnet18, resnet20, vgg16, vgg8"),
    ({"input_shape": (28, 28)}, "input_shape=(28, 28) is invalid"),
    ({"classes": 1}, "classes=1 is invalid; valid: an integer >= 2"),
    ({"width": 0}, "width=0 is invalid"),
    ({"flavour": "keras2"}, "flavour='keras2' is unknown"),
])
def test_bad_arguments(kwargs, message):
  args = {"name": "vgg8", "input_shape": (28, 28, 1), "classes": 10, **kwargs}
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    zoo.build_model(**args)
