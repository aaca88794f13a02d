"""`HardwareSpec`: what the analog chip does to a mapped model, and what its parts cost.

See docs/hardware.md. One frozen, validated, JSON-serialisable description with two halves:

- the analog non-idealities the analog model (`xbar_tfmot.models.analog_model`) simulates:
  weight quantisation and bit slicing into cells, conductance variation, stuck-at faults,
  read noise, input (DAC) and column (ADC) quantisation;
- the per-component energy, area and cycle time the cost model (`xbar_tfmot.core.cost`)
  multiplies by the mapping's counts.

Presets ship as JSON under `xbar_tfmot/core/presets/` (`NAME.chip.json`, beside the crossbar
presets), each with the sources of its numbers (`HardwareSpec.preset("isaac_32nm")`). Every bad field raises `HardwareError` naming it.
This module knows no Keras.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Mapping

from xbar_tfmot.core import strict_json
from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.spec import PRESETS_DIR, CrossbarSpec

VARIATION_MODELS = ("absolute", "proportional", "lognormal")
WEIGHT_SCALES = ("layer", "crossbar")
PRESET_SUFFIX = ".chip.json"  # in the one presets folder, `PRESETS_DIR` (core/spec.py)
MAX_BITS = 16


class HardwareError(XbarError, ValueError):
  """A hardware description (or its use with a mapping) is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
  """An analog crossbar chip: non-idealities and component costs.

  Weights and cells (None = take it from the mapping's `CrossbarSpec`; set, it must agree):
    weight_bits, cell_bits, differential.
    weight_scale: `layer` (one conductance scale per layer, `g_max` <-> the layer's largest
      |weight|; the default, because every crossbar of the layer then feeds the same digital
      shift-add) or `crossbar` (one scale per crossbar; needs a digital multiply per crossbar).
    quantize_weights: round weights to `2**weight_bits - 1` levels (sign-magnitude) and slice
      them into cells; false keeps float conductances (the ideal case).
  Device non-idealities (conductances normalised to g_max = 1, g_min = 0):
    variation: programming error, standard deviation; `absolute` to g_max, `proportional` to
      the target conductance, or `lognormal` (g * exp(N(0, variation))).
    stuck_on_rate, stuck_off_rate: fraction of cells stuck at g_max / at 0.
    read_noise: per-inference Gaussian noise on every cell, standard deviation over g_max.
  Periphery:
    input_bits: activation precision (None: float inputs); inputs are quantised over a range
      calibrated on data.
    dac_bits: bits applied per input cycle; `ceil(input_bits / dac_bits)` cycles per MVM.
    bit_serial: simulate those cycles one by one (each cycle's partial sums digitised) instead
      of one analog input of `input_bits`.
    adc_bits: per-column ADC resolution (None: ideal); range calibrated per layer as the
      `adc_percentile` / `100 - adc_percentile` percentiles of the partial sums.
  Costs (per component; a crossbar of another size scales the array linearly in cells):
    array_rows, array_cols, array_energy_pj (one array, one input cycle), array_area_mm2,
    adc_energy_pj (one conversion), adc_area_mm2, adcs_per_crossbar,
    dac_energy_pj (one row, one input cycle), dac_area_mm2 (one row), cycle_ns (one input
    cycle of one array, conversions included), skip_idle_columns (unused columns of a partly
    used crossbar are not converted).
  Provenance: name, sources (citations of the numbers), notes.
  """

  name: str = "custom"
  weight_bits: int | None = None
  cell_bits: int | None = None
  differential: bool | None = None
  weight_scale: str = "layer"
  quantize_weights: bool = True
  variation: float = 0.0
  variation_model: str = "absolute"
  stuck_on_rate: float = 0.0
  stuck_off_rate: float = 0.0
  read_noise: float = 0.0
  input_bits: int | None = None
  dac_bits: int = 1
  bit_serial: bool = False
  adc_bits: int | None = None
  adc_percentile: float = 99.99
  array_rows: int = 128
  array_cols: int = 128
  array_energy_pj: float = 0.0
  array_area_mm2: float = 0.0
  adc_energy_pj: float = 0.0
  adc_area_mm2: float = 0.0
  adcs_per_crossbar: float = 1.0
  dac_energy_pj: float = 0.0
  dac_area_mm2: float = 0.0
  cycle_ns: float = 100.0
  skip_idle_columns: bool = False
  sources: tuple[str, ...] = ()
  notes: str = ""

  def __post_init__(self):
    object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
    self._validate()

  def _validate(self) -> None:
    for name in ("weight_bits", "cell_bits", "input_bits", "adc_bits"):
      value = getattr(self, name)
      if value is not None:
        _check_bits(name, value)
    _check_bits("dac_bits", self.dac_bits)
    for name in ("differential", "quantize_weights", "bit_serial", "skip_idle_columns"):
      value = getattr(self, name)
      if not isinstance(value, bool) and not (name == "differential" and value is None):
        raise HardwareError(f"HardwareSpec.{name}={value!r} is invalid; valid: true or false.")
    if self.weight_bits and self.cell_bits and self.cell_bits > self.weight_bits:
      raise HardwareError(f"HardwareSpec.cell_bits={self.cell_bits} exceeds weight_bits="
                          f"{self.weight_bits}; valid: 1 <= cell_bits <= weight_bits.")
    if self.weight_scale not in WEIGHT_SCALES:
      raise HardwareError(f"HardwareSpec.weight_scale={self.weight_scale!r} is unknown; valid: "
                          f"{', '.join(WEIGHT_SCALES)}.")
    if self.variation_model not in VARIATION_MODELS:
      raise HardwareError(f"HardwareSpec.variation_model={self.variation_model!r} is unknown; "
                          f"valid: {', '.join(VARIATION_MODELS)}.")
    for name in ("variation", "read_noise", "array_energy_pj", "array_area_mm2",
                 "adc_energy_pj", "adc_area_mm2", "dac_energy_pj", "dac_area_mm2"):
      _check_number(name, getattr(self, name), 0.0, math.inf)
    for name in ("stuck_on_rate", "stuck_off_rate"):
      _check_number(name, getattr(self, name), 0.0, 1.0)
    if self.stuck_on_rate + self.stuck_off_rate > 1.0:
      raise HardwareError(f"HardwareSpec.stuck_on_rate + stuck_off_rate = "
                          f"{self.stuck_on_rate + self.stuck_off_rate} exceeds 1.")
    _check_number("adc_percentile", self.adc_percentile, 50.0, 100.0)
    for name in ("adcs_per_crossbar", "cycle_ns"):
      _check_number(name, getattr(self, name), 0.0, math.inf)
      if getattr(self, name) <= 0:
        raise HardwareError(f"HardwareSpec.{name}={getattr(self, name)!r} is invalid; valid: > 0.")
    for name in ("array_rows", "array_cols"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HardwareError(f"HardwareSpec.{name}={value!r} is invalid; valid: an integer >= 1.")
    if self.bit_serial and self.input_bits is None:
      raise HardwareError("HardwareSpec.bit_serial=true needs input_bits (the bits sent in "
                          "dac_bits slices); set input_bits or bit_serial=false.")

  @property
  def input_cycles(self) -> int:
    """Input cycles of one matrix-vector operation: `ceil(input_bits / dac_bits)` (1 if float)."""
    return 1 if self.input_bits is None else -(-self.input_bits // self.dac_bits)

  @property
  def ideal(self) -> bool:
    """No noise, no faults and unlimited resolution (the crossbar-explicit model's function)."""
    return (self.variation == 0 and self.read_noise == 0 and self.stuck_on_rate == 0
            and self.stuck_off_rate == 0 and not self.quantize_weights and self.input_bits is None
            and self.adc_bits is None)

  def cells(self, spec: CrossbarSpec) -> tuple[int, int, bool]:
    """`(weight_bits, cell_bits, differential)` for a mapping's spec; HardwareError if they disagree."""
    out = []
    for name in ("weight_bits", "cell_bits", "differential"):
      mine, theirs = getattr(self, name), getattr(spec, name)
      if mine is not None and mine != theirs:
        raise HardwareError(
            f"HardwareSpec.{name}={mine!r} does not match the mapping's crossbar spec "
            f"({name}={theirs!r}); the mapping's column layout depends on it. Leave it unset "
            f"(null) to take it from the mapping.")
      out.append(theirs)
    return tuple(out)

  def replace(self, **changes) -> "HardwareSpec":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["sources"] = list(self.sources)
    return out

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> "HardwareSpec":
    if not isinstance(config, Mapping):
      raise HardwareError(f"HardwareSpec: expected a JSON object of fields, got "
                          f"{type(config).__name__}.")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
      raise HardwareError(f"HardwareSpec: unknown field(s) {unknown}; valid: {sorted(fields)}.")
    return cls(**config)

  def to_json(self, path: str | pathlib.Path | None = None) -> str:
    text = json.dumps(self.to_dict(), indent=1)
    if path is not None:
      pathlib.Path(path).write_text(text, encoding="utf-8")
    return text

  @classmethod
  def preset(cls, name: str) -> "HardwareSpec":
    """A preset shipped with the package (`isaac_32nm`, `puma_256x256`, ...)."""
    if name not in preset_names():
      raise HardwareError(f"hardware preset {name!r} is unknown; valid: "
                          f"{', '.join(preset_names())}.")
    return _from_file(preset_path(name))


def preset_path(name: str) -> pathlib.Path:
  """The file of the chip preset `name` (`xbar_tfmot/core/presets/NAME.chip.json`)."""
  return PRESETS_DIR / f"{name}{PRESET_SUFFIX}"


def preset_names() -> list[str]:
  """The names of the chip presets shipped in the package (`xbar_tfmot/core/presets`)."""
  return sorted(p.name[:-len(PRESET_SUFFIX)] for p in PRESETS_DIR.glob(f"*{PRESET_SUFFIX}"))


def parse_hardware(text: str, **overrides) -> HardwareSpec:
  """A preset name or a JSON file, with `field=value` overrides (e.g. `variation=0.05`)."""
  if text in preset_names():
    hw = HardwareSpec.preset(text)
  elif text.endswith(".json"):
    path = pathlib.Path(text)
    if not path.exists():
      raise HardwareError(f"hardware file {text!r} does not exist; valid: a JSON file or a "
                          f"preset name ({', '.join(preset_names())}).")
    hw = _from_file(path)
  else:
    raise HardwareError(f"hardware {text!r} is unknown: not a preset name or a .json file; presets: "
                        f"{', '.join(preset_names())}.")
  return HardwareSpec.from_dict({**hw.to_dict(), **overrides}) if overrides else hw


def parse_override(text: str) -> tuple[str, Any]:
  """`field=value` (value read as JSON when it parses, else as a string)."""
  key, sep, value = text.partition("=")
  if not sep:
    raise HardwareError(f"hardware override {text!r} is not of the form field=value.")
  try:
    return key.strip(), strict_json.loads(value, f"hardware override {key.strip()!r}")
  except strict_json.DuplicateKeyError as e:
    raise HardwareError(str(e)) from None
  except json.JSONDecodeError:
    return key.strip(), value.strip()


def _from_file(path: pathlib.Path) -> HardwareSpec:
  try:
    config = strict_json.loads(path.read_text(encoding="utf-8"), f"hardware file {str(path)!r}")
  except strict_json.DuplicateKeyError as e:
    raise HardwareError(str(e)) from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise HardwareError(f"hardware file {str(path)!r} cannot be read as JSON: {e}") from None
  try:
    return HardwareSpec.from_dict(config)
  except TypeError as e:
    raise HardwareError(f"hardware file {str(path)!r}: {e}") from None


def _check_bits(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BITS:
    raise HardwareError(f"HardwareSpec.{name}={value!r} is out of range; valid: an integer "
                        f"1..{MAX_BITS}.")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
      or math.isnan(value):
    raise HardwareError(f"HardwareSpec.{name}={value!r} is out of range; valid: a number in "
                        f"[{low}, {high}].")
