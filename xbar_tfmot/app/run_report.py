"""The report folder of an `xbar-prune` run: `metrics.json`, `report.md`, `mapping.json`, plots.

Crossbar counts come from the crossbar report of the model before pruning (after reorder) and
of the stripped pruned model; the count that matters is `packed` (columns packed per input
group, output recombination) at column grain and `blocks` at crossbar grain. Kept energy of a
layer is the share of its pre-pruning kernel's energy on the weights that survive (the
weights' sum of squares, not joules). Every run shows the chip's three costs beside the
crossbars, per layer and in total: energy and latency per inference (and area) on
`hardware.preset` from the cost model (`core.cost`), no simulation.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from xbar_tfmot.app import plots
from xbar_tfmot.core.mapping import CrossbarMapping
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.models.model_mapping import build_mapping
from xbar_tfmot.models.report import crossbar_report


def count_field(granularity: str) -> str:
  return "packed" if granularity == "column" else "blocks"


def layer_rows(dense_model, pruned_model, spec: CrossbarSpec, granularity: str) -> list[dict]:
  """Per mapped layer: dense and pruned crossbars, reduction, utilization, kept energy."""
  field = count_field(granularity)
  dense = {r.name: r for r in crossbar_report(dense_model, spec).mapped}
  rows = []
  for r in crossbar_report(pruned_model, spec).mapped:
    before = np.asarray(introspection.effective_kernel(dense_model.get_layer(r.name)), np.float64)
    after = np.asarray(introspection.effective_kernel(pruned_model.get_layer(r.name)))
    energy = float(np.sum(before**2))
    d, p = dense[r.name].counts.dense, getattr(r.counts, field)
    rows.append({
        "name": r.name, "type": r.type, "kernel_shape": list(r.kernel_shape),
        "kin": r.geometry.kin, "kout": r.geometry.kout, "dense": d, "pruned": p,
        "blocks": r.counts.blocks, "packed": r.counts.packed,
        "reduction": 1.0 - p / d, "utilization": r.counts.utilization(p),
        "nonzero_weights": r.counts.nonzero_weights,
        "cells_per_crossbar": r.counts.cells_per_crossbar,
        "kept_energy": float(np.sum((before * (after != 0))**2)) / energy if energy else 1.0,
    })
  return rows


def occupancy_maps(model, spec: CrossbarSpec, granularity: str) -> list[tuple[str, np.ndarray, str]]:
  """Which crossbar blocks (crossbar grain) or column segments (column grain) hold weights."""
  maps = []
  for layer in introspection.iter_layers(model):
    if not introspection.is_mapped(layer):
      continue
    g = introspection.geometry_of(introspection.unwrap(layer), spec)
    seg = g.nonzero_segments(introspection.effective_kernel(layer))
    if granularity == "crossbar":
      padded = np.zeros((g.g_in, g.g_out * g.kout), bool)
      padded[:, :g.cout] = seg
      maps.append((layer.name, padded.reshape(g.g_in, g.g_out, g.kout).any(axis=2),
                   "output group (crossbar column block)"))
    else:
      maps.append((layer.name, seg, "output channel"))
  return maps


def write(folder: pathlib.Path, config, spec: CrossbarSpec, dense_model, pruned_model,
          state: dict[str, Any], plots_enabled: bool = True,
          mapping: CrossbarMapping | None = None,
          dense_mapping: CrossbarMapping | None = None) -> dict[str, Any]:
  """Writes the report folder; returns the metrics (also `metrics.json`). `mapping`,
  `dense_mapping`: the pruned and dense models', when the caller has built them (else built
  here)."""
  folder.mkdir(parents=True, exist_ok=True)
  granularity = config.chip.granularity
  rows = layer_rows(dense_model, pruned_model, spec, granularity)
  if mapping is None:
    mapping = build_mapping(pruned_model, spec, granularity)
  if dense_mapping is None:
    dense_mapping = build_mapping(dense_model, spec, granularity)
  mapping.to_json(folder / "mapping.json", indent=1)
  _add_layer_costs(rows, config.hardware.hardware_spec, pruned_model, mapping)
  dense_total = sum(r["dense"] for r in rows)
  pruned_total = sum(r["pruned"] for r in rows)
  if mapping.totals["crossbars"] != pruned_total:
    raise RuntimeError(f"the mapping packs {mapping.totals['crossbars']} crossbars but the "
                       f"report counts {pruned_total}: the two disagree.")
  phases = state["phases"]
  accuracy = {name: phases[name]["accuracy"] for name in ("baseline", "reorder", "prune")
              if "accuracy" in phases.get(name, {})}
  cells = sum(r["pruned"] * r["cells_per_crossbar"] for r in rows)
  metrics = {
      "name": config.name,
      "flavour": config.flavour,
      "spec": spec.to_dict(),
      "granularity": granularity,
      "count": count_field(granularity),
      "accuracy": {"dense": accuracy.get("baseline"), "reordered": accuracy.get("reorder"),
                   "pruned": accuracy.get("prune")},
      "crossbars": {"dense": dense_total, "pruned": pruned_total,
                    "reduction": 1.0 - pruned_total / dense_total if dense_total else 0.0},
      "utilization": sum(r["nonzero_weights"] for r in rows) / cells if cells else 0.0,
      "kept_energy": _weighted_kept(rows),
      "layers": rows,
      "mapping": mapping.totals,
      "unmapped": mapping.data.get("unmapped", []),
      "export": phases.get("export", {}),
      "hardware": phases.get("hardware", {}),
      "chip_cost": _chip_cost(config, dense_model, pruned_model, dense_mapping, mapping),
      "layer_by_layer": phases.get("prune", {}).get("layer_by_layer"),
      "allocation": phases.get("prune", {}).get("allocation"),
      "objective": phases.get("prune", {}).get("objective"),
      "seconds": {name: phases[name].get("seconds") for name in phases},
      "config": config.flat(),
  }
  images = []
  if plots_enabled:
    images = _plots(folder, config, spec, pruned_model, rows, phases)
  (folder / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float) + "\n",
                                       encoding="utf-8")
  (folder / "report.md").write_text(_markdown(metrics, spec, images), encoding="utf-8")
  return metrics


def _add_layer_costs(rows: list[dict], hw, pruned_model, mapping: CrossbarMapping) -> None:
  """Adds each layer's energy (nJ, dense and pruned) and latency (ns, pruned) per inference on
  `hw` from the cost model to its row."""
  from xbar_tfmot.core.cost import estimate_cost
  from xbar_tfmot.models.analog_model import output_positions
  report = estimate_cost(mapping, hw, output_positions(pruned_model, mapping.layer_names))
  costs = {l.name: l for l in report.layers}
  for r in rows:
    c = costs[r["name"]]
    r.update(energy_dense_nj=c.dense.energy_pj / 1e3, energy_pruned_nj=c.pruned.energy_pj / 1e3,
             latency_ns=c.pruned.latency_ns)


def _chip_cost(config, dense_model, pruned_model, dense_mapping: CrossbarMapping,
               mapping: CrossbarMapping) -> dict[str, Any]:
  """Crossbars, energy, area and latency per inference of the dense and pruned models on
  `hardware.preset` (the cost model only: no simulation, so it costs milliseconds)."""
  from xbar_tfmot.models.hardware_sweep import cost_summary
  hw = config.hardware.hardware_spec
  return {"hardware": hw.name, "dense": cost_summary(dense_model, dense_mapping, hw),
          "pruned": cost_summary(pruned_model, mapping, hw)}


def _weighted_kept(rows: list[dict]) -> float:
  pruned = [r for r in rows if r["pruned"] < r["dense"]]
  weights = [r["dense"] for r in pruned]
  return float(np.average([r["kept_energy"] for r in pruned], weights=weights)) if pruned else 1.0


def _plots(folder, config, spec, pruned_model, rows, phases) -> list[tuple[str, str]]:
  title = f"{config.name}: {config.model.name} on {spec}, {config.chip.granularity} grain"
  plots.crossbars_per_layer(rows, folder / "crossbars_per_layer.png", title)
  plots.occupancy(occupancy_maps(pruned_model, spec, config.chip.granularity),
                  folder / "occupancy.png", f"{title}: surviving units (dark)")
  images = [("Crossbars per layer", "crossbars_per_layer.png"),
            ("Crossbar occupancy", "occupancy.png")]
  histories = [(name, phases[name].get("history", {})) for name in ("baseline", "prune")
               if name in phases]
  if plots.training_curves(histories, folder / "training_curves.png", title):
    images.append(("Training curves", "training_curves.png"))
  hw = phases.get("hardware", {})
  series = {label: hw[label]["sweep"] for label in ("dense", "pruned")
            if "sweep" in hw.get(label, {})}
  if series and plots.hardware_sweep(
      series, folder / "hardware_sweep.png",
      f"{title}: {hw['hardware']['name']} chips, {hw['sweep_instances']} instances"):
    images.append(("Accuracy on non-ideal crossbars", "hardware_sweep.png"))
  return images


def _fmt(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.4f}"


SWEEP_LABELS = {"variation": lambda v: f"variation {100 * v:g}% of g_max",
                "adc_bits": lambda v: f"ADC {v:g} bits",
                "stuck": lambda v: f"stuck-at {100 * v:g}%"}


def _sweep_table(hw: dict[str, Any]) -> list[str]:
  """The one-factor-at-a-time sweep of the hardware phase as markdown (none if not run)."""
  sweeps = {label: hw[label].get("sweep") for label in ("dense", "pruned")}
  if not all(sweeps.values()):
    return []
  lines = ["", f"Accuracy sweep, one factor at a time ({hw['sweep_instances']} chip instances, "
           f"mean ± std): variation with the ADC at {hw['hardware']['adc_bits']} bits and no "
           f"faults; ADC bits with no variation; stuck-at cells (half on, half off) with no "
           f"variation.", "", "| condition | dense | pruned |", "|---|---|---|"]
  for d, p in zip(sweeps["dense"], sweeps["pruned"]):
    lines.append(f"| {SWEEP_LABELS[d['factor']](d['value'])} | {d['mean']:.1%} ± {d['std']:.1%} "
                 f"| {p['mean']:.1%} ± {p['std']:.1%} |")
  return lines


def _markdown(m: dict[str, Any], spec: CrossbarSpec, images: list[tuple[str, str]]) -> str:
  acc, xb = m["accuracy"], m["crossbars"]
  lines = [
      f"# xbar-prune report: {m['name']}", "",
      f"- crossbar: `{spec.to_string()}`, {m['granularity']} grain (count: `{m['count']}`)",
      f"- accuracy: dense {_fmt(acc['dense'])}"
      + (f", reordered {_fmt(acc['reordered'])}" if acc["reordered"] is not None else "")
      + f", pruned {_fmt(acc['pruned'])}",
      f"- crossbars: {xb['dense']} dense, {xb['pruned']} pruned, reduction {xb['reduction']:.1%}",
      f"- utilization of the used crossbars {m['utilization']:.1%}; kept energy of the pruned "
      f"layers {m['kept_energy']:.1%}",
      "- time per phase (s): " + ", ".join(f"{k} {v}" for k, v in m["seconds"].items()), "",
      f"Energy and latency per inference on `{m['chip_cost']['hardware']}` (cost model; the "
      f"latency's total adds the layers, none pipelined); kept energy: the share of the "
      f"kernel's sum of squares on the surviving weights.", "",
      "| layer | type | Kin | Kout | dense | pruned | reduction | utilization | kept energy | "
      "chip energy nJ dense / pruned | latency ns |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in m["layers"]:
    lines.append(f"| {r['name']} | {r['type']} | {r['kin']} | {r['kout']} | {r['dense']} | "
                 f"{r['pruned']} | {r['reduction']:.1%} | {r['utilization']:.1%} | "
                 f"{r['kept_energy']:.1%} | {r['energy_dense_nj']:.1f} / "
                 f"{r['energy_pruned_nj']:.1f} | {r['latency_ns']:.0f} |")
  lines.append(f"| total | | | | {xb['dense']} | {xb['pruned']} | {xb['reduction']:.1%} | "
               f"{m['utilization']:.1%} | {m['kept_energy']:.1%} | "
               f"{sum(r['energy_dense_nj'] for r in m['layers']):.1f} / "
               f"{sum(r['energy_pruned_nj'] for r in m['layers']):.1f} | "
               f"{sum(r['latency_ns'] for r in m['layers']):.0f} |")
  if m["unmapped"]:
    lines += ["", "Not mapped: " + "; ".join(f"{u['name']} ({u['reason']})"
                                             for u in m["unmapped"])]
  if m["layer_by_layer"]:
    lines += ["", "## Layer by layer", "",
              "Each layer in turn was pruned until a stop rule fired, then fine-tuned; accuracy "
              "on the validation images held out of the training images.", "",
              "| layer | before | after | reduction | steps | stopped by | validation accuracy "
              "| rejected step's accuracy |", "|---|---|---|---|---|---|---|---|"]
    for o in m["layer_by_layer"]:
      lines.append(f"| {o['layer']} | {o['before']} | {o['after']} | {o['reduction']:.1%} | "
                   f"{o['steps']} | {o['stop']} | {_fmt(o['accuracy'])} | "
                   f"{_fmt(o['rejected_accuracy'])} |")
  if m["allocation"]:
    a = m["allocation"]
    steps = next((r["trajectory"][-1][0] for r in a["candidates"] if "trajectory" in r), 0)
    tuned = f", fine-tuned for {steps} masked steps on training images," if steps else ""
    lines += ["", "## Allocation chosen on validation", "",
              f"Each candidate cut from the prune input without training (a `global_score` "
              f"pool re-split along the pruning schedule's mask updates){tuned} BatchNorm "
              f"re-estimated "
              f"on training images, scored on the validation images held out of the training "
              f"images; `{a['chosen']}` was trained.", "",
              "| candidate | crossbars | chip energy | as cut | validation accuracy |",
              "|---|---|---|---|---|"]
    for r in a["candidates"]:
      score = (_fmt(r["validation_accuracy"]) if "validation_accuracy" in r
               else f"infeasible: {r['infeasible']}")
      mark = " (chosen)" if r["name"] == a["chosen"] else ""
      energy = f"{r['energy_nj']:.1f} nJ" if "energy_nj" in r else ""
      one_shot = _fmt(r["trajectory"][0][1]) if "trajectory" in r else ""
      lines.append(f"| {r['name']}{mark} | {r.get('crossbars', '')} | {energy} | {one_shot} | "
                   f"{score} |")
  chip = m["chip_cost"]
  objective = m.get("objective")
  budget = ([f"The allocation split the crossbars by {objective['objective']} on "
             f"`{objective['hardware']}`: a budget of {objective['budget_nj']:.1f} of the dense "
             f"{objective['dense_nj']:.1f} nJ per inference (`allocation.objective`).", ""]
            if objective else [])
  lines += ["", f"## On `{chip['hardware']}` (cost model)", "",
            "Per inference, from the mapping (`hardware.preset`; docs/hardware.md, \"The cost "
            "model\"); accuracy on the chip is the hardware phase's.", "", *budget,
            "| model | crossbars | energy | area | latency |", "|---|---|---|---|---|"]
  for label in ("dense", "pruned"):
    r = chip[label]
    lines.append(f"| {label} | {r['crossbars']} | {r['energy_nj']:.1f} nJ | "
                 f"{r['area_mm2']:.3f} mm2 | {r['latency_ns']:.0f} ns |")
  saved = 1 - chip["pruned"]["energy_nj"] / chip["dense"]["energy_nj"]
  lines.append(f"| saved | {xb['reduction']:.1%} | {saved:.1%} | "
               f"{1 - chip['pruned']['area_mm2'] / chip['dense']['area_mm2']:.1%} | "
               f"{1 - chip['pruned']['latency_ns'] / chip['dense']['latency_ns']:.1%} |")
  export = m["export"]
  if export.get("enabled"):
    lines += ["", f"Export: `export/` ({', '.join(export['formats'])})"
              + (f", xbar-verify {'passed' if export.get('verified') else 'FAILED'}"
                 if "verified" in export else "")]
    if export.get("tflite_accuracy"):
      how = {"quantize_aware": f"quantisation-aware training "
                               f"({export.get('quantize_aware_epochs')} epochs)",
             "post_training": f"post-training quantisation "
                              f"({export.get('representative_images')} calibration images)"}
      lines += ["", "Test accuracy of the TFLite files (TFLite interpreter): " + ", ".join(
          f"`{name}.tflite` {_fmt(acc)}" for name, acc in export["tflite_accuracy"].items())
          + (f"; `model_int8.tflite` by {how[export['int8']]}" if export.get("int8") in how
             else "")]
  hw = m["hardware"]
  if hw.get("enabled"):
    lines += ["", f"## On {hw['hardware']['name']} crossbars", "",
              f"{hw['instances']} chip instances, {hw['images']} test images; accuracy mean "
              f"± std over the instances.", "",
              "| model | crossbars | energy / inference | area | latency | float accuracy | "
              "analog accuracy |", "|---|---|---|---|---|---|---|"]
    for label in ("dense", "pruned"):
      r = hw[label]
      lines.append(f"| {label} | {r['crossbars']} | {r['energy_nj']:.1f} nJ | "
                   f"{r['area_mm2']:.3f} mm2 | {r['latency_ns']:.0f} ns | "
                   f"{r['float_accuracy']:.1%} | {r['accuracy_mean']:.1%} ± "
                   f"{r['accuracy_std']:.1%} |")
    lines += _sweep_table(hw)
  for caption, name in images:
    lines += ["", f"## {caption}", "", f"![{caption}]({name})"]
  lines += ["", "## Config", "", "```"]
  lines += [f"{k} = {v!r}" for k, v in sorted(m["config"].items())]
  lines += ["```", ""]
  return "\n".join(lines)
