"""The crossbar-explicit model computes the pruned model's function: the mapping is right."""

import copy

import _models
import numpy as np
import pytest

from xbar_tfmot.core.mapping import CrossbarMapping, MappingError
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import crossbar_model as explicit
from xbar_tfmot.models.model_mapping import build_mapping

SPECS = [CrossbarSpec(rows=36, cols=4), CrossbarSpec(rows=20, cols=6, cell_bits=4, mapping="flat"),
         CrossbarSpec(rows=8, cols=8, mapping="direct", kin=3, kout=2)]


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.to_string())
@pytest.mark.parametrize("builder", sorted(_models.BUILDERS))
@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_explicit_model_equals_pruned_model(flavour, builder, spec, granularity):
  model = _models.BUILDERS[builder](flavour)
  rng = np.random.default_rng(1)
  mapped = [l for l in model.layers if hasattr(l, "kernel") and l.name != "dw"]
  perms = {l.name: rng.permutation(l.kernel.shape[-2]) for l in mapped[::2]}  # mapping-only
  _models.prune(model, spec, 0.6, granularity, perms)
  mapping = build_mapping(model, spec, granularity, perms)
  crossbar = explicit.crossbar_model(model, mapping)
  x = _models.random_inputs(model)
  assert _models.max_rel_error(crossbar(x), model(x)) < 1e-5
  layer_cls = explicit.layer_class(flavour)
  replaced = {l.name: l for l in crossbar.layers if isinstance(l, layer_cls)}
  assert sorted(replaced) == sorted(mapping.layer_names)
  for name, layer in replaced.items():
    entry = mapping.layer(name)
    assert tuple(layer.crossbars.shape) == (
        len(entry["crossbars"]), entry["kin"] * entry["unit_rows"], entry["kout"])
    # the explicit layer holds exactly the non-zero weights of the pruned kernel
    kernel = np.asarray(model.get_layer(name).kernel)
    assert np.count_nonzero(np.asarray(layer.crossbars)) == np.count_nonzero(kernel)


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_a_wrong_but_well_formed_mapping_is_refused(flavour):
  model = _models.vgg(flavour)
  spec = SPECS[0]
  _models.prune(model, spec, 0.5, "column")
  mapping = build_mapping(model, spec, "column")
  data = copy.deepcopy(mapping.data)
  entry = data["layers"][1]
  used = {(x["input_group"], o) for x in entry["crossbars"] for o in x["columns"]}
  free = [o for o in range(entry["kernel_shape"][-1]) if (0, o) not in used]
  entry["crossbars"][0]["columns"][0] = free[0]  # moves a column to a pruned segment
  wrong = CrossbarMapping(data)
  with pytest.raises(MappingError, match="layers\\[1\\].crossbars\\[0\\].columns\\[0\\]"):
    explicit.crossbar_model(model, wrong)


def test_explicit_layer_round_trips_its_config():
  model = _models.conv1d("keras3")
  spec = SPECS[0]
  _models.prune(model, spec, 0.5, "column")
  crossbar = explicit.crossbar_model(model, build_mapping(model, spec, "column"))
  layer = crossbar.get_layer("c2")
  clone = type(layer).from_config(layer.get_config())
  x = np.random.default_rng(0).normal(size=(2, 8, 7)).astype("float32")
  clone.build(x.shape)
  clone.set_weights(layer.get_weights())
  np.testing.assert_allclose(clone(x), layer(x), rtol=1e-6)
