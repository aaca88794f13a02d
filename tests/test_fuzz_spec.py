"""Fuzzing spec strings, preset files and configs (tools/fuzz_spec.py, a few hundred here), and
the crashes it found in `CrossbarSpec.from_dict`."""

import json

import pytest
from _tools import load_tool

from xbar_tfmot.core.spec import CrossbarSpec, parse_spec


def test_fuzzed_spec_strings_and_preset_files_parse_or_say_why():
  result = load_tool("fuzz_spec").fuzz_specs(400, seed=3)
  assert not result["failures"], json.dumps(result["failures"][:3])[:2000]


def test_fuzzed_configs_pass_or_name_the_field():
  result = load_tool("fuzz_spec").fuzz_configs(200, seed=3)
  assert not result["failures"], json.dumps(result["failures"][:3])[:2000]
  assert 0 < result["accepted"] < 200


@pytest.mark.parametrize("document, match", [
    ({"rows": 1e999}, "missing field\\(s\\) \\['cols'\\]"),
    ({"rows": 8, "cols": 8, "layer_replicas": None}, "layer_replicas=None is invalid"),
    ({"rows": 8, "cols": 8, "layer_replicas": 3}, "layer_replicas=3 is invalid"),
])


def test_preset_documents_that_crashed_the_reader(tmp_path, document, match):
  path = tmp_path / "found.json"
  path.write_text(json.dumps(document))
  with pytest.raises(ValueError, match=match):
    parse_spec(str(path))
  with pytest.raises(ValueError, match=match):
    CrossbarSpec.from_dict(json.loads(path.read_text()))
