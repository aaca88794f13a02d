"""Fuzz crossbar spec strings, preset files and xbar-prune configs.

Spec strings (valid `to_string()` forms, mutated: truncations, swapped and unknown fields,
huge, negative, fractional and non-ASCII numbers, separators) go through `parse_spec`; each
either gives a spec that round-trips through its string form or raises `ValueError`. The
same documents as preset JSON files (mutated, truncated, non-objects, non-UTF-8) go through
`parse_spec(path)`. Configs: one to three fields of the defaults set to values of any type
(numbers out of range, strings, lists, None, NaN, huge) go through `configuration.parse`;
each passes or raises `ConfigError` naming a `config.` field. Anything else is a failure.
The suite runs a few hundred (tests/test_fuzz_spec.py); the full run, quoted in
docs/reliability.md:

  .venv/bin/python tools/fuzz_spec.py --cases 5000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import random
import tempfile
import time
from typing import Any

from xbar_tfmot.core.spec import CrossbarSpec, parse_spec

ODD_VALUES = ["-1", "0", "1e9", "99999999999999999999", "nan", "inf", "1.5", "", " ", "x",
              "true", "false", "٣", "0x10", "-0", "+4", "None", "[]", "{}", "1;2", "a:b"]


def random_spec(rng: random.Random) -> CrossbarSpec:
  mapping = rng.choice(["kernel_aligned", "flat", "direct"])
  kwargs: dict[str, Any] = {"rows": rng.choice([9, 16, 64, 128, 256]),
                            "cols": rng.choice([4, 8, 32, 128]), "mapping": mapping}
  if mapping == "direct":
    kwargs.update(kin=rng.choice([1, 8, 16]), kout=rng.choice([1, 4]))
  if rng.random() < 0.5:
    kwargs.update(weight_bits=8, cell_bits=rng.choice([1, 2, 4, 8]),
                  differential=rng.random() < 0.5)
  try:
    return CrossbarSpec(**kwargs)
  except ValueError:
    return CrossbarSpec(rows=128, cols=128)


def mutate_text(rng: random.Random, text: str) -> str:
  parts = text.split(",")
  kind = rng.randrange(7)
  if kind == 0:
    return text[:rng.randrange(len(text) + 1)]
  if kind == 1:
    i = rng.randrange(len(parts))
    key = parts[i].partition("=")[0] if "=" in parts[i] else parts[i]
    parts[i] = f"{key}={rng.choice(ODD_VALUES)}" if "=" in parts[i] else rng.choice(
        ODD_VALUES) + "x" + rng.choice(ODD_VALUES)
  elif kind == 2:
    parts.append(f"{rng.choice(['rows', 'kin', 'bogus', 'replicas', 'layer_replicas'])}="
                 f"{rng.choice(ODD_VALUES + ['fc:2', 'fc:-1;c:x'])}")
  elif kind == 3:
    rng.shuffle(parts)
  elif kind == 4:
    parts = parts + parts[1:]
  elif kind == 5:
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice([",", "=", "x", " ", "\x00", "é", ",,"]) + text[i:]
  else:
    return rng.choice(["", "x", "128", "128x", "x128", "isaac", "isaac_128x128 ", ".json"])
  return ",".join(parts)


def _spec_outcome(read) -> str | None:
  """None when `read()` gives a round-tripping spec or a ValueError; else what went wrong."""
  try:
    spec = read()
  except ValueError:
    return None
  except Exception as e:  # noqa: BLE001 - any other kind is what the fuzzer looks for
    return f"{type(e).__name__}: {e}"
  if not isinstance(spec, CrossbarSpec):
    return f"returned {type(spec).__name__}"
  if CrossbarSpec.from_string(spec.to_string()) != spec:
    return f"{spec.to_string()!r} does not round-trip"
  return None


def mutate_document(rng: random.Random, spec: CrossbarSpec) -> bytes:
  data = dataclasses.asdict(spec)
  data["layer_replicas"] = dict(spec.layer_replicas)
  kind = rng.randrange(5)
  if kind == 0:
    data[rng.choice(list(data))] = rng.choice([None, -3, 2**40, 1.5, "8", [], {}, True,
                                               math.nan])
  elif kind == 1:
    data.pop(rng.choice(list(data)))
    data[rng.choice(["bogus", "rows "])] = 1
  elif kind == 2:
    return json.dumps(data).encode()[:rng.randrange(60)]
  elif kind == 3:
    return rng.choice([b"[]", b"1", b"null", b"\xff\xfe", b'{"rows": 1e999}', b""])
  return json.dumps(data, allow_nan=True).encode()


def fuzz_specs(cases: int, seed: int = 0) -> dict[str, Any]:
  rng = random.Random(seed)
  failures, valid = [], 0
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(cases):
      spec = random_spec(rng)
      if i % 2:
        text = mutate_text(rng, spec.to_string())
        problem = _spec_outcome(lambda: parse_spec(text))
        case = text
      else:
        path = pathlib.Path(tmp) / f"case{i}.json"
        path.write_bytes(mutate_document(rng, spec))
        problem = _spec_outcome(lambda: parse_spec(str(path)))
        case = path.read_bytes()[:200].decode("utf-8", "replace")
      if problem:
        failures.append({"case": case, "problem": problem})
      else:
        valid += 1
  return {"cases": cases, "failures": failures}


def random_value(rng: random.Random, default: Any) -> Any:
  choices = [None, -1, 0, 10**12, -1e-9, math.nan, math.inf, "", "x", "a,b", [], [1], {},
             True, 2.5, "128x128", "default", "none"]
  if isinstance(default, (int, float)) and not isinstance(default, bool):
    choices += [default * 2, -default, type(default)(default + 1)]
  return rng.choice(choices)


def fuzz_configs(cases: int, seed: int = 0) -> dict[str, Any]:
  import ml_collections

  from xbar_tfmot.app.configuration import ConfigError, defaults, flatten, parse
  rng = random.Random(seed)
  fields = flatten(defaults())
  failures, accepted = [], 0
  for _ in range(cases):
    config = ml_collections.ConfigDict(defaults().to_dict(), type_safe=False)
    changed = {}
    for path in rng.sample(sorted(fields), rng.randint(1, 3)):
      value = random_value(rng, fields[path])
      section, _, leaf = path.rpartition(".")
      node = config
      for part in [p for p in section.split(".") if p]:
        node = node[part]
      node[leaf] = value
      changed[path] = value
    try:
      parse(config)
      accepted += 1
    except ConfigError as e:
      if "config." not in str(e):
        failures.append({"changed": repr(changed), "problem": f"unnamed field: {e}"})
    except Exception as e:  # noqa: BLE001 - any other kind is a failure
      failures.append({"changed": repr(changed), "problem": f"{type(e).__name__}: {e}"})
  return {"cases": cases, "accepted": accepted, "failures": failures}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", type=int, default=5000, help="spec cases; configs get half")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  start = time.perf_counter()
  specs = fuzz_specs(args.cases, args.seed)
  configs = fuzz_configs(args.cases // 2, args.seed)
  print(f"{specs['cases']} spec strings and preset files: {len(specs['failures'])} failures; "
        f"{configs['cases']} configs ({configs['accepted']} accepted): "
        f"{len(configs['failures'])} failures; {time.perf_counter() - start:.0f} s")
  for failure in (specs["failures"] + configs["failures"])[:10]:
    print(" ", json.dumps(failure)[:300])
  return 1 if specs["failures"] or configs["failures"] else 0


if __name__ == "__main__":
  raise SystemExit(main())
