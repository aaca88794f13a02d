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
from typing import Any, Mapping, Sequence

from xbar_tfmot.core import strict_json
from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.spec import PRESETS_DIR, CrossbarSpec

VARIATION_MODELS = ("absolute", "proportional", "lognormal")
WEIGHT_SCALES = ("layer", "crossbar")
DIFFERENTIAL_READS = ("array", "polarity")
ADC_RANGES = ("layer", "slice", "column")
ADC_SCALINGS = ("table", "linear")
COMPENSATION_STEPS = ("adc", "column_gain", "layer_gain", "batchnorm")  # compensate_chip's order
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
  Device non-idealities (conductances normalised to g_max = 1):
    on_off_ratio: g_max / g_min (None: g_min = 0); a cell at digit 0, and a stuck-off cell,
      conducts g_min = 1 / on_off_ratio. Default 10, NeuroSim's and CrossSim's.
    variation: programming error, standard deviation; `absolute` to g_max, `proportional` to
      the target conductance, or `lognormal` (g * exp(N(0, variation))); clipped at 0.
    stuck_on_rate, stuck_off_rate: fraction of cells stuck at g_max / at g_min.
    read_noise: Gaussian noise on every cell, standard deviation over g_max, drawn afresh for
      every matrix-vector product (each image, output position and input cycle).
  Drift (PCM-like, aihwkit's `PCMLikeNoiseModel` convention; off while `drift_time` is null):
    drift_time: seconds since programming at which the chip is read (null: no drift); every
      cell becomes `g * ((drift_time + drift_t0) / drift_t0) ** -nu`.
    drift_nu, drift_nu_std: mean and spread of the drift exponent, drawn once per cell as
      `|drift_nu + drift_nu_std * N|` (defaults 0.05 and 0.008: aihwkit's PCM fit at g_max).
    drift_t0: the drift fit's first read, seconds (default 20, aihwkit's `t_0`).
    drift_compensation: global drift compensation: one digital gain per layer, the ratio of a
      reference read (all-ones input) at programming to the same read at `drift_time`.
  Periphery (the dataflow, which the simulation and the cost model both follow):
    input_bits: activation precision (None: float inputs, one ideal analog cycle); inputs are
      quantised over a range calibrated on data.
    bit_serial: true: inputs enter in `ceil(input_bits / dac_bits)` cycles of `dac_bits`, every
      cycle's column currents digitised (ISAAC); false: one analog input of `input_bits`, one
      conversion per column.
    dac_bits: bits applied per input cycle when bit-serial.
    differential_read: `array` (the pair's currents are subtracted on the bit lines, one
      conversion per pair) or `polarity` (each column digitised, subtracted digitally).
    adc_bits: ADC resolution (None: ideal).
    adc_ranges: ADC ranges calibrated on the programmed chip per `layer` (one range), per
      `slice` (input cycle, polarity digitised apart, weight slice) or per `column` (per slice
      and physical column); each the `100 - adc_percentile` / `adc_percentile` percentiles.
  Costs (per component; a crossbar of another size scales the array linearly in cells):
    array_rows, array_cols, array_energy_pj (one array, one input cycle), array_area_mm2,
    adc_energy_pj (one conversion), adc_area_mm2, adcs_per_crossbar,
    dac_energy_pj (one row, one input cycle), dac_area_mm2 (one row), cycle_ns (one input
    cycle of one array, conversions included), skip_idle_columns (unused columns of a partly
    used crossbar are not converted).
  Converter scaling (`xbar_tfmot.core.cost.adc_scale` / `dac_scale`, docs/hardware.md):
    adc_reference_bits: the resolution `adc_energy_pj` and `adc_area_mm2` are quoted at (null:
      they hold at any `adc_bits`); another `adc_bits` scales them by `adc_scaling`: `table`
      (Accelergy's ISAAC ADC table, energy and area) or `linear` (energy in proportion to the
      bits, area unchanged: PUMA's simulator constants).
    dac_reference_bits: the resolution `dac_energy_pj` and `dac_area_mm2` are quoted at (null:
      any); a DAC of `dac_bits` (bit-serial) or `input_bits` (one analog input) scales both in
      proportion to its bits.
  Provenance: name, sources (citations of the numbers), notes.
  """

  name: str = "custom"
  weight_bits: int | None = None
  cell_bits: int | None = None
  differential: bool | None = None
  weight_scale: str = "layer"
  quantize_weights: bool = True
  on_off_ratio: float | None = 10.0
  variation: float = 0.0
  variation_model: str = "absolute"
  stuck_on_rate: float = 0.0
  stuck_off_rate: float = 0.0
  read_noise: float = 0.0
  drift_time: float | None = None
  drift_nu: float = 0.05
  drift_nu_std: float = 0.008
  drift_t0: float = 20.0
  drift_compensation: bool = True
  input_bits: int | None = None
  dac_bits: int = 1
  bit_serial: bool = False
  differential_read: str = "array"
  adc_bits: int | None = None
  adc_ranges: str = "slice"
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
  adc_reference_bits: int | None = None
  adc_scaling: str = "table"
  dac_reference_bits: int | None = None
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
    for name in ("differential", "quantize_weights", "bit_serial", "skip_idle_columns",
                 "drift_compensation"):
      value = getattr(self, name)
      if not isinstance(value, bool) and not (name == "differential" and value is None):
        raise HardwareError(f"HardwareSpec.{name}={value!r} is invalid; valid: true or false.")
    if self.weight_bits and self.cell_bits and self.cell_bits > self.weight_bits:
      raise HardwareError(f"HardwareSpec.cell_bits={self.cell_bits} exceeds weight_bits="
                          f"{self.weight_bits}; valid: 1 <= cell_bits <= weight_bits.")
    if self.weight_scale not in WEIGHT_SCALES:
      raise HardwareError(f"HardwareSpec.weight_scale={self.weight_scale!r} is unknown; valid: "
                          f"{', '.join(WEIGHT_SCALES)}.")
    for name in ("adc_reference_bits", "dac_reference_bits"):
      if getattr(self, name) is not None:
        _check_bits(name, getattr(self, name))
    for name, valid in (("variation_model", VARIATION_MODELS),
                        ("differential_read", DIFFERENTIAL_READS), ("adc_ranges", ADC_RANGES),
                        ("adc_scaling", ADC_SCALINGS)):
      if getattr(self, name) not in valid:
        raise HardwareError(f"HardwareSpec.{name}={getattr(self, name)!r} is unknown; valid: "
                            f"{', '.join(valid)}.")
    if self.on_off_ratio is not None:
      _check_number("on_off_ratio", self.on_off_ratio, 1.0, math.inf)
      if self.on_off_ratio <= 1 or math.isinf(self.on_off_ratio):
        raise HardwareError(f"HardwareSpec.on_off_ratio={self.on_off_ratio!r} is invalid; "
                            f"valid: a finite number > 1, or null for g_min = 0.")
    if self.drift_time is not None:
      _check_number("drift_time", self.drift_time, 0.0, 1e12)
    _check_number("drift_nu", self.drift_nu, 0.0, 1.0)
    _check_number("drift_nu_std", self.drift_nu_std, 0.0, 1.0)
    _check_number("drift_t0", self.drift_t0, 0.0, 1e12)
    if self.drift_t0 <= 0:
      raise HardwareError(f"HardwareSpec.drift_t0={self.drift_t0!r} is invalid; valid: > 0 "
                          f"seconds.")
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

  @property
  def serial(self) -> bool:
    """Inputs enter in `dac_bits` slices (bit-serial with quantised inputs; float inputs are
    one ideal analog cycle whatever `bit_serial` says)."""
    return self.bit_serial and self.input_bits is not None

  @property
  def input_cycles(self) -> int:
    """Input cycles of one matrix-vector operation: `ceil(input_bits / dac_bits)` when
    bit-serial, else 1 (one multi-bit analog input, or float inputs)."""
    return -(-self.input_bits // self.dac_bits) if self.serial else 1

  @property
  def g_min(self) -> float:
    """The off-state conductance over g_max: `1 / on_off_ratio` (0 when the ratio is null)."""
    return 0.0 if self.on_off_ratio is None else 1.0 / self.on_off_ratio

  def reads_pairs(self, spec: CrossbarSpec) -> bool:
    """True when a differential pair is read as one current (`differential_read=array`)."""
    return bool(self.cells(spec)[2]) and self.differential_read == "array"

  def converted_columns(self, spec: CrossbarSpec) -> tuple[int, int]:
    """ADC conversions per input cycle: `(per crossbar, per used weight)`; a pair read in the
    array is one conversion, a column digitised on its own is one."""
    per_pair = 2 if self.reads_pairs(spec) else 1
    return spec.cols // per_pair, spec.columns_per_weight // per_pair

  @property
  def drifts(self) -> bool:
    """Whether the conductances drift: a read time is set and the exponent is not 0."""
    return self.drift_time is not None and self.drift_time > 0 and (
        self.drift_nu > 0 or self.drift_nu_std > 0)

  @property
  def ideal(self) -> bool:
    """No noise, no faults and unlimited resolution (the crossbar-explicit model's function)."""
    return (self.variation == 0 and self.read_noise == 0 and self.stuck_on_rate == 0
            and self.stuck_off_rate == 0 and not self.drifts and not self.quantize_weights
            and self.input_bits is None
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
    strict_json.check_fields(cls, config, HardwareError)
    return cls(**config)

  def to_json(self, path: str | pathlib.Path | None = None) -> str:
    text = json.dumps(self.to_dict(), indent=1)
    if path is not None:
      pathlib.Path(path).write_text(text, encoding="utf-8")
    return text

  @classmethod
  def preset(cls, name: str) -> "HardwareSpec":
    """A preset shipped with the package (`isaac_32nm`, `puma_128x128`, ...)."""
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


def check_compensation(steps: str | Sequence[str], field: str = "steps") -> tuple[str, ...]:
  """`compensate_chip` steps (a sequence or a comma-separated string) as a tuple in
  `COMPENSATION_STEPS` order; HardwareError naming `field` for an unknown step or both gains."""
  if isinstance(steps, str):
    steps = [s.strip() for s in steps.split(",") if s.strip()]
  unknown = [s for s in steps if s not in COMPENSATION_STEPS]
  if unknown:
    raise HardwareError(f"{field}: unknown compensation step(s) {unknown}; valid: "
                        f"{', '.join(COMPENSATION_STEPS)}.")
  if "column_gain" in steps and "layer_gain" in steps:
    raise HardwareError(f"{field}: column_gain and layer_gain exclude each other; valid: one.")
  return tuple(s for s in COMPENSATION_STEPS if s in steps)


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
