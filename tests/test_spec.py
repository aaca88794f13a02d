"""CrossbarSpec: validation, derived columns, serialisation and the command-line form."""

import json
import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xbar_tfmot.core.spec import CrossbarSpec, parse_spec, preset_names


@pytest.mark.parametrize("kwargs, kout", [
    (dict(rows=128, cols=128), 128),
    (dict(rows=128, cols=128, weight_bits=8, cell_bits=2), 32),
    (dict(rows=128, cols=128, weight_bits=8, cell_bits=2, differential=True), 16),
    (dict(rows=64, cols=10, weight_bits=8, cell_bits=3), 3),  # ceil(8/3) = 3 slices
    (dict(rows=64, cols=10, weight_bits=8, cell_bits=3, differential=True), 1),
    (dict(rows=144, cols=4, mapping="direct", kin=16, kout=4), 4),
])
def test_logical_columns(kwargs, kout):
  assert CrossbarSpec(**kwargs).logical_cols == kout


@pytest.mark.parametrize("kwargs, field", [
    (dict(rows=0, cols=128), "rows"),
    (dict(rows=128, cols=-4), "cols"),
    (dict(rows=128, cols=128, weight_bits=0), "weight_bits"),
    (dict(rows=128, cols=128, weight_bits=4, cell_bits=8), "cell_bits"),
    (dict(rows=128, cols=128, mapping="diagonal"), "mapping"),
    (dict(rows=128, cols=128, mapping="direct", kout=4), "kin"),
    (dict(rows=128, cols=128, mapping="direct", kin=16, kout=0), "kout"),
    (dict(rows=128, cols=128, kin=16), "kin"),
    (dict(rows=128, cols=3, weight_bits=8, cell_bits=2), "cols"),
    (dict(rows=128, cols=128, replicas=0), "replicas"),
    (dict(rows=128, cols=128, layer_replicas={"conv1": 0}), "layer_replicas['conv1']"),
    (dict(rows=128, cols=128, differential="yes"), "differential"),
    (dict(rows=12.5, cols=128), "rows"),
])
def test_invalid_fields_are_named(kwargs, field):
  with pytest.raises(ValueError, match=re.escape(f"CrossbarSpec.{field}")):
    CrossbarSpec(**kwargs)


def test_hashable_and_frozen():
  a = CrossbarSpec(rows=128, cols=128, layer_replicas={"b": 2, "a": 3})
  b = CrossbarSpec(rows=128, cols=128, layer_replicas={"a": 3, "b": 2})
  assert a == b and hash(a) == hash(b) and len({a, b}) == 1
  assert a.replicas_for("a") == 3 and a.replicas_for("other") == 1
  with pytest.raises(AttributeError):
    a.rows = 64


specs = st.builds(
    lambda rows, cols, wb, cb, diff, mapping, kin, kout, rep, lrep: CrossbarSpec(
        rows=rows, cols=max(cols, 2 * wb), weight_bits=wb, cell_bits=min(cb, wb), differential=diff,
        mapping=mapping, kin=kin if mapping == "direct" else None,
        kout=kout if mapping == "direct" else None, replicas=rep, layer_replicas=lrep),
    st.integers(1, 512), st.integers(1, 512), st.integers(1, 16), st.integers(1, 16), st.booleans(),
    st.sampled_from(["kernel_aligned", "flat", "direct"]), st.integers(1, 64), st.integers(1, 64),
    st.integers(1, 4), st.dictionaries(st.sampled_from(["c1", "fc"]), st.integers(1, 4)))


@given(specs)
def test_round_trips(spec):
  assert CrossbarSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
  assert CrossbarSpec.from_string(spec.to_string()) == spec


def test_short_string_form():
  assert str(CrossbarSpec(rows=128, cols=128)) == "128x128"
  spec = CrossbarSpec.from_string("256x128, cell_bits=2, differential=true")
  assert (spec.rows, spec.cols, spec.cell_bits, spec.differential) == (256, 128, 2, True)


@pytest.mark.parametrize("text, match", [
    ("128", "ROWSxCOLS"),
    ("128x128,cell_bits", "field=value"),
    ("128x128,cell_bits=two", "cell_bits"),
    ("128x128,colour=red", "unknown field"),
    ("128x128,differential=maybe", "differential"),
])
def test_bad_strings(text, match):
  with pytest.raises(ValueError, match=match):
    CrossbarSpec.from_string(text)


def test_presets_load_by_name():
  presets = {name: CrossbarSpec.preset(name) for name in preset_names()}
  assert presets["isaac_128x128"].logical_cols == 16  # 8-bit weights, 2-bit cells, pairs
  assert presets["single_cell_256x256"].logical_cols == 256
  semi = presets["semi_folded_k16x4"]
  assert (semi.mapping, semi.kin, semi.kout) == ("direct", 16, 4)


def test_parse_spec_reads_names_files_and_short_forms(tmp_path):
  assert parse_spec("isaac_128x128") == CrossbarSpec.preset("isaac_128x128")
  path = tmp_path / "mine.json"
  path.write_text(json.dumps({"rows": 64, "cols": 32}))
  assert parse_spec(str(path)) == CrossbarSpec(rows=64, cols=32)
  assert parse_spec("64x32") == CrossbarSpec(rows=64, cols=32)


@pytest.mark.parametrize("text, match", [
    ("isaac", "not a preset name.*isaac_128x128"),
    ("nope.json", "does not exist.*isaac_128x128"),
])
def test_parse_spec_names_the_presets_on_bad_input(text, match):
  with pytest.raises(ValueError, match=match):
    parse_spec(text)


def test_unknown_preset_and_bad_preset_file(tmp_path):
  with pytest.raises(ValueError, match="'isaac' is unknown; valid: isaac_128x128"):
    CrossbarSpec.preset("isaac")
  path = tmp_path / "list.json"
  path.write_text("[1, 2]")
  with pytest.raises(ValueError, match="list.json.*expected a JSON object"):
    parse_spec(str(path))
  path.write_text("{broken")
  with pytest.raises(ValueError, match="list.json.*cannot be read as JSON"):
    parse_spec(str(path))
