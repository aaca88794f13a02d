"""The crossbar mapping document and its versioned JSON form (docs/design.md, "The mapping").

`CrossbarMapping` holds the JSON document; every write and read is checked against the JSON
Schema shipped in the package (`mapping_schema.json`) and against its own consistency, and
`check_kernels` checks it against a model's kernels (`xbar_tfmot.validate_mapping` reads them
from a Keras model). Every error is a `MappingError` naming the path of the first bad field,
e.g. `layers[3].crossbars[12].columns[5]`. Building a mapping from a model is
`xbar_tfmot.models.model_mapping.build_mapping`; this module knows no Keras.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import pathlib
from typing import Any, Iterable, Mapping

import jsonschema
import numpy as np

from xbar_tfmot.core import packing, strict_json
from xbar_tfmot.core.errors import UnknownLayerError, XbarError
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.spec import CrossbarSpec

FORMAT = "xbar_tfmot.crossbar_mapping"
VERSION = 1
SCHEMA_PATH = pathlib.Path(__file__).with_name("mapping_schema.json")
# First characters of JSON text that `from_json` reads as text rather than as a path.
_JSON_STARTS = frozenset("{[")
INT64_MAX = 2**63 - 1
# Largest input_shape nesting a document may have (Keras shapes nest one or two levels).
MAX_SHAPE_DEPTH = 16
# The per-layer arrays that grow with the model: checked with vectorised code, not the schema.
_BULK = ("input_permutation", "groups", "crossbars")
_CROSSBAR_KEYS = frozenset(("id", "input_group", "columns"))
_UNMAPPED_KEYS = frozenset(("name", "type", "reason"))
_SCALARS = frozenset((int, str, bool, type(None)))


class MappingError(XbarError, ValueError):
  """A mapping document that is malformed or does not match a model; `path` names the field."""

  def __init__(self, path: str, message: str):
    super().__init__(f"{path or '<root>'}: {message}")
    self.path = path


@functools.lru_cache(maxsize=None)
def schema() -> dict[str, Any]:
  """The mapping JSON Schema (draft 2020-12)."""
  return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _validator():
  return jsonschema.Draft202012Validator(schema())


@functools.lru_cache(maxsize=None)
def _layer_validator():
  """The schema's `layer` definition on its own (its `$ref`s resolve in the same `$defs`)."""
  return jsonschema.Draft202012Validator({"$ref": "#/$defs/layer", "$defs": schema()["$defs"]})


def format_path(parts: Iterable[Any]) -> str:
  """`['layers', 3, 'crossbars']` -> `layers[3].crossbars`."""
  out = ""
  for part in parts:
    out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
  return out


class CrossbarMapping:
  """A validated mapping document; construct with `build_mapping` or `from_json`."""

  def __init__(self, data: Mapping[str, Any]):
    validate_document(data)  # first: a top level that is not an object is a MappingError
    self.data = dict(data)

  @property
  def spec(self) -> CrossbarSpec:
    return CrossbarSpec.from_dict(self.data["spec"])

  @property
  def granularity(self) -> str:
    return self.data["granularity"]

  @property
  def totals(self) -> dict[str, Any]:
    return dict(self.data["totals"])

  @property
  def layer_names(self) -> list[str]:
    return [layer["name"] for layer in self.data["layers"]]

  def layer(self, name: str) -> dict[str, Any]:
    for layer in self.data["layers"]:
      if layer["name"] == name:
        return layer
    raise UnknownLayerError(
        f"layer {name!r} is not in the mapping; mapped layers: {self.layer_names}.")

  def geometry(self, name: str) -> LayerGeometry:
    layer = self.layer(name)
    return LayerGeometry(name, layer["type"], tuple(layer["kernel_shape"]), self.spec)

  def packing(self, name: str) -> packing.LayerPacking:
    """The layer's crossbars as arrays (`columns` -1 padded to `kout`)."""
    layer = self.layer(name)
    geometry = self.geometry(name)
    crossbars = layer["crossbars"]
    columns = np.full((len(crossbars), geometry.kout), -1, np.int64)
    width = np.array([len(x["columns"]) for x in crossbars], np.int64)
    flat = np.fromiter((o for x in crossbars for o in x["columns"]), np.int64, int(width.sum()))
    columns[np.repeat(np.arange(len(crossbars)), width),
            np.arange(flat.size) - np.repeat(np.cumsum(width) - width, width)] = flat
    group = np.array([x["input_group"] for x in crossbars], np.int64)
    perm = np.array(layer["input_permutation"], np.int64)
    return packing.LayerPacking(geometry, self.granularity, perm,
                                packing.group_units(geometry, perm), group, columns)

  def to_json(self, path: str | pathlib.Path | None = None, indent: int | None = None) -> str:
    """The JSON text (validated first); also written to `path` if given."""
    validate_document(self.data)
    text = json.dumps(self.data, indent=indent)
    if path is not None:
      pathlib.Path(path).write_text(text, encoding="utf-8")
    return text

  @classmethod
  def from_json(cls, source: str | pathlib.Path) -> "CrossbarMapping":
    """Reads a mapping from JSON text or a file path, validating schema and consistency.

    A `str` that starts (after white space) like a JSON value other than a bare word is taken
    as JSON text, anything else as a path. Any text that does not parse (truncated, not UTF-8,
    nested too deeply, an integer of thousands of digits) is a `MappingError` at the root; a
    key repeated in one object is a `MappingError` at that key's path.
    """
    text = source if isinstance(source, str) else None
    file = None
    if text is None or not text.lstrip()[:1] in _JSON_STARTS:
      file = str(source)
      raw = pathlib.Path(source).read_bytes()
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise MappingError("", f"not valid JSON: the file is not UTF-8 text ({e}).") from None
    try:
      data = strict_json.loads(text)
    except strict_json.DuplicateKeyError as e:
      where = f" (file {file!r})" if file else ""
      raise MappingError(e.path, f"duplicate key {e.key!r} in a JSON object{where}; valid: each "
                         f"key at most once per object.") from None
    except json.JSONDecodeError as e:
      raise MappingError("", f"not valid JSON: {e}") from None
    except RecursionError:
      raise MappingError("", "not valid JSON here: nested too deeply to read.") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
      raise MappingError("", f"not valid JSON here: {e}") from None
    return cls(data)

  def check_kernels(self, kernels: Mapping[str, tuple[str, Any]], model_name: str) -> None:
    """Raises MappingError (first bad path) unless the mapping fits the given kernels.

    `kernels` is `{layer name: (layer type, kernel as computed)}` for every mapped layer of a
    model. Checks names, types, kernel shapes, the tiling, and that every non-zero weight sits
    in exactly one crossbar column while no crossbar column holds only zeros.
    """
    seen = set()
    for i, layer in enumerate(self.data["layers"]):
      path = f"layers[{i}]"
      if layer["name"] not in kernels:
        raise MappingError(f"{path}.name", f"layer {layer['name']!r} is not a mapped layer of "
                           f"model {model_name!r}; its mapped layers: {sorted(kernels)}.")
      seen.add(layer["name"])
      kind, kernel = kernels[layer["name"]]
      if kind != layer["type"]:
        raise MappingError(f"{path}.type", f"{layer['type']} in the mapping, {kind} in the model.")
      if list(np.shape(kernel)) != layer["kernel_shape"]:
        raise MappingError(f"{path}.kernel_shape", f"{layer['kernel_shape']} in the mapping, "
                           f"{list(np.shape(kernel))} in the model.")
      _check_against_kernel(path, self.packing(layer["name"]), layer, kernel)
    missing = sorted(set(kernels) - seen)
    if missing:
      raise MappingError("layers", f"model layers {missing} are mapped layers but have no entry.")


def _check_against_kernel(path: str, pack: packing.LayerPacking, layer: dict, kernel) -> None:
  geometry = pack.geometry
  seg = packing.nonzero_segments(geometry, kernel, pack.permutation)
  cols = pack.columns
  used = cols >= 0
  n, slot = np.nonzero(used)
  g, o = pack.crossbar_group[n], cols[n, slot]
  empty = ~seg[g, o]
  if empty.any():
    k = int(np.argmax(empty))
    raise MappingError(
        f"{path}.crossbars[{n[k]}].columns[{slot[k]}]",
        f"output channel {o[k]} of input group {g[k]} holds no non-zero weight in the model, "
        f"so it takes a crossbar column for nothing.")
  covered = np.zeros_like(seg)
  covered[g, o] = True
  lost = seg & ~covered
  if lost.any():
    gl, ol = np.argwhere(lost)[0]
    raise MappingError(
        f"{path}.crossbars",
        f"the non-zero weights of output channel {ol} in input group {gl} are in no crossbar.")
  counts = geometry.counts(np.take(np.asarray(kernel), pack.permutation, axis=-2))
  if layer["counts"]["nonzero_weights"] != counts.nonzero_weights:
    raise MappingError(f"{path}.counts.nonzero_weights",
                       f"{layer['counts']['nonzero_weights']} in the mapping, "
                       f"{counts.nonzero_weights} in the model.")


def validate_document(data: Any) -> None:
  """Schema and internal consistency; raises MappingError naming the first bad path.

  The schema checks the document's structure once, on a skeleton whose bulk arrays (each
  layer's `input_permutation`, `groups` and `crossbars`, which grow with the model) are
  emptied where a vectorised check finds them well formed; a bulk array that is not well
  formed stays in the skeleton, so the schema reports it exactly as it would have alone. Of
  several errors the one with the earliest path is reported.
  """
  error = _first_schema_error(data)
  if error is not None:
    raise MappingError(format_path(error.absolute_path), error.message)
  _check_finite(data)
  try:
    spec = CrossbarSpec.from_dict(data["spec"])
  except (TypeError, ValueError) as e:
    raise MappingError("spec", str(e)) from None
  totals = {"dense": 0, "crossbars": 0, "nonzero_weights": 0, "cells": 0}
  for i, layer in enumerate(data["layers"]):
    _check_layer(f"layers[{i}]", layer, spec, data["granularity"], totals)
  expected = {
      "dense": totals["dense"],
      "crossbars": totals["crossbars"],
      "nonzero_weights": totals["nonzero_weights"],
  }
  for key, value in expected.items():
    if data["totals"][key] != value:
      raise MappingError(f"totals.{key}", f"{data['totals'][key]} but the layers sum to {value}.")


def _plain_counts(values: list) -> bool:
  """True if `values` are JSON integers (Python `int`, not bool) in `0 .. INT64_MAX`."""
  if not values:
    return True
  return set(map(type, values)) == {int} and min(values) >= 0 and max(values) <= INT64_MAX


def _bulk_ok(key: str, value: Any) -> bool:
  """Whether a layer's bulk array is well formed (what the schema would accept, stricter)."""
  if type(value) is not list:
    return False
  if key == "input_permutation":
    return _plain_counts(value)
  if key == "groups":
    return (all(type(m) is list and m for m in value)
            and _plain_counts(list(itertools.chain.from_iterable(value))))
  if not all(type(x) is dict and x.keys() == _CROSSBAR_KEYS for x in value):
    return False
  columns = [x["columns"] for x in value]
  return (all(type(c) is list and c for c in columns)
          and _plain_counts([x["id"] for x in value])
          and _plain_counts([x["input_group"] for x in value])
          and _plain_counts(list(itertools.chain.from_iterable(columns))))


def _error_key(error) -> list:
  return [(0, p) if isinstance(p, int) else (1, str(p)) for p in error.absolute_path]


def _first_schema_error(data: Any):
  """The schema error with the earliest path, or None.

  The top level is validated with `layers` (if a list) and `unmapped` (if well formed)
  emptied, then the layers one by one, each with its well-formed bulk arrays emptied; every
  error inside `layers[i]` sorts before any inside `layers[j > i]`, so the layers stop at the
  first one with an error.
  """
  validator = _validator()
  if type(data) is not dict:
    return min(validator.iter_errors(data), key=_error_key, default=None)
  top = dict(data)
  layers = data.get("layers")
  if type(layers) is list:
    top["layers"] = []
  else:
    layers = []
  unmapped = data.get("unmapped")
  if (type(unmapped) is list and all(type(x) is dict and x.keys() == _UNMAPPED_KEYS
                                     and set(map(type, x.values())) == {str} for x in unmapped)):
    top["unmapped"] = []
  errors = list(validator.iter_errors(top))
  layer_schema = _layer_validator()
  for i, layer in enumerate(layers):
    if type(layer) is dict:
      layer = dict(layer)
      for key in _BULK:
        if key in layer and _bulk_ok(key, layer[key]):
          layer[key] = []
    found = list(layer_schema.iter_errors(layer))
    if found:
      for e in found:
        e.path.extendleft(["layers", i][::-1])
      errors += found
      break
  return min(errors, key=_error_key, default=None)


def _check_finite(data: dict) -> None:
  """No NaN or infinity in the numbers the schema leaves open; a bounded input_shape."""
  fields = [("totals.reduction", data["totals"]["reduction"]),
            ("totals.utilization", data["totals"]["utilization"])]
  fields += [(f"layers[{i}].counts.utilization", layer["counts"]["utilization"])
             for i, layer in enumerate(data["layers"])]
  for path, value in fields:
    if not math.isfinite(value):
      raise MappingError(path, f"{value!r} is not a finite number.")
  stack = [(("model", "input_shape"), data["model"]["input_shape"], 0)]
  while stack:
    parts, value, depth = stack.pop()
    if depth > MAX_SHAPE_DEPTH:
      raise MappingError(format_path(parts), f"nested deeper than {MAX_SHAPE_DEPTH} levels.")
    if isinstance(value, float) and not math.isfinite(value):
      raise MappingError(format_path(parts), f"{value!r} is not a finite number.")
    if isinstance(value, dict):
      stack.extend((parts + (k,), v, depth + 1) for k, v in value.items())
    elif isinstance(value, list) and not set(map(type, value)) <= _SCALARS:
      stack.extend((parts + (k,), v, depth + 1) for k, v in enumerate(value)
                   if type(v) in (list, dict, float))


def _int_array(values: list, where) -> np.ndarray:
  """`values` (schema-checked integers) as int64; MappingError at `where(k)` for a value that
  is not a plain JSON integer (`3.0`, `1e300`) or does not fit in 64 bits."""
  if set(map(type, values)) <= {int}:
    try:
      return np.array(values, np.int64).reshape(-1)
    except OverflowError:
      pass
  for k, v in enumerate(values):
    if type(v) is not int:
      raise MappingError(where(k), f"{v!r}: expected an integer written without a fraction or "
                         f"exponent.")
    if not -INT64_MAX <= v <= INT64_MAX:
      raise MappingError(where(k), f"{v} is out of range; valid: below 2**63.")
  return np.array(values, np.int64).reshape(-1)


def _first_repeat(group: np.ndarray, channel: np.ndarray, cout: int) -> int:
  """Index of the first (group, channel) pair equal to an earlier one, or -1."""
  if not group.size:
    return -1
  if int(group.max()) < 2**62 // max(cout, 1):  # one int64 key (what a real document needs)
    _, first = np.unique(group * cout + channel, return_index=True)
    repeated = np.ones(group.size, bool)
    repeated[first] = False
    return int(np.argmax(repeated)) if repeated.any() else -1
  order = np.lexsort((channel, group))  # stable: equal pairs keep their list order
  same = (group[order][1:] == group[order][:-1]) & (channel[order][1:] == channel[order][:-1])
  repeats = order[1:][same]
  return int(repeats.min()) if repeats.size else -1


def _check_layer(path: str, layer: dict, spec: CrossbarSpec, granularity: str,
                 totals: dict) -> None:
  try:
    geometry = LayerGeometry(layer["name"], layer["type"], tuple(layer["kernel_shape"]), spec)
  except ValueError as e:
    raise MappingError(f"{path}.kernel_shape", str(e)) from None
  unit = "row" if geometry.unit_rows == 1 and geometry.taps > 1 else "channel"
  for key, value in (("unit", unit), ("unit_rows", geometry.unit_rows), ("kin", geometry.kin),
                     ("kout", geometry.kout), ("replicas", geometry.replicas)):
    if layer[key] != value:
      raise MappingError(f"{path}.{key}", f"{layer[key]!r} but the spec and kernel shape give "
                         f"{value!r}.")
  ppath = f"{path}.input_permutation"
  perm = _int_array(layer["input_permutation"], lambda k: f"{ppath}[{k}]")
  try:
    perm = packing.check_permutation(geometry, perm)
  except ValueError as e:
    raise MappingError(ppath, str(e)) from None
  groups = layer["groups"]
  if len(groups) != geometry.g_in:
    raise MappingError(f"{path}.groups", f"{len(groups)} groups; the layer has "
                       f"{geometry.g_in} input groups.")
  # Sizes first (Python ints, no allocation), so the expected order below is bounded by the
  # document's own size whatever the kernel shape claims.
  kin, units = geometry.kin, geometry.units
  for g, members in enumerate(groups):
    size = kin if g < len(groups) - 1 else units - (len(groups) - 1) * kin
    if len(members) != size:
      raise MappingError(f"{path}.groups[{g}]", f"{len(members)} units; the input permutation "
                         f"cut into groups of {kin} gives {size} units in this group.")
  flat = _int_array(list(itertools.chain.from_iterable(groups)),
                    lambda k: f"{path}.groups[{k // kin}][{k % kin}]")
  order = packing.unit_order(geometry, perm)
  bad = np.nonzero(flat != order)[0]
  if bad.size:
    g = int(bad[0]) // kin
    want = order[g * kin:(g + 1) * kin].tolist()
    raise MappingError(f"{path}.groups[{g}]", f"{groups[g]} does not match the input "
                       f"permutation cut into groups of {kin}: {want}.")
  crossbars = layer["crossbars"]
  cpath = f"{path}.crossbars"
  ids = _int_array([x["id"] for x in crossbars], lambda j: f"{cpath}[{j}].id")
  bad = np.nonzero(ids != np.arange(ids.size))[0]
  if bad.size:
    j = int(bad[0])
    raise MappingError(f"{cpath}[{j}].id", f"{ids[j]}; ids are 0, 1, ... in list order.")
  group = _int_array([x["input_group"] for x in crossbars], lambda j: f"{cpath}[{j}].input_group")
  bad = np.nonzero(group >= geometry.g_in)[0]
  if bad.size:
    j = int(bad[0])
    raise MappingError(f"{cpath}[{j}].input_group",
                       f"{group[j]}; valid: 0 <= group < {geometry.g_in}.")
  width = np.array([len(x["columns"]) for x in crossbars], np.int64)
  bad = np.nonzero(width > geometry.kout)[0]
  if bad.size:
    j = int(bad[0])
    raise MappingError(f"{cpath}[{j}].columns",
                       f"{width[j]} columns; a crossbar holds {geometry.kout}.")
  owner = np.repeat(np.arange(ids.size), width)
  slot = np.arange(owner.size) - np.repeat(np.cumsum(width) - width, width)
  where = lambda k: f"{cpath}[{owner[k]}].columns[{slot[k]}]"
  channel = _int_array(list(itertools.chain.from_iterable(x["columns"] for x in crossbars)),
                       where)
  bad = np.nonzero(channel >= geometry.cout)[0]
  if bad.size:
    k = int(bad[0])
    raise MappingError(where(k), f"output channel {channel[k]}; valid: 0 <= channel < "
                       f"{geometry.cout}.")
  k = _first_repeat(group[owner], channel, geometry.cout)
  if k >= 0:
    raise MappingError(where(k), f"output channel {channel[k]} of input group "
                       f"{group[owner[k]]} is already held by another column.")
  if granularity == "crossbar" and channel.size:
    out_group = channel // geometry.kout
    lead = np.repeat(out_group[np.cumsum(width) - width], width)
    bad = np.nonzero(out_group != lead)[0]
    if bad.size:
      k = int(bad[0])
      raise MappingError(where(k), f"output channel {channel[k]} is outside the output group "
                         f"of the crossbar's first column; at crossbar grain a crossbar holds "
                         f"one block.")
  counts = layer["counts"]
  r = geometry.replicas
  for key, value in (("dense", geometry.dense_crossbars * r), ("crossbars", len(crossbars) * r),
                     ("cells_per_crossbar", geometry.kin * geometry.unit_rows * geometry.kout)):
    if counts[key] != value:
      raise MappingError(f"{path}.counts.{key}", f"{counts[key]} but the layer gives {value}.")
  totals["dense"] += counts["dense"]
  totals["crossbars"] += counts["crossbars"]
  totals["nonzero_weights"] += counts["nonzero_weights"]
  totals["cells"] += counts["crossbars"] * counts["cells_per_crossbar"]


def layer_entry(pack: packing.LayerPacking, kernel) -> dict[str, Any]:
  """The JSON entry of one packed layer."""
  geometry = pack.geometry
  r = geometry.replicas
  crossbars = pack.n_crossbars * r
  nonzero = int(np.count_nonzero(np.asarray(kernel))) * r
  cells = geometry.kin * geometry.unit_rows * geometry.kout
  used = pack.columns >= 0
  width = used.sum(axis=1)
  flat = pack.columns[used].tolist()
  bounds = np.concatenate([[0], np.cumsum(width)]).tolist()
  groups = pack.groups.tolist()
  group_sizes = (pack.groups >= 0).sum(axis=1).tolist()
  return {
      "name": geometry.name,
      "type": geometry.kind,
      "kernel_shape": list(geometry.kernel_shape),
      "row_order": "channel_major",
      "unit": "row" if geometry.unit_rows == 1 and geometry.taps > 1 else "channel",
      "unit_rows": geometry.unit_rows,
      "kin": geometry.kin,
      "kout": geometry.kout,
      "replicas": r,
      "input_permutation": pack.permutation.tolist(),
      "groups": [members[:size] for members, size in zip(groups, group_sizes)],
      "counts": {
          "dense": geometry.dense_crossbars * r,
          "crossbars": crossbars,
          "nonzero_weights": nonzero,
          "cells_per_crossbar": cells,
          "utilization": nonzero / (crossbars * cells) if crossbars else 0.0,
      },
      "crossbars": [
          {"id": j, "input_group": g, "columns": flat[bounds[j]:bounds[j + 1]]}
          for j, g in enumerate(pack.crossbar_group.tolist())
      ],
  }




def document(spec: CrossbarSpec, granularity: str, model: Mapping[str, Any],
             entries: list[dict[str, Any]], unmapped: list[dict[str, str]]) -> CrossbarMapping:
  """A validated mapping from its layer entries (`layer_entry`), totals summed here."""
  dense = sum(e["counts"]["dense"] for e in entries)
  crossbars = sum(e["counts"]["crossbars"] for e in entries)
  nonzero = sum(e["counts"]["nonzero_weights"] for e in entries)
  cells = sum(e["counts"]["crossbars"] * e["counts"]["cells_per_crossbar"] for e in entries)
  return CrossbarMapping({
      "format": FORMAT,
      "version": VERSION,
      "spec": spec.to_dict(),
      "model": dict(model),
      "granularity": granularity,
      "layers": entries,
      "unmapped": unmapped,
      "totals": {
          "dense": dense,
          "crossbars": crossbars,
          "reduction": 1.0 - crossbars / dense if dense else 0.0,
          "utilization": nonzero / cells if cells else 0.0,
          "nonzero_weights": nonzero,
      },
  })
