"""Fuzzing the mapping reader: generated and mutated documents through `from_json` and `read_mapping`.

Not a test (tests/test_fuzz_mapping.py runs a few hundred cases of it). Every case is a JSON
text made from a valid mapping document (built from random layers with `core` only, no Keras)
by one to three mutations: truncations, byte flips, wrong types, huge and negative numbers,
NaN and Infinity, deleted and unknown fields, duplicate or overlapping cells, out-of-range
indices, deep nesting, duplicate keys, non-UTF-8 bytes, very large files. Each case goes
through `CrossbarMapping.from_json` (text) and `xbar_tfmot.export.exporter.read_mapping` (the
text written to a `.json` file). A case passes when both load a document that writes back
to the same JSON, or both raise `MappingError` whose message starts with its path and whose
path names fields present in the document, each call within the time bound; anything else
(another exception, a slow call, different outcomes of the two readers) is a failure. The
process's peak memory is reported and bounded.

  .venv/bin/python tools/fuzz_mapping.py [--cases 10000] [--seed 0] [--time-bound 5]
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import os
import pathlib
import random
import resource
import sys
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from xbar_tfmot.core import mapping as mapping_lib  # noqa: E402
from xbar_tfmot.core import packing  # noqa: E402
from xbar_tfmot.core.geometry import LayerGeometry  # noqa: E402
from xbar_tfmot.core.mapping import CrossbarMapping, MappingError  # noqa: E402
from xbar_tfmot.core.spec import CrossbarSpec  # noqa: E402

DEEP = "__deep__"
SPECS = [
    CrossbarSpec(rows=36, cols=4),
    CrossbarSpec(rows=20, cols=6, cell_bits=4, mapping="flat", replicas=2),
    CrossbarSpec(rows=8, cols=8, mapping="direct", kin=3, kout=2, layer_replicas={"fc": 3}),
    CrossbarSpec(rows=16, cols=16, weight_bits=4, cell_bits=2, differential=True),
]
ODD_VALUES = [None, True, False, "", "x", "NaN", [], {}, [[]], {"a": 1}, 0, -1, 1, 2, 1.5, 3.0,
              -0.0, 2**31, 2**31 - 1, 2**63, 2**63 - 1, -2**63 - 1, 10**30, -10**30, 1e308,
              -1e308, float("nan"), float("inf"), float("-inf"), 1e-320, DEEP]


def random_document(rng: random.Random) -> dict[str, Any]:
  """A valid mapping document of a few random layers, pruned at random, either grain."""
  spec = rng.choice(SPECS)
  granularity = rng.choice(["crossbar", "column"])
  entries = []
  np_rng = np.random.default_rng(rng.randrange(2**32))
  for i in range(rng.randint(0, 4)):
    kind = rng.choice(["Dense", "Conv1D", "Conv2D"])
    name = "fc" if kind == "Dense" and i == 0 else f"{kind.lower()}_{i}"
    spatial = {"Dense": (), "Conv1D": (rng.randint(1, 3),),
               "Conv2D": (rng.randint(1, 2), rng.randint(1, 2))}[kind]
    shape = spatial + (rng.randint(1, 12), rng.randint(1, 12))
    geometry = LayerGeometry(name, kind, shape, spec)
    kernel = np_rng.normal(size=shape) * (np_rng.random(shape) < rng.random())
    perm = np_rng.permutation(geometry.cin) if rng.random() < 0.5 else None
    pack = packing.pack_layer(geometry, kernel, granularity, perm)
    entries.append(mapping_lib.layer_entry(pack, kernel))
  unmapped = [{"name": "dw", "type": "DepthwiseConv2D", "reason": "depthwise"}] * rng.randint(0, 1)
  model = {"name": "m", "input_shape": rng.choice([[None, 8, 8, 3], [None, 12], None,
                                                    [[None, 4], [None, 5]]])}
  return mapping_lib.document(spec, granularity, model, entries, unmapped).data


def _paths(data: Any, prefix=()) -> list[tuple]:
  out = [prefix]
  if isinstance(data, dict):
    for key, value in data.items():
      out += _paths(value, prefix + (key,))
  elif isinstance(data, list):
    for k, value in enumerate(data):
      out += _paths(value, prefix + (k,))
  return out


def _get(data: Any, path: tuple) -> Any:
  for part in path:
    data = data[part]
  return data


def _set(data: Any, path: tuple, value: Any) -> Any:
  if not path:
    return value
  _get(data, path[:-1])[path[-1]] = value
  return data


def _crossbars(data: dict) -> list[tuple[int, list]]:
  out = []
  for i, layer in enumerate(data.get("layers", []) if isinstance(data, dict) else []):
    if isinstance(layer, dict) and isinstance(layer.get("crossbars"), list):
      out.append((i, layer["crossbars"]))
  return out


# --- mutations of the parsed document ------------------------------------------------------

def m_replace(rng, data):
  path = rng.choice(_paths(data))
  return _set(data, path, copy.deepcopy(rng.choice(ODD_VALUES))), f"replace {path}"


def m_number(rng, data):
  paths = [p for p in _paths(data) if type(_get(data, p)) in (int, float)]
  if not paths:
    return m_replace(rng, data)
  path = rng.choice(paths)
  old = _get(data, path)
  new = rng.choice([old + 1, old - 1, -old, old * 1000, old + 2**40, -1, 0, 2**63, 10**25,
                    float("nan"), float("inf"), float(old), old + 0.5])
  return _set(data, path, new), f"number {path}: {old!r} -> {new!r}"


def m_delete(rng, data):
  paths = [p for p in _paths(data) if p]
  if not paths:
    return m_replace(rng, data)
  path = rng.choice(paths)
  parent = _get(data, path[:-1])
  del parent[path[-1]]
  return data, f"delete {path}"


def m_add_key(rng, data):
  paths = [p for p in _paths(data) if isinstance(_get(data, p), dict)]
  path = rng.choice(paths)
  _get(data, path)[rng.choice(["colour", "id", "extra", ""])] = rng.choice(ODD_VALUES[:12])
  return data, f"add key at {path}"


def m_list(rng, data):
  paths = [p for p in _paths(data) if isinstance(_get(data, p), list) and _get(data, p)]
  if not paths:
    return m_replace(rng, data)
  path = rng.choice(paths)
  items = _get(data, path)
  op = rng.choice(["duplicate", "drop", "swap", "reverse", "truncate", "empty"])
  k = rng.randrange(len(items))
  if op == "duplicate":
    items.insert(k, copy.deepcopy(items[k]))
  elif op == "drop":
    items.pop(k)
  elif op == "swap":
    j = rng.randrange(len(items))
    items[k], items[j] = items[j], items[k]
  elif op == "reverse":
    items.reverse()
  elif op == "truncate":
    del items[k:]
  else:
    items.clear()
  return data, f"list {op} at {path}"


def m_cells(rng, data):
  """Duplicate, overlapping or out-of-range crossbar cells."""
  layers = [(i, x) for i, x in _crossbars(data) if x]
  if not layers:
    return m_list(rng, data)
  i, crossbars = rng.choice(layers)
  layer = data["layers"][i]
  j = rng.randrange(len(crossbars))
  x = crossbars[j]
  if not isinstance(x, dict) or not isinstance(x.get("columns"), list) or not x["columns"]:
    return m_replace(rng, data)
  cout = layer["kernel_shape"][-1] if isinstance(layer.get("kernel_shape"), list) else 1
  op = rng.choice(["repeat column", "copy crossbar", "channel out of range", "group out of range",
                   "negative group", "id shuffle", "move column", "huge channel"])
  if op == "repeat column":
    x["columns"].append(rng.choice(x["columns"]))
  elif op == "copy crossbar":
    crossbars.append({**copy.deepcopy(x), "id": len(crossbars)})
  elif op == "channel out of range":
    x["columns"][rng.randrange(len(x["columns"]))] = cout + rng.randint(0, 3)
  elif op == "group out of range":
    x["input_group"] = len(layer.get("groups", [])) + rng.randint(0, 3)
  elif op == "negative group":
    x["input_group"] = -rng.randint(1, 3)
  elif op == "id shuffle":
    x["id"] = rng.randrange(len(crossbars) + 2)
  elif op == "move column":
    other = rng.choice(crossbars)
    if isinstance(other, dict) and isinstance(other.get("columns"), list):
      other["columns"].append(x["columns"][0])
  else:
    x["columns"][0] = rng.choice([2**62, 2**63, 10**40, 2**31])
  return data, f"cells {op} in layers[{i}].crossbars[{j}]"


def m_deep(rng, data):
  path = rng.choice(_paths(data))
  return _set(data, path, DEEP), f"deep nesting at {path}"


def m_valid(rng, data):
  """Edits that keep the document valid."""
  if isinstance(data, dict) and isinstance(data.get("model"), dict):
    data["model"]["name"] = rng.choice(["", "ü" * 40, "x" * 1000, "a\u0000b"])
  return data, "valid edit"


DATA_MUTATIONS: list[Callable] = [m_replace, m_number, m_number, m_delete, m_add_key, m_list,
                                  m_list, m_cells, m_cells, m_cells, m_deep, m_valid]


# --- mutations of the text -------------------------------------------------------------------

def t_truncate(rng, text):
  k = rng.randrange(len(text) + 1)
  return text[:k], f"truncate at {k}/{len(text)}"


def t_bytes(rng, text):
  chars = list(text)
  for _ in range(rng.randint(1, 5)):
    k = rng.randrange(len(chars) + 1)
    op = rng.choice(["flip", "insert", "delete"])
    c = rng.choice('{}[]",:0123456789-eE.ntfx \\\u00e9\ud800')
    if op == "flip" and k < len(chars):
      chars[k] = c
    elif op == "insert":
      chars.insert(k, c)
    elif k < len(chars):
      del chars[k]
  return "".join(chars), "byte edits"


def t_duplicate_key(rng, text):
  key = rng.choice(['"version": 1', '"granularity": "crossbar"', '"layers": []', '"format": 3'])
  k = text.find("{")
  return text[:k + 1] + key + ", " + text[k + 1:], f"duplicate key {key}"


def t_number_token(rng, text):
  digits = rng.choice(["9" * 5000, "1e999", "-1e999", "1" * 30, "0.1e-400", "NaN", "Infinity"])
  k = text.find('"version": 1')
  if k < 0:
    return text, "no version to replace"
  return text.replace('"version": 1', f'"version": {digits}', 1), f"number token {digits[:8]}"


TEXT_MUTATIONS: list[Callable] = [t_truncate, t_truncate, t_bytes, t_duplicate_key,
                                  t_number_token]


def _deepen(text: str, depth: int) -> str:
  return text.replace(f'"{DEEP}"', "[" * depth + "]" * depth)


def large_cases(rng: random.Random) -> list[tuple[str, str]]:
  """Very large files: long arrays, huge strings, deep nesting, a large valid document."""
  out = []
  spec = CrossbarSpec(rows=128, cols=128)
  geometry = LayerGeometry("fc", "Dense", (65536, 2048), spec)
  kernel = np.zeros(geometry.kernel_shape, np.float32)
  kernel[::3, ::2] = 1.0
  entry = mapping_lib.layer_entry(packing.pack_layer(geometry, kernel, "column"), kernel)
  big = mapping_lib.document(spec, "column", {"name": "big", "input_shape": [None, 65536]},
                             [entry], []).data
  text = json.dumps(big)
  out.append((text, f"large valid document ({len(text) / 1e6:.1f} MB)"))
  broken = copy.deepcopy(big)
  broken["layers"][0]["crossbars"][-1]["columns"][-1] = 10**6
  out.append((json.dumps(broken), "large document, last column out of range"))
  broken = copy.deepcopy(big)
  broken["layers"][0]["input_permutation"][-1] = 0
  out.append((json.dumps(broken), "large document, permutation repeats 0"))
  out.append((text[: len(text) // 2], "large document truncated"))
  small = random_document(rng)
  for depth in (10**3, 10**5, 2 * 10**6):
    doc = {**small, "model": {"name": "m", "input_shape": DEEP}}
    out.append((_deepen(json.dumps(doc), depth), f"input_shape nested {depth} deep"))
  out.append(("[" * 10**6, f"unclosed nesting {10**6} deep"))
  doc = {**small, "model": {"name": "x" * 50_000_000, "input_shape": None}}
  out.append((json.dumps(doc), "50 MB model name"))
  doc = {**small, "model": {"name": "m", "input_shape": [7] * 5_000_000}}
  out.append((json.dumps(doc), "input_shape of 5M entries"))
  doc = copy.deepcopy(small)
  doc["unmapped"] = [{"name": "u", "type": "T", "reason": "r"}] * 300_000
  out.append((json.dumps(doc), "300k unmapped entries"))
  doc = copy.deepcopy(small)
  doc["layers"] = [{"name": "l"}] * 200_000
  out.append((json.dumps(doc), "200k broken layers"))
  return out


def make_case(rng: random.Random, seeds: list[dict]) -> tuple[str | bytes, str]:
  """One generated or mutated document as text (or bytes, for encoding faults)."""
  roll = rng.random()
  data = copy.deepcopy(rng.choice(seeds)) if rng.random() < 0.7 else random_document(rng)
  if roll < 0.08:
    return json.dumps(data), "generated"
  notes = []
  if roll < 0.8:
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
      before = copy.deepcopy(data)
      try:
        data, note = rng.choice(DATA_MUTATIONS)(rng, data)
      except (LookupError, TypeError, ValueError):  # an earlier mutation broke what it needs
        data, note = before, "skipped mutation"
      notes.append(note)
  text = _deepen(json.dumps(data), rng.choice([5, 50, 5000]))
  if roll >= 0.7:
    text, note = rng.choice(TEXT_MUTATIONS)(rng, text)
    notes.append(note)
  if rng.random() < 0.02:
    return b"\xff\xfe" + text.encode("utf-8", "surrogatepass"), "; ".join(notes + ["not UTF-8"])
  return text, "; ".join(notes)


# --- running a case ----------------------------------------------------------------------------

def _path_resolves(data: Any, path: str) -> bool:
  """Whether every field of an error path exists in the parsed document."""
  if not path:
    return True
  import re
  for name, index in re.findall(r"\.?([^.\[\]]+)|\[(\d+)\]", path):
    try:
      data = data[name] if name else data[int(index)]
    except (KeyError, IndexError, TypeError):
      return False
  return True


def _outcome(read: Callable[[], CrossbarMapping], parsed: Any, bound: float) -> tuple[str, str]:
  start = time.perf_counter()
  try:
    mapping = read()
  except MappingError as e:
    elapsed = time.perf_counter() - start
    if not str(e).startswith(e.path or "<root>"):
      return "bad error", f"message does not start with its path {e.path!r}: {e}"
    if parsed is not None and not _path_resolves(parsed, e.path):
      return "bad error", f"path {e.path!r} is not in the document: {str(e)[:200]}"
    if elapsed > bound:
      return "slow", f"{elapsed:.1f} s: {str(e)[:200]}"
    return "MappingError", e.path
  except Exception as e:  # noqa: BLE001 - anything else is what fuzzing looks for
    return "crash", f"{type(e).__name__}: {str(e)[:300]}"
  elapsed = time.perf_counter() - start
  if elapsed > bound:
    return "slow", f"{elapsed:.1f} s (loaded)"
  again = CrossbarMapping.from_json(mapping.to_json())
  if again.data != mapping.data:
    return "crash", "to_json does not round trip"
  return "valid", ""


def run_case(text: str | bytes, folder: pathlib.Path, bound: float) -> list[tuple[str, str]]:
  """Both readers on one case: [(kind, detail)] for from_json and read_mapping."""
  from xbar_tfmot.export.exporter import read_mapping
  raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
  try:
    parsed = json.loads(raw.decode("utf-8"))
  except (ValueError, RecursionError):
    parsed = None
  file = folder / "mapping.json"
  file.write_bytes(raw)
  results = []
  if isinstance(text, str):
    # from_json reads text starting with "{" or "[" as JSON, anything else as a path: pass the
    # file's path for those (a text that is not JSON is still read, from the file).
    source = text if text.lstrip()[:1] in ("{", "[") else str(file)
    results.append(_outcome(lambda: CrossbarMapping.from_json(source), parsed, bound))
  else:
    results.append(_outcome(lambda: CrossbarMapping.from_json(file), parsed, bound))
  results.append(_outcome(lambda: read_mapping(file), parsed, bound))
  results.append(_outcome(lambda: read_mapping(folder), parsed, bound))
  return results


def fuzz(cases: int, seed: int = 0, bound: float = 5.0, large: bool = True,
         log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Runs `cases` generated and mutated documents (plus the large ones); returns a summary."""
  rng = random.Random(seed)
  seeds = [random_document(rng) for _ in range(24)]
  counts: collections.Counter = collections.Counter()
  failures = []
  worst = 0.0
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.perf_counter()
  largest = 0
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp)
    work = [make_case(rng, seeds) for _ in range(cases)]
    if large:
      work += large_cases(rng)
    for k, (text, note) in enumerate(work):
      largest = max(largest, len(text))
      begin = time.perf_counter()
      results = run_case(text, folder, bound)
      worst = max(worst, (time.perf_counter() - begin) / 3)
      kinds = {kind for kind, _ in results}
      if kinds <= {"valid"} or kinds <= {"MappingError"}:
        counts[results[0][0]] += 1
      else:
        counts["failure"] += 1
        failures.append({"case": k, "note": note, "results": results,
                         "text": text[:300] if isinstance(text, str) else repr(text[:300])})
        if log:
          log("FAILURE " + json.dumps(failures[-1])[:1500])
      if log and (k + 1) % 1000 == 0:
        log(f"{k + 1} cases, {dict(counts)}")
  rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {"cases": len(work), "counts": dict(counts), "failures": failures,
          "seconds": time.perf_counter() - start, "worst_case_seconds": worst,
          "largest_input_mb": largest / 1e6, "peak_rss_mb": rss_after,
          "rss_growth_mb": rss_after - rss_before}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", type=int, default=10_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--time-bound", type=float, default=5.0, help="seconds per read")
  parser.add_argument("--memory-bound-mb", type=float, default=4000.0,
                      help="peak resident memory of the whole run")
  parser.add_argument("--no-large", action="store_true", help="skip the very large files")
  args = parser.parse_args()
  sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
  result = fuzz(args.cases, args.seed, args.time_bound, not args.no_large,
                log=lambda line: print(line, flush=True))
  for failure in result["failures"][:20]:
    print(json.dumps(failure)[:1000])
  print(f"{result['cases']} cases in {result['seconds']:.0f} s: {result['counts']}; "
        f"slowest case {result['worst_case_seconds']:.2f} s per read; largest input "
        f"{result['largest_input_mb']:.1f} MB; peak RSS {result['peak_rss_mb']:.0f} MB")
  ok = not result["failures"] and result["peak_rss_mb"] <= args.memory_bound_mb
  print("PASS" if ok else "FAIL")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
