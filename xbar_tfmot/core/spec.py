"""`CrossbarSpec`: the physical crossbar and how a layer's unrolled matrix is cut onto it.

See docs/design.md, "The crossbar model". The spec is immutable, validated on construction, hashable, and
round-trips through `to_dict`/`from_dict` and the short command-line form of `to_string`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Mapping

from xbar_tfmot.core import strict_json
from xbar_tfmot.core.errors import SpecError

MAPPINGS = ("kernel_aligned", "flat", "direct")


@dataclasses.dataclass(frozen=True)
class CrossbarSpec:
  """A crossbar array and the mapping of weights onto it.

  Attributes:
    rows: physical rows (inputs) of one crossbar.
    cols: physical columns of one crossbar.
    weight_bits: bits of one weight.
    cell_bits: bits one cell stores; defaults to `weight_bits` (one cell per weight).
    differential: a weight uses a pair of columns (positive and negative part).
    mapping: `kernel_aligned` (all taps of an input channel in one crossbar), `flat` (the
      unrolled matrix is cut every `rows` rows) or `direct` (the user gives `kin`, `kout`).
    kin: input feature maps per crossbar; `direct` mapping only.
    kout: output feature maps per crossbar; `direct` mapping only.
    replicas: copies of every layer's crossbars kept for throughput.
    layer_replicas: per-layer override of `replicas`, as `{layer_name: copies}`.
  """

  rows: int
  cols: int
  weight_bits: int = 8
  cell_bits: int | None = None
  differential: bool = False
  mapping: str = "kernel_aligned"
  kin: int | None = None
  kout: int | None = None
  replicas: int = 1
  layer_replicas: Any = ()

  def __post_init__(self):
    if self.cell_bits is None:
      object.__setattr__(self, "cell_bits", self.weight_bits)
    overrides = self.layer_replicas
    if isinstance(overrides, Mapping):
      overrides = overrides.items()
    try:
      pairs = tuple(sorted((str(k), v) for k, v in overrides))
    except (TypeError, ValueError):
      raise SpecError(f"CrossbarSpec.layer_replicas={self.layer_replicas!r} is invalid; valid: "
                      f"a mapping {{layer name: replicas}}.") from None
    object.__setattr__(self, "layer_replicas", pairs)
    self._validate()

  def _validate(self) -> None:
    for name in ("rows", "cols", "weight_bits", "cell_bits", "replicas"):
      _check_positive_int(name, getattr(self, name))
    if self.cell_bits > self.weight_bits:
      raise SpecError(
          f"CrossbarSpec.cell_bits={self.cell_bits} exceeds weight_bits={self.weight_bits}; "
          f"valid: 1 <= cell_bits <= weight_bits.")
    if not isinstance(self.differential, bool):
      raise SpecError(
          f"CrossbarSpec.differential must be True or False, got {self.differential!r}.")
    if self.mapping not in MAPPINGS:
      raise SpecError(
          f"CrossbarSpec.mapping={self.mapping!r} is unknown; valid: {', '.join(MAPPINGS)}.")
    if self.mapping == "direct":
      for name in ("kin", "kout"):
        if getattr(self, name) is None:
          raise SpecError(
              f"CrossbarSpec.{name} is required with mapping='direct' (a positive integer).")
        _check_positive_int(name, getattr(self, name))
    else:
      for name in ("kin", "kout"):
        if getattr(self, name) is not None:
          raise SpecError(
              f"CrossbarSpec.{name} is only valid with mapping='direct'; with mapping="
              f"{self.mapping!r} it is derived from rows/cols. Leave it unset.")
      if self.cols < self.columns_per_weight:
        raise SpecError(
            f"CrossbarSpec.cols={self.cols} cannot hold one weight, which takes "
            f"{self.columns_per_weight} columns (weight_bits={self.weight_bits}, cell_bits="
            f"{self.cell_bits}, differential={self.differential}); valid: cols >= "
            f"{self.columns_per_weight}.")
    for name, copies in self.layer_replicas:
      _check_positive_int(f"layer_replicas[{name!r}]", copies)

  @property
  def columns_per_weight(self) -> int:
    """Physical columns one weight takes: bit slices times the differential pair."""
    return math.ceil(self.weight_bits / self.cell_bits) * (2 if self.differential else 1)

  @property
  def logical_cols(self) -> int:
    """Output columns (weights) one crossbar holds: `Kout` of docs/design.md, "The crossbar model"."""
    if self.mapping == "direct":
      return self.kout
    return self.cols // self.columns_per_weight

  def replicas_for(self, layer_name: str) -> int:
    return dict(self.layer_replicas).get(layer_name, self.replicas)

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["layer_replicas"] = dict(self.layer_replicas)
    return out

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> "CrossbarSpec":
    strict_json.check_fields(cls, config, SpecError)
    missing = [name for name in ("rows", "cols") if name not in config]
    if missing:
      raise SpecError(f"CrossbarSpec: missing field(s) {missing}; rows and cols are required.")
    return cls(**config)

  def to_string(self) -> str:
    """Short form for command lines: `128x128` plus the non-default fields, comma separated."""
    parts = [f"{self.rows}x{self.cols}"]
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      implied = self.weight_bits if field.name == "cell_bits" else field.default
      if field.name in ("rows", "cols", "layer_replicas") or value == implied:
        continue
      parts.append(f"{field.name}={str(value).lower() if isinstance(value, bool) else value}")
    if self.layer_replicas:
      parts.append("layer_replicas=" + ";".join(f"{k}:{v}" for k, v in self.layer_replicas))
    return ",".join(parts)

  __str__ = to_string

  @classmethod
  def preset(cls, name: str) -> "CrossbarSpec":
    """A crossbar preset shipped with the package, by name (e.g. `isaac_128x128`)."""
    if name not in preset_names():
      raise SpecError(f"CrossbarSpec.preset: {name!r} is unknown; valid: "
                      f"{', '.join(preset_names())}.")
    return _from_file(preset_path(name))

  @classmethod
  def from_string(cls, text: str) -> "CrossbarSpec":
    """Parses `ROWSxCOLS[,field=value...]`, e.g. `128x128,cell_bits=2,differential=true`."""
    head, *rest = [p.strip() for p in text.split(",")]
    size = head.lower().split("x")
    if len(size) != 2 or not all(s.isdigit() for s in size):
      raise SpecError(f"crossbar {text!r}: expected 'ROWSxCOLS[,field=value...]', e.g. '128x128'.")
    config: dict[str, Any] = {"rows": int(size[0]), "cols": int(size[1])}
    for part in rest:
      key, sep, value = part.partition("=")
      if not sep:
        raise SpecError(f"crossbar {text!r}: {part!r} is not of the form field=value.")
      key = key.strip()
      if key not in {f.name for f in dataclasses.fields(cls)}:
        raise SpecError(f"crossbar {text!r}: unknown field {key!r}.")
      config[key] = _parse_value(key, value.strip())
    return cls.from_dict(config)


# The one folder of shipped presets: crossbars as `NAME.crossbar.json` (here), chips as
# `NAME.chip.json` (`xbar_tfmot.core.hardware`).
PRESETS_DIR = pathlib.Path(__file__).with_name("presets")
PRESET_SUFFIX = ".crossbar.json"


def preset_path(name: str) -> pathlib.Path:
  """The file of the crossbar preset `name` (`xbar_tfmot/core/presets/NAME.crossbar.json`)."""
  return PRESETS_DIR / f"{name}{PRESET_SUFFIX}"


def preset_names() -> list[str]:
  """The names of the crossbar presets shipped in the package (`xbar_tfmot/core/presets`)."""
  return sorted(p.name[:-len(PRESET_SUFFIX)] for p in PRESETS_DIR.glob(f"*{PRESET_SUFFIX}"))


def parse_spec(text: str) -> CrossbarSpec:
  """A spec from a preset name (`isaac_128x128`), a JSON file, or the short form `128x128,...`."""
  if text in preset_names():
    return CrossbarSpec.preset(text)
  if not text.endswith(".json"):
    if "x" not in text.split(",")[0] and "=" not in text:
      raise SpecError(f"crossbar {text!r}: not a preset name, a .json file or "
                      f"'ROWSxCOLS[,field=value...]'; presets: {', '.join(preset_names())}.")
    return CrossbarSpec.from_string(text)
  path = pathlib.Path(text)
  if not path.exists():
    raise SpecError(f"crossbar preset {text!r} does not exist; valid: a JSON file or a "
                    f"preset name ({', '.join(preset_names())}).")
  return _from_file(path)


def _from_file(path: pathlib.Path) -> CrossbarSpec:
  try:
    config = strict_json.loads(path.read_text(encoding="utf-8"),
                               f"crossbar preset file {str(path)!r}")
  except strict_json.DuplicateKeyError:
    raise  # already names the file and the key
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise SpecError(f"crossbar preset file {str(path)!r} cannot be read as JSON: {e}") from None
  if not isinstance(config, dict):
    raise SpecError(f"crossbar preset file {str(path)!r}: expected a JSON object of "
                    f"CrossbarSpec fields, got {type(config).__name__}.")
  return CrossbarSpec.from_dict(config)


def _parse_value(key: str, value: str) -> Any:
  if key == "mapping":
    return value
  if key == "differential":
    if value.lower() not in ("true", "false", "1", "0"):
      raise SpecError(f"crossbar field differential={value!r}: valid values are true or false.")
    return value.lower() in ("true", "1")
  if key == "layer_replicas":
    pairs = [p.split(":") for p in value.split(";") if p]
    return {name: _parse_int(f"layer_replicas[{name!r}]", n) for name, n in pairs}
  return _parse_int(key, value)


def _parse_int(key: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise SpecError(f"crossbar field {key}={value!r}: expected an integer.") from None


def _check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise SpecError(f"CrossbarSpec.{name}={value!r} is invalid; valid: an integer >= 1.")
