"""JSON reading that refuses duplicate keys, for every JSON file the library reads.

Python's `json` keeps the last of two equal keys in an object without a word, so a hand-edited
mapping, preset or state file can silently lose a value. `loads` parses the same text but
raises `DuplicateKeyError` naming the key, where it sits (`layers[0].name`) and the file.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from xbar_tfmot.core.errors import XbarError


class DuplicateKeyError(XbarError, ValueError):
  """A JSON object holds the same key twice; `path` names the second one (`layers[0].name`)."""

  def __init__(self, key: str, path: str, source: str | None = None):
    where = f"{source}: " if source else ""
    super().__init__(f"{where}{path}: duplicate key {key!r} in a JSON object; valid: each key "
                     f"at most once per object.")
    self.key, self.path, self.source = key, path, source


class _Duplicated(dict):
  """An object that held a duplicate key; only exists until `loads` raises."""

  duplicate: str = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
  obj = dict(pairs)
  if len(obj) == len(pairs):
    return obj
  seen: set[str] = set()
  for key, _ in pairs:
    if key in seen:
      break
    seen.add(key)
  marked = _Duplicated(obj)
  marked.duplicate = key
  return marked


def _join(path: str, part: str | int) -> str:
  if isinstance(part, int):
    return f"{path}[{part}]"
  return f"{path}.{part}" if path else part


def _first_duplicate(data: Any) -> tuple[str, str]:
  """`(key, path)` of the first object with a duplicated key met walking the tree depth first
  (an object before the objects inside it; iterative, for deep documents)."""
  stack: list[tuple[Any, str]] = [(data, "")]
  while stack:
    value, path = stack.pop()
    if isinstance(value, _Duplicated):
      return value.duplicate, _join(path, value.duplicate)
    if isinstance(value, dict):
      stack.extend((v, _join(path, k)) for k, v in reversed(list(value.items())))
    elif isinstance(value, list):
      stack.extend((v, _join(path, i)) for i, v in reversed(list(enumerate(value))))
  raise AssertionError("a duplicate was marked but not found")


def loads(text: str | bytes, source: str | None = None) -> Any:
  """`json.loads(text)`, except that a key repeated in one object is a `DuplicateKeyError`
  naming the key, its path and `source` (the file, for the message). Other errors are those
  of `json.loads` (`json.JSONDecodeError`, `RecursionError`, ...)."""
  found = []

  def hook(pairs):
    obj = _pairs(pairs)
    if type(obj) is _Duplicated:
      found.append(obj)
    return obj

  data = json.loads(text, object_pairs_hook=hook)
  if found:
    key, path = _first_duplicate(data)
    raise DuplicateKeyError(key, path, source)
  return data


def check_fields(cls: type, config: Mapping[str, Any], error: type) -> None:
  """Raises `error` naming the keys of `config` that are not fields of the dataclass `cls`
  (a JSON object read back into it) and the valid ones."""
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(config) - fields)
  if unknown:
    raise error(f"{cls.__name__}: unknown field(s) {unknown}; valid: {sorted(fields)}.")
