"""Mapping JSON: counts, round trip, schema and model mismatches named by path."""

import copy
import json

import _models
import numpy as np
import pytest

from xbar_tfmot.core.mapping import CrossbarMapping, MappingError, schema
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.models.model_mapping import build_mapping, validate_mapping

SPEC = CrossbarSpec(rows=36, cols=4)
SPECS = [SPEC, CrossbarSpec(rows=20, cols=6, cell_bits=4, mapping="flat", replicas=2),
         CrossbarSpec(rows=8, cols=8, mapping="direct", kin=3, kout=2,
                      layer_replicas={"fc1": 3})]


def _mapped(model):
  return [l for l in model.layers if introspection.layer_kind(l) in ("Dense", "Conv1D", "Conv2D")]


@pytest.mark.parametrize("granularity", ["crossbar", "column"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.to_string())
@pytest.mark.parametrize("builder", ["vgg", "resnet"])
@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_counts_equal_geometry_and_json_round_trips(flavour, builder, spec, granularity,
                                                    tmp_path):
  model = _models.BUILDERS[builder](flavour)
  rng = np.random.default_rng(0)
  perms = {l.name: rng.permutation(l.kernel.shape[-2]) for l in _mapped(model)[1::2]}
  _models.prune(model, spec, 0.6, granularity, perms)
  mapping = build_mapping(model, spec, granularity, perms)
  total = 0
  for layer in _mapped(model):
    geometry = introspection.geometry_of(layer, spec)
    perm = perms.get(layer.name, np.arange(geometry.cin))
    counts = geometry.counts(np.take(np.asarray(layer.kernel), perm, axis=-2))
    entry = mapping.layer(layer.name)
    want = counts.blocks if granularity == "crossbar" else counts.packed
    assert entry["counts"]["crossbars"] == want
    assert len(entry["crossbars"]) * geometry.replicas == want
    assert entry["counts"]["dense"] == counts.dense
    assert entry["input_permutation"] == perm.tolist()
    total += want
  totals = mapping.totals
  assert totals["crossbars"] == total
  assert totals["crossbars"] < totals["dense"]
  assert 0 < totals["utilization"] <= 1
  path = tmp_path / "mapping.json"
  mapping.to_json(path)
  again = CrossbarMapping.from_json(path)
  assert again.data == json.loads(json.dumps(mapping.data))
  validate_mapping(again, model)
  data = json.loads(path.read_text())
  assert data["format"] == "xbar_tfmot.crossbar_mapping" and data["version"] == 1
  assert data["model"] == {"name": model.name, "input_shape": [None, *model.input_shape[1:]]}
  assert CrossbarSpec.from_dict(data["spec"]) == spec


@pytest.fixture(scope="module")
def pruned():
  model = _models.resnet("keras3")
  _models.prune(model, SPEC, 0.5, "column")
  return model, build_mapping(model, SPEC, "column")


def _set(path, value):
  def edit(data):
    *head, last = path
    target = data
    for key in head:
      target = target[key]
    if value is KeyError:
      del target[last]
    else:
      target[last] = value(target[last], data) if callable(value) else value
  return edit


MALFORMED = [
    ("version", _set(["version"], 2), "version"),
    ("negative channel", _set(["layers", 5, "crossbars", 2, "columns", 0], -3),
     "layers[5].crossbars[2].columns[0]"),
    ("channel out of range", _set(["layers", 5, "crossbars", 2, "columns", 0], 999),
     "layers[5].crossbars[2].columns[0]"),
    ("duplicate column", _set(["layers", 5, "crossbars", 1, "columns"],
                              lambda cols, data: cols[:1] + cols[:1]),
     "layers[5].crossbars[1].columns[1]"),
    ("too many columns", _set(["layers", 5, "crossbars", 0, "columns"],
                              lambda cols, data: list(range(5))),
     "layers[5].crossbars[0].columns"),
    ("missing field", _set(["layers", 0, "groups"], KeyError), "layers[0]"),
    ("bad permutation", _set(["layers", 3, "input_permutation", 0], 1),
     "layers[3].input_permutation"),
    ("group not from permutation", _set(["layers", 3, "groups", 0],
                                        lambda g, data: g[::-1]), "layers[3].groups[0]"),
    ("wrong id", _set(["layers", 5, "crossbars", 1, "id"], 7), "layers[5].crossbars[1].id"),
    ("group out of range", _set(["layers", 5, "crossbars", 0, "input_group"], 50),
     "layers[5].crossbars[0].input_group"),
    ("wrong kin", _set(["layers", 2, "kin"], 9), "layers[2].kin"),
    ("totals", _set(["totals", "crossbars"], lambda v, data: v + 1), "totals.crossbars"),
    ("layer counts", _set(["layers", 5, "counts", "crossbars"], lambda v, data: v + 1),
     "layers[5].counts.crossbars"),
    ("spec", _set(["spec", "rows"], "many"), "spec.rows"),
    ("extra field", _set(["layers", 0, "colour"], "red"), "layers[0]"),
]


@pytest.mark.parametrize("edit,path", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_document_names_first_bad_path(pruned, edit, path):
  _, mapping = pruned
  data = copy.deepcopy(mapping.data)
  edit(data)
  with pytest.raises(MappingError) as error:
    CrossbarMapping.from_json(json.dumps(data))
  assert error.value.path == path, str(error.value)
  assert str(error.value).startswith(path)


def test_invalid_json_text():
  with pytest.raises(MappingError, match="not valid JSON"):
    CrossbarMapping.from_json("{not json")


def test_schema_is_a_valid_draft_2020_12_schema():
  import jsonschema
  jsonschema.Draft202012Validator.check_schema(schema())


def test_mismatched_models_name_the_path(pruned):
  model, mapping = pruned
  more = _models.resnet("keras3")
  _models.prune(more, SPEC, 0.8, "column")
  with pytest.raises(MappingError) as error:
    validate_mapping(mapping, more)
  assert ".crossbars[" in error.value.path and ".columns[" in error.value.path
  dense = _models.resnet("keras3")
  with pytest.raises(MappingError) as error:
    validate_mapping(mapping, dense)
  assert error.value.path.endswith("].crossbars")
  assert "in no crossbar" in str(error.value)
  other = _models.vgg("keras3")
  with pytest.raises(MappingError) as error:
    validate_mapping(mapping, other)
  assert error.value.path == "layers[0].kernel_shape" or error.value.path.endswith(".name")
  data = copy.deepcopy(mapping.data)
  data["layers"][2]["name"] = "nope"
  with pytest.raises(MappingError, match="layers\\[2\\].name: layer 'nope'"):
    validate_mapping(CrossbarMapping(data), model)
  data = copy.deepcopy(mapping.data)
  data["layers"].pop(3)
  data["totals"]["dense"] -= mapping.data["layers"][3]["counts"]["dense"]
  data["totals"]["crossbars"] -= mapping.data["layers"][3]["counts"]["crossbars"]
  data["totals"]["nonzero_weights"] -= mapping.data["layers"][3]["counts"]["nonzero_weights"]
  with pytest.raises(MappingError, match="^layers: model layers \\['br_b'\\]"):
    validate_mapping(CrossbarMapping(data), model)


def test_wrapped_layer_reads_kernel_times_mask_and_unmapped_layers_are_listed():
  import keras

  class MaskWrapper(keras.layers.Wrapper):
    def build(self, input_shape):
      super().build(input_shape)
      self.mask = self.add_weight(name="mask", shape=self.layer.kernel.shape,
                                  initializer="ones", trainable=False)

    def call(self, x):
      return self.layer(x)

  inner = keras.layers.Dense(8, name="fc")
  model = keras.Sequential([keras.Input((6, 6, 3)),
                            keras.layers.DepthwiseConv2D(3, name="dw"),
                            keras.layers.Flatten(), MaskWrapper(inner, name="wrapped_fc")])
  spec = CrossbarSpec(rows=16, cols=16, mapping="direct", kin=4, kout=2)
  wrapper = model.layers[-1]
  mask = np.ones(tuple(inner.kernel.shape), np.float32)
  mask[:, 2:4] = 0  # output group 1 pruned in every input group
  mask[4:8] = 0  # input group 1 pruned
  wrapper.mask.assign(mask)
  mapping = build_mapping(model, spec, "crossbar")
  entry = mapping.layer("fc")
  geometry = introspection.geometry_of(inner, spec)
  assert entry["counts"]["crossbars"] == geometry.counts(np.asarray(inner.kernel) * mask).blocks
  assert entry["counts"]["crossbars"] == (geometry.g_in - 1) * (geometry.g_out - 1)
  assert all(o not in (2, 3) for x in entry["crossbars"] for o in x["columns"])
  assert mapping.data["unmapped"] == [
      {"name": "dw", "type": "DepthwiseConv2D",
       "reason": "depthwise convolution (one filter per channel) is not mapped"}]
  validate_mapping(mapping, model)
  wrapper.mask.assign(np.ones_like(mask))
  with pytest.raises(MappingError, match="layers\\[0\\].crossbars: the non-zero weights"):
    validate_mapping(mapping, model)


def test_unknown_permutation_layer_is_an_error(pruned):
  model, _ = pruned
  with pytest.raises(ValueError, match="permutations given for \\['nope'\\]"):
    build_mapping(model, SPEC, "column", {"nope": [0]})
