"""Duplicate JSON keys are refused, naming the key, its path and the file, by every reader:
the mapping (text, file, export folder), crossbar presets, hardware presets and overrides."""

import json
import random

import pytest
from _tools import load_tool

from xbar_tfmot.core import strict_json
from xbar_tfmot.core.hardware import HardwareError, parse_hardware, parse_override
from xbar_tfmot.core.hardware import preset_path as chip_preset_path
from xbar_tfmot.core.mapping import CrossbarMapping, MappingError
from xbar_tfmot.core.spec import parse_spec
from xbar_tfmot.core.spec import preset_path as crossbar_preset_path
from xbar_tfmot.export.exporter import read_mapping

FUZZ = load_tool("fuzz_mapping")


def _dump(value) -> str:
  """JSON text of `value`, where an object is a list of `("obj", [(key, value), ...])` so that a
  key may appear twice."""
  if isinstance(value, tuple) and value[0] == "obj":
    return "{" + ", ".join(f"{json.dumps(k)}: {_dump(v)}" for k, v in value[1]) + "}"
  if isinstance(value, list):
    return "[" + ", ".join(_dump(v) for v in value) + "]"
  return json.dumps(value)


def _random_value(rng: random.Random, depth: int, objects: list):
  kind = rng.choice(["obj", "list", "scalar"] if depth < 4 else ["scalar"])
  if kind == "scalar":
    return rng.choice([0, -3, 1.5, "a", "", True, None])
  if kind == "list":
    return [_random_value(rng, depth + 1, objects) for _ in range(rng.randrange(4))]
  keys = rng.sample(["a", "b", "name", "x y", "é", ""], rng.randrange(5))
  obj = ("obj", [(k, _random_value(rng, depth + 1, objects)) for k in keys])
  objects.append(obj)
  return obj


def _path_of(root, target, path=""):
  """Brute force: the path of the object `target` inside `root` (identity), else None."""
  if root is target:
    return path
  if isinstance(root, tuple) and root[0] == "obj":
    for k, v in root[1]:
      found = _path_of(v, target, f"{path}.{k}" if path else k)
      if found is not None:
        return found
  elif isinstance(root, list):
    for i, v in enumerate(root):
      found = _path_of(v, target, f"{path}[{i}]")
      if found is not None:
        return found
  return None


def test_loads_agrees_with_json_and_names_an_injected_duplicate_like_a_brute_force():
  rng = random.Random(0)
  for _ in range(300):
    objects = []
    root = ("obj", [("top", _random_value(rng, 0, objects))])
    objects.append(root)
    text = _dump(root)
    assert strict_json.loads(text) == json.loads(text)
    target = rng.choice([o for o in objects if o[1]])
    key, value = rng.choice(target[1])
    target[1].insert(rng.randrange(len(target[1]) + 1), (key, rng.choice([7, "other", None])))
    parent = _path_of(root, target)
    expected = f"{parent}.{key}" if parent else key
    with pytest.raises(strict_json.DuplicateKeyError) as err:
      strict_json.loads(_dump(root), source="doc.json")
    assert (err.value.key, err.value.path) == (key, expected), _dump(root)
    assert str(err.value).startswith(f"doc.json: {expected}: duplicate key {key!r}")


def _mapping_text() -> str:
  return json.dumps(FUZZ.random_document(random.Random(3)), indent=1)


def test_mapping_duplicate_key_at_top_level_is_named_by_every_reader(tmp_path):
  text = _mapping_text()
  CrossbarMapping.from_json(text)  # the document itself is valid
  bad = text.replace('"granularity":', '"granularity": "crossbar", "granularity":', 1)
  assert json.loads(bad)  # Python's json takes it silently (the last one wins)
  (tmp_path / "mapping.json").write_text(bad)
  for read in (lambda: CrossbarMapping.from_json(bad),
               lambda: CrossbarMapping.from_json(tmp_path / "mapping.json"),
               lambda: read_mapping(tmp_path / "mapping.json"), lambda: read_mapping(tmp_path)):
    with pytest.raises(MappingError, match=r"^granularity: duplicate key 'granularity'") as err:
      read()
    assert err.value.path == "granularity"
  with pytest.raises(MappingError, match=r"mapping\.json'\); valid: each key at most once"):
    read_mapping(tmp_path)


def test_mapping_duplicate_key_nested_names_the_layer():
  data = json.loads(_mapping_text())
  second = data["layers"][1]
  text = json.dumps(data).replace(f'"name": "{second["name"]}"',
                                  f'"name": "{second["name"]}", "name": "other"', 1)
  with pytest.raises(MappingError, match=r"^layers\[1\]\.name: duplicate key 'name'") as err:
    CrossbarMapping.from_json(text)
  assert err.value.path == "layers[1].name"


def test_crossbar_preset_duplicates_top_level_and_nested(tmp_path):
  text = crossbar_preset_path("isaac_128x128").read_text()
  path = tmp_path / "mine.json"
  path.write_text(text.replace('"cols": 128', '"cols": 128, "cols": 64'))
  with pytest.raises(ValueError, match=r"mine\.json'.*: cols: duplicate key 'cols'"):
    parse_spec(str(path))
  path.write_text(text.replace("}", ', "layer_replicas": {"conv1": 2, "fc": 1, "conv1": 3}}'))
  with pytest.raises(ValueError, match=r"layer_replicas\.conv1: duplicate key 'conv1'"):
    parse_spec(str(path))
  path.write_text(text.replace("}", ', "layer_replicas": {"conv1": 2, "fc": 1}}'))
  assert parse_spec(str(path)).replicas_for("conv1") == 2  # the same file without the duplicate


def test_hardware_preset_duplicates_top_level_and_nested(tmp_path):
  data = json.loads(chip_preset_path("isaac_32nm").read_text())
  path = tmp_path / "hw.json"
  path.write_text(json.dumps(data))
  assert parse_hardware(str(path)).adc_bits == data["adc_bits"]
  path.write_text(json.dumps(data).replace('"adc_bits": 8', '"adc_bits": 8, "adc_bits": 4'))
  with pytest.raises(HardwareError, match=r"hw\.json'.*: adc_bits: duplicate key 'adc_bits'"):
    parse_hardware(str(path))
  data["sources"] = [{"a": 1}]
  path.write_text(json.dumps(data).replace('{"a": 1}', '{"a": 1, "a": 2}'))
  with pytest.raises(HardwareError, match=r"sources\[0\]\.a: duplicate key 'a'"):
    parse_hardware(str(path))
  with pytest.raises(HardwareError, match=r"override 'x'.*: k: duplicate key 'k'"):
    parse_override('x={"k": 1, "k": 2}')


@pytest.mark.parametrize("text, path", [
    ('{"a": {"x": 1, "x": 2}, "b": {"y": 1, "y": 2}}', "a.x"),
    ('[{"k": 1, "k": 2}, {"j": 1, "j": 2}]', "[0].k"),
    ('{"a": [0, {"x": 1, "x": 2}], "a2": {"z": 0, "z": 1}}', "a[1].x"),
])
def test_of_several_duplicates_the_first_in_document_order_is_named(text, path):
  with pytest.raises(strict_json.DuplicateKeyError) as err:
    strict_json.loads(text, source="doc.json")
  assert err.value.path == path and str(err.value).startswith(f"doc.json: {path}: duplicate key")
