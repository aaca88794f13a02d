"""Accuracy of a mapped model against one non-ideality at a time, and its cost on a chip.

One implementation for library users (`xbar_tfmot.sweep_hardware`, `sweep_conditions`,
`SweepCondition`, `hardware_cost_summary`), the `xbar-prune` hardware phase and
`tools/bench_hardware.py`. It lives in `models` because it runs a model on simulated chips
(`models.analog_model`); the chip and the cost model it reads are `core`.

The sweep is one factor at a time around a nominal chip `hw` (docs/hardware.md):

- `variation`: programming variation `v` (the preset's `variation_model`), ADC at `hw.adc_bits`,
  no stuck-at faults;
- `adc_bits`: ADC resolution `b`, no variation, no faults;
- `stuck`: a fraction `r` of the cells stuck, half at `g_max` and half at 0, ADC at
  `hw.adc_bits`, no variation;
- `time`: the chip read `t` seconds after programming (`drift_time`, PCM-like drift with the
  chip's drift fields), no variation, no faults.

`compensation` (steps of `compensate_chip`) is run on every chip of every condition, on the
calibration images; it is part of each condition's cache key.

Every other field (read noise, input bits, cells) stays as `hw` has it. Conditions that give
the same `HardwareSpec` (variation 0, the nominal ADC bits and stuck 0 are one chip when the
nominal chip has no variation or faults) are evaluated once and reported under each factor.
Chip instances are the seeds `seed, seed + 1, ...`: the same seeds for every model and
condition, so models are compared on the same draws. A condition without variation, faults or
read noise programs the same chip for every seed; it is measured once (std 0).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Sequence

import numpy as np

from xbar_tfmot.core.cost import estimate_cost
from xbar_tfmot.core.hardware import HardwareError, HardwareSpec, check_compensation
from xbar_tfmot.core.mapping import CrossbarMapping

FACTORS = ("variation", "adc_bits", "stuck", "time")


@dataclasses.dataclass(frozen=True)
class Condition:
  """One point of the sweep: `factor` set to `value`, the chip `hw` it gives."""

  factor: str
  value: float
  hw: HardwareSpec
  compensation: tuple[str, ...] = ()

  @property
  def random(self) -> bool:
    """Whether chip instances differ: without variation, faults, read noise or a spread of
    drift every seed programs the same chip, so one instance stands for all."""
    h = self.hw
    return bool(h.variation or h.stuck_on_rate or h.stuck_off_rate or h.read_noise
                or (h.drifts and h.drift_nu_std))

  @property
  def key(self) -> str:
    """The chip's non-ideality fields (and the compensation, when any) as a string: equal
    keys, equal chips."""
    d = self.hw.to_dict()
    fields = {k: d[k] for k in sorted(d) if k not in ("name", "sources", "notes")}
    if self.compensation:
      fields["compensation"] = list(self.compensation)
    return json.dumps(fields, sort_keys=True)


def conditions(hw: HardwareSpec, variations: Sequence[float] = (),
               adc_bits: Sequence[int] = (), stuck: Sequence[float] = (),
               times: Sequence[float] = (), compensation: Sequence[str] = ()) -> list[Condition]:
  """The one-factor-at-a-time conditions around `hw` (module docstring), in factor order."""
  steps = check_compensation(compensation, "compensation")
  clean = dict(variation=0.0, stuck_on_rate=0.0, stuck_off_rate=0.0)
  out = []
  for v in variations:
    out.append(Condition("variation", float(v),
                         hw.replace(**{**clean, "variation": float(v)})))
  for b in adc_bits:
    if isinstance(b, bool) or int(b) != b:
      raise HardwareError(f"adc_bits sweep value {b!r}: valid: integers 1..16.")
    out.append(Condition("adc_bits", int(b), hw.replace(**{**clean, "adc_bits": int(b)})))
  for r in stuck:
    out.append(Condition("stuck", float(r), hw.replace(
        **{**clean, "stuck_on_rate": float(r) / 2, "stuck_off_rate": float(r) / 2})))
  for t in times:
    out.append(Condition("time", float(t), hw.replace(**{**clean, "drift_time": float(t)})))
  return [dataclasses.replace(c, compensation=steps) for c in out]


def sweep(model: Any, mapping: CrossbarMapping, hw: HardwareSpec, x: np.ndarray, y: np.ndarray,
          calibration: Any, instances: int, variations: Sequence[float] = (),
          adc_bits: Sequence[int] = (), stuck: Sequence[float] = (),
          times: Sequence[float] = (), compensation: Sequence[str] = (), seed: int = 0,
          cache: dict[str, list[float]] | None = None,
          on_result: Callable[[str, list[float]], None] | None = None,
          traced: bool | None = None) -> list[dict[str, Any]]:
  """Accuracy mean ± std over `instances` chips for each condition of `conditions(...)`.

  Why: one non-ideality at a time shows which one a mapped (pruned or dense) model is
  sensitive to, on the same chip draws for every model compared.

  Args:
    model, mapping: the model and its crossbar mapping (`analog_accuracy`'s arguments).
    hw: the nominal chip around which one factor at a time changes.
    x, y: the evaluation images and labels; calibration: inputs that set the DAC/ADC ranges
      (and that `compensation` runs on).
    variations, adc_bits, stuck, times: each factor's values (module docstring).
    compensation: `compensate_chip` steps run on every chip before it is measured.
    cache: accuracies already measured, by `Condition.key`; reused when they hold one value
      per chip this call asks for (`instances`, or 1 for a condition without randomness).
    on_result: called with `(key, accuracies)` after each condition measured here (a caller
      saves it so an interrupted run resumes).
    traced: run each chip as a graph or eagerly (`analog_accuracy`; None: it decides by the
      number of images).

  Returns:
    One row per condition: factor, value, mean, std, accuracies (one per chip instance) and
    `measured` (False when the accuracies came from `cache` or an equal earlier condition).
  """
  from xbar_tfmot.models.analog_model import analog_accuracy  # TensorFlow only when measuring
  if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
    raise HardwareError(f"instances={instances!r}: valid: an integer >= 1 (chip instances).")
  known = dict(cache or {})
  seeds = range(seed, seed + instances)
  rows = []
  for c in conditions(hw, variations, adc_bits, stuck, times, compensation):
    chips = seeds if c.random else seeds[:1]
    measured = len(known.get(c.key, ())) != len(chips)
    if measured:
      known[c.key] = analog_accuracy(model, mapping, c.hw, x, y, chips, calibration,
                                     batch_size=250, traced=traced,
                                     compensation=c.compensation)
      if on_result is not None:
        on_result(c.key, known[c.key])
    accs = known[c.key]
    rows.append({"factor": c.factor, "value": c.value, "mean": float(np.mean(accs)),
                 "std": float(np.std(accs)), "accuracies": accs, "random": c.random,
                 "measured": measured})
  return rows


def cost_summary(model: Any, mapping: CrossbarMapping, hw: HardwareSpec) -> dict[str, Any]:
  """Crossbars, energy (nJ), area (mm2) and latency (ns) per inference of the mapping on `hw`."""
  from xbar_tfmot.models.analog_model import output_positions
  cost = estimate_cost(mapping, hw, output_positions(model, mapping.layer_names)).pruned
  return {"crossbars": int(mapping.totals["crossbars"]), "energy_nj": cost.energy_pj / 1e3,
          "area_mm2": cost.area_mm2, "latency_ns": cost.latency_ns}


def parse_values(text: str, field: str, kind: type = float) -> tuple:
  """A comma-separated list of numbers (`"0,0.05"`); a bad item names `field`."""
  out = []
  for item in (t.strip() for t in str(text).split(",")):
    if not item:
      continue
    try:
      value = kind(item)
    except ValueError:
      raise HardwareError(f"{field}={text!r}: {item!r} is not a number; valid: a comma-separated "
                          f"list of {'integers' if kind is int else 'numbers'}.") from None
    out.append(value)
  return tuple(out)
