"""Fuzzing the mapping reader (tools/fuzz_mapping.py, a few hundred cases here), the crashes it
found, and the vectorised validation naming the same first bad path as the full schema."""

import copy
import json
import random

import pytest
from _tools import load_tool

from xbar_tfmot.core import mapping as mapping_lib
from xbar_tfmot.core.mapping import CrossbarMapping, MappingError

FUZZ = load_tool("fuzz_mapping")


def test_a_few_hundred_fuzzed_documents_load_or_name_the_path():
  result = FUZZ.fuzz(300, seed=1, bound=10.0, large=False)
  assert not result["failures"], json.dumps(result["failures"][:3])[:3000]
  assert result["counts"]["MappingError"] > 100 and result["counts"]["valid"] > 10


def _schema_first_path(data):
  """The first bad path of the full schema, as every read reported it before (320dc2a)."""
  errors = list(mapping_lib._validator().iter_errors(data))
  if not errors:
    return None
  first = min(errors, key=lambda e: [(0, p) if isinstance(p, int) else (1, str(p))
                                     for p in e.absolute_path])
  return mapping_lib.format_path(first.absolute_path)


def test_schema_errors_are_named_as_the_full_schema_names_them():
  rng = random.Random(7)
  seeds = [FUZZ.random_document(rng) for _ in range(12)]
  compared = 0
  for _ in range(400):
    data = copy.deepcopy(rng.choice(seeds))
    for _ in range(rng.choice([1, 2])):
      mutate = rng.choice([FUZZ.m_replace, FUZZ.m_number, FUZZ.m_delete, FUZZ.m_add_key,
                           FUZZ.m_list, FUZZ.m_cells])
      data, _ = mutate(rng, data)
    if FUZZ.DEEP in json.dumps(data):
      continue
    want = _schema_first_path(data)
    if want is None:
      continue
    with pytest.raises(MappingError) as error:
      mapping_lib.validate_document(data)
    assert error.value.path == want, str(error.value)
    compared += 1
  assert compared > 150


def _doc():
  return FUZZ.random_document(random.Random(3))


def _with(edit):
  data = _doc()
  while not data["layers"] or not data["layers"][0]["crossbars"]:
    data = FUZZ.random_document(random.Random(len(json.dumps(data))))
  edit(data)
  return json.dumps(data)


@pytest.mark.parametrize("text, path, message", [
    ("[1, 2]", "", "is not of type 'object'"),
    ("[" * 100_000, "", "nested too deeply"),
    ('{"version": ' + "9" * 5000 + "}", "", "not valid JSON here"),
    (_with(lambda d: d["layers"][0]["crossbars"][0]["columns"].__setitem__(0, 2**70)),
     "layers[0].crossbars[0].columns[0]", "out of range"),
    (_with(lambda d: d["layers"][0]["crossbars"][0].__setitem__("id", 2**64)),
     "layers[0].crossbars[0].id", "out of range"),
    (_with(lambda d: d["layers"][0]["crossbars"][0]["columns"].__setitem__(0, 1e300)),
     "layers[0].crossbars[0].columns[0]", "without a fraction"),
    (_with(lambda d: d["layers"][0]["input_permutation"].__setitem__(0, 2.0)),
     "layers[0].input_permutation[0]", "without a fraction"),
    (_with(lambda d: d["totals"].__setitem__("reduction", float("-inf"))),
     "totals.reduction", "not a finite number"),
    (_with(lambda d: d["layers"][0]["counts"].__setitem__("utilization", float("nan"))),
     "layers[0].counts.utilization", "not a finite number"),
    (_with(lambda d: d["model"].__setitem__("input_shape", [[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]])),
     "model.input_shape" + "[0]" * 17, "nested deeper than 16"),
    (_with(lambda d: d["model"].__setitem__("input_shape", [None, float("nan")])),
     "model.input_shape[1]", "not a finite number"),
    (_with(lambda d: d["spec"].__setitem__("rows", 10**12)), "spec.rows", "maximum"),
    (_with(lambda d: d["layers"][0].__setitem__("kernel_shape", [2**40, 4])),
     "layers[0].kernel_shape[0]", "maximum"),
])


def test_fuzzing_finds_named_errors_not_crashes(text, path, message, tmp_path):
  with pytest.raises(MappingError) as error:
    CrossbarMapping.from_json(text)
  assert error.value.path == path, str(error.value)
  assert message in str(error.value)
  file = tmp_path / "mapping.json"
  file.write_text(text)
  from xbar_tfmot.export.exporter import read_mapping
  with pytest.raises(MappingError) as error:
    read_mapping(file)
  assert error.value.path == path


def test_flat_layer_whose_kernel_shape_claims_billions_of_rows_is_refused_cheaply():
  """The groups' sizes are checked before the expected unit order is built, so a kernel shape
  that does not fit the document cannot make the reader allocate for it."""
  data = _doc()
  data["spec"] = {**data["spec"], "mapping": "flat", "rows": 4, "cols": 4, "weight_bits": 8,
                  "cell_bits": 8, "differential": False, "kin": None, "kout": None}
  data["layers"] = [{
      "name": "c", "type": "Conv2D", "kernel_shape": [50000, 50000, 1, 1],
      "row_order": "channel_major", "unit": "row", "unit_rows": 1, "kin": 4, "kout": 4,
      "replicas": data["spec"]["replicas"], "input_permutation": [0], "groups": [[0]],
      "counts": {"dense": 1, "crossbars": 0, "nonzero_weights": 0, "cells_per_crossbar": 16,
                 "utilization": 0.0},
      "crossbars": []}]
  with pytest.raises(MappingError, match=r"^layers\[0\]\.groups: 1 groups; the layer has "
                                         r"625000000 input groups"):
    mapping_lib.validate_document(data)


def test_non_utf8_file(tmp_path):
  file = tmp_path / "mapping.json"
  file.write_bytes(b"\xff\xfe{}")
  with pytest.raises(MappingError, match="^<root>: not valid JSON: the file is not UTF-8"):
    CrossbarMapping.from_json(file)


@pytest.mark.parametrize("text", ["[[[[[]]]]]", "[]", "[1]"])


def test_a_top_level_that_is_not_an_object_is_a_mapping_error(text):
  """Found by fuzzing: the document was copied into a dict before it was validated."""
  with pytest.raises(MappingError, match="^<root>: .* is not of type 'object'"):
    CrossbarMapping.from_json(text)
  with pytest.raises(MappingError, match="^<root>: 1000 is not of type 'object'"):
    CrossbarMapping(1000)
