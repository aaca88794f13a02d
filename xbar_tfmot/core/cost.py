"""Energy, area and latency of a mapped model on a `HardwareSpec` (docs/hardware.md, "The cost model").

Everything is counted from the mapping, per layer, for the pruned mapping and for the same
layer unpruned (all `G_in * G_out` crossbars, every column used), side by side:

- crossbars `N` (one copy) and `N * replicas` on the chip;
- matrix-vector operations per inference `M = P * C`: `P` output positions (from the model:
  the layer's output height x width, 1 for a Dense on a vector), `C` input cycles
  (`HardwareSpec.input_cycles`: `ceil(input_bits / dac_bits)` when bit-serial, else 1, the
  dataflow the analog model simulates); every crossbar of the layer is activated `M` times;
- energy per inference: array `N * M * e_array * s`, ADC `conversions * M * e_adc`, DAC
  `N * rows * M * e_dac`, where `s = rows*cols / (array_rows*array_cols)` scales the preset's
  array to the mapping's crossbar and `conversions` is, per activation, every converted line
  of every crossbar (`N * cols`, halved where differential pairs are read as one current), or
  only the used ones (`used logical columns * lines per weight`) when the hardware skips idle
  columns (`HardwareSpec.converted_columns`);
- area: `N * replicas * (a_array * s + adcs_per_crossbar * a_adc + rows * a_dac)`;
- converters at another resolution than the preset's (`adc_reference_bits`,
  `dac_reference_bits`): `e_adc`, `a_adc` times `adc_scale(hw)`, `e_dac`, `a_dac` times
  `dac_scale(hw)` (the laws below, docs/hardware.md "Converter resolution");
- latency: `ceil(P / replicas) * C * cycle_ns` per layer (replicas share the output
  positions), layers one after the other (no inter-layer pipelining).

Buffers, digital shift-add and accumulation, pooling, activations and the interconnect are
not counted: the numbers compare mappings, they are not a chip's total. This module knows no
Keras; output positions come from the caller (`xbar_tfmot.models.analog_model.output_positions`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from xbar_tfmot.core.hardware import HardwareError, HardwareSpec
from xbar_tfmot.core.mapping import CrossbarMapping


# Energy (pJ) and area (um^2) of one conversion of ISAAC's ADC at 4..10 bits, 32 nm, 1.2 GS/s:
# Accelergy-Project/hwcomponents-library, hwcomponents_library/library/isaac.py, `IsaacADC`
# (its table of scaled versions, after Saberi et al., TCAS-I 2011; 8 bits = ISAAC Table I:
# 16 mW / (8 x 1.2 GS/s) = 1.67 pJ, 0.0096 mm2 / 8 = 1200 um^2).
ISAAC_ADC_TABLE = {4: (0.79, 361.04), 5: (0.99, 476.91), 6: (1.20, 626.91),
                   7: (1.42, 845.18), 8: (1.67, 1200.0), 9: (1.969078145, 1827.911647),
                   10: (2.379022742, 3002.008032)}


def _table(bits: int, column: int) -> float:
  """ISAAC_ADC_TABLE at `bits`; outside 4..10 bits extended geometrically with the ratio of
  the table's nearest step (ours)."""
  low, high = min(ISAAC_ADC_TABLE), max(ISAAC_ADC_TABLE)
  if bits < low:
    a, b = ISAAC_ADC_TABLE[low][column], ISAAC_ADC_TABLE[low + 1][column]
    return a * (a / b) ** (low - bits)
  if bits > high:
    a, b = ISAAC_ADC_TABLE[high][column], ISAAC_ADC_TABLE[high - 1][column]
    return a * (a / b) ** (bits - high)
  return ISAAC_ADC_TABLE[bits][column]


def adc_scale(hw: HardwareSpec) -> tuple[float, float]:
  """`(energy, area)` factors of an `adc_bits` ADC over the preset's `adc_reference_bits` one.

  `table`: the ratio of Accelergy's ISAAC ADC table at the two resolutions (`ISAAC_ADC_TABLE`);
  `linear`: energy `adc_bits / adc_reference_bits`, area unchanged (PUMA's constants).
  1 when either is null (an ideal ADC is charged at the reference resolution).
  """
  bits, ref = hw.adc_bits, hw.adc_reference_bits
  if bits is None or ref is None or bits == ref:
    return 1.0, 1.0
  if hw.adc_scaling == "linear":
    return bits / ref, 1.0
  return _table(bits, 0) / _table(ref, 0), _table(bits, 1) / _table(ref, 1)


def dac_bits(hw: HardwareSpec) -> int | None:
  """Bits one DAC applies per input cycle: `dac_bits` bit-serial, `input_bits` for one analog
  input, None for float inputs."""
  if hw.input_bits is None:
    return None
  return hw.dac_bits if hw.serial else hw.input_bits


def dac_scale(hw: HardwareSpec) -> float:
  """Energy and area factor of the DAC over the preset's `dac_reference_bits` one: in
  proportion to the bits (ours: the energy per input bit and row stays that of the reference,
  so a bit-serial MVM's DAC energy does not depend on how its bits are split); 1 when either is
  null."""
  bits, ref = dac_bits(hw), hw.dac_reference_bits
  if bits is None or ref is None:
    return 1.0
  return bits / ref


@dataclasses.dataclass(frozen=True)
class Cost:
  """One layer (or a total) on one mapping: counts, energy (pJ), area (mm²), latency (ns)."""

  crossbars: int  # on the chip, replicas included
  activations: int  # crossbar activations per inference (crossbars of one copy x M)
  conversions: int  # ADC conversions per inference
  energy_array_pj: float
  energy_adc_pj: float
  energy_dac_pj: float
  area_mm2: float
  latency_ns: float

  @property
  def energy_pj(self) -> float:
    return self.energy_array_pj + self.energy_adc_pj + self.energy_dac_pj

  def __add__(self, other: "Cost") -> "Cost":
    return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "energy_pj": self.energy_pj}


ZERO = Cost(0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class LayerCost:
  name: str
  positions: int
  mvms: int  # matrix-vector operations per inference: positions x input cycles
  pruned: Cost
  dense: Cost


@dataclasses.dataclass(frozen=True)
class CostReport:
  """Per-layer and total costs of a mapping on a hardware description."""

  hardware: HardwareSpec
  layers: tuple[LayerCost, ...]

  @property
  def pruned(self) -> Cost:
    return sum((l.pruned for l in self.layers), ZERO)

  @property
  def dense(self) -> Cost:
    return sum((l.dense for l in self.layers), ZERO)

  def to_dict(self) -> dict[str, Any]:
    return {
        "hardware": self.hardware.name,
        "layers": [{"name": l.name, "positions": l.positions, "mvms": l.mvms,
                    "pruned": l.pruned.to_dict(), "dense": l.dense.to_dict()}
                   for l in self.layers],
        "totals": {"pruned": self.pruned.to_dict(), "dense": self.dense.to_dict()},
    }

  def format_table(self) -> str:
    head = (f"{'layer':<18}{'MVMs':>8}{'xbars d/p':>12}{'energy nJ d/p':>20}"
            f"{'area mm2 d/p':>22}{'latency us d/p':>18}")
    lines = [f"cost on {self.hardware.name} (per inference; arrays, ADCs and DACs only)", head,
             "-" * len(head)]
    rows = [(l.name, l.mvms, l.dense, l.pruned) for l in self.layers]
    rows.append(("total", sum(l.mvms for l in self.layers), self.dense, self.pruned))
    for name, mvms, d, p in rows:
      lines.append(
          f"{name[:17]:<18}{mvms:>8}{f'{d.crossbars}/{p.crossbars}':>12}"
          f"{f'{d.energy_pj / 1e3:.2f}/{p.energy_pj / 1e3:.2f}':>20}"
          f"{f'{d.area_mm2:.4f}/{p.area_mm2:.4f}':>22}"
          f"{f'{d.latency_ns / 1e3:.2f}/{p.latency_ns / 1e3:.2f}':>18}")
    d, p = self.dense, self.pruned
    if d.energy_pj and d.area_mm2:
      lines.append(f"pruned / dense: energy {p.energy_pj / d.energy_pj:.1%}, area "
                   f"{p.area_mm2 / d.area_mm2:.1%} (ADC {p.energy_adc_pj / 1e3:.2f} of "
                   f"{p.energy_pj / 1e3:.2f} nJ)")
    return "\n".join(lines)


def estimate_cost(mapping: CrossbarMapping, hw: HardwareSpec,
                  positions: Mapping[str, int]) -> CostReport:
  """The `CostReport` of `mapping` on `hw`; `positions` gives each layer's output positions."""
  spec = mapping.spec
  scaled, scale, cycles, lines = _chip(hw, spec)
  out = []
  for i, layer in enumerate(mapping.data["layers"]):
    name = layer["name"]
    if name not in positions:
      raise HardwareError(f"layers[{i}] ({name!r}): no output positions given for it; "
                          f"the model does not match the mapping.")
    p = positions[name]
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
      raise HardwareError(f"positions[{name!r}]={p!r} is invalid; valid: an integer >= 1.")
    geometry = mapping.geometry(name)
    used = sum(len(x["columns"]) for x in layer["crossbars"])
    pruned = _cost(scaled, spec, scale, cycles, lines, p, geometry.replicas,
                   len(layer["crossbars"]), used)
    dense = _cost(scaled, spec, scale, cycles, lines, p, geometry.replicas,
                  geometry.dense_crossbars, geometry.g_in * geometry.cout)
    out.append(LayerCost(name, p, p * cycles, pruned, dense))
  return CostReport(hw, tuple(out))


def dense_cost(geometry, hw: HardwareSpec, positions: int) -> Cost:
  """The cost model's numbers for `geometry`'s layer unpruned (every dense crossbar) with
  `positions` output positions: what `estimate_cost` reports as a layer's `dense`."""
  scaled, scale, cycles, lines = _chip(hw, geometry.spec)
  return _cost(scaled, geometry.spec, scale, cycles, lines, positions, geometry.replicas,
               geometry.dense_crossbars, geometry.g_in * geometry.cout)


def _chip(hw: HardwareSpec, spec) -> tuple[HardwareSpec, float, int, tuple[int, int]]:
  """`hw` with its converters scaled to their resolution, the array scale of `spec`'s
  crossbar, the input cycles and the converted lines (per crossbar, per weight column)."""
  hw.cells(spec)  # the weights' layout must agree with the mapping
  scale = spec.rows * spec.cols / (hw.array_rows * hw.array_cols)
  adc, adc_area = adc_scale(hw)
  dac = dac_scale(hw)
  scaled = hw.replace(adc_energy_pj=hw.adc_energy_pj * adc,
                      adc_area_mm2=hw.adc_area_mm2 * adc_area,
                      dac_energy_pj=hw.dac_energy_pj * dac, dac_area_mm2=hw.dac_area_mm2 * dac)
  return scaled, scale, hw.input_cycles, hw.converted_columns(spec)


def _cost(hw: HardwareSpec, spec, scale: float, cycles: int, lines: tuple[int, int],
          positions: int, replicas: int, crossbars: int, used_columns: int) -> Cost:
  mvms = positions * cycles
  per_crossbar, per_weight = lines
  per_activation = (used_columns * per_weight if hw.skip_idle_columns
                    else crossbars * per_crossbar)
  return Cost(
      crossbars=crossbars * replicas,
      activations=crossbars * mvms,
      conversions=per_activation * mvms,
      energy_array_pj=crossbars * mvms * hw.array_energy_pj * scale,
      energy_adc_pj=per_activation * mvms * hw.adc_energy_pj,
      energy_dac_pj=crossbars * spec.rows * mvms * hw.dac_energy_pj,
      area_mm2=crossbars * replicas * (hw.array_area_mm2 * scale
                                       + hw.adcs_per_crossbar * hw.adc_area_mm2
                                       + spec.rows * hw.dac_area_mm2),
      latency_ns=(-(-positions // replicas) * cycles * hw.cycle_ns) if crossbars else 0.0,
  )
