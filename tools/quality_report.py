"""The quality benchmark's results file and report: `<out>/results.json`, the markdown tables
and readings (`bench_quality.md`) and the plot (`bench_quality.png`).

Part of `tools/bench_quality.py`. Runs on different (network, seed) pairs may share an `--out`:
every read and write of the results file holds `results.lock`, a `FileLock` (the project's one
lock, `xbar_tfmot.app.workdir_lock`), and merges what the other runs added.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from quality_methods import (ALLOCATION, BASELINES, DISTILLED, KD, LGD_METHODS, METHOD_GROUPS,
                             METHOD_LABELS, METHOD_TABLE, METHODS, PROCEDURE)

LOCK_WAIT = 600.0  # seconds a run waits for another's read or write of the results file


class Results:
  """`<out>/results.json`: setting, per-(network, seed) baselines and finished cells.

  `check`: refuse a folder that holds results of another `setting`.
  """

  def __init__(self, out: pathlib.Path, setting: dict, check: bool = True):
    from xbar_tfmot.app.workdir_lock import FileLock
    self.path = out / "results.json"
    self.lock = FileLock(out / "results.lock", wait=LOCK_WAIT)
    self.setting = setting
    if self.path.exists():
      self.data = json.loads(self.path.read_text())
      old = self.data.get("setting", {})
      diff = {k: (old.get(k), v) for k, v in setting.items() if old.get(k) != v}
      if diff and check:
        raise SystemExit(
            f"--out {out} holds results of another setting ("
            + ", ".join(f"--{k.replace('_', '-')} {a!r} there, {b!r} now"
                        for k, (a, b) in diff.items())
            + "); use another --out or the same options.")
    else:
      self.data = {"setting": setting, "baselines": {}, "cells": []}

  @staticmethod
  def key(network: tuple[str, float], seed: int, method: str, reduction: float) -> str:
    return f"{network[0]}:{network[1]:g}|{seed}|{method}|{reduction:g}"

  def done(self) -> set[str]:
    self.reload()
    return {c["key"] for c in self.data["cells"]}

  def reload(self) -> None:
    """Adds the cells and baselines other runs on the same `--out` wrote since."""
    if self.path.exists():
      with self.lock:
        self._merge(json.loads(self.path.read_text()))

  def _merge(self, disk: dict) -> None:
    known = {c["key"] for c in self.data["cells"]}
    self.data["cells"] += [c for c in disk["cells"] if c["key"] not in known]
    self.data["baselines"] = {**disk["baselines"], **self.data["baselines"]}

  def choose(self, network: tuple[str, float], reduction: float) -> tuple[str, dict[str, float]]:
    """`choose_allocation` on every run's finished cells (`Bench.choose`)."""
    self.reload()
    return choose_allocation(self.data, network, reduction)

  def add_cell(self, cell: dict) -> None:
    self.data["cells"].append(cell)
    self.save()

  def set_baseline(self, tag: str, record: dict) -> None:
    self.data["baselines"][tag] = record
    self.save()

  def save(self) -> None:
    """Merges what other runs wrote since, then writes, under the lock."""
    from xbar_tfmot.app.training import write_json
    with self.lock:
      if self.path.exists():
        self._merge(json.loads(self.path.read_text()))
      write_json(self.path, self.data, sort_keys=False)


def choose_allocation(data: dict, network: tuple[str, float], reduction: float
                      ) -> tuple[str, dict[str, float]]:
  """The allocation row with the best mean validation accuracy at (network, reduction) over
  its finished seeds, and every row's mean; the test set plays no part."""
  net = f"{network[0]}:{network[1]:g}"
  vals: dict[str, list[float]] = {}
  for c in data["cells"]:
    if c["network"] == net and c["method"] in ALLOCATION and abs(c["reduction"] - reduction) < 1e-9:
      vals.setdefault(c["method"], []).append(c["val_accuracy"])
  missing = [m for m in ALLOCATION if m not in vals]
  if missing:
    raise SystemExit(f"alloc-best-distill at {net} {reduction:g}: rows {', '.join(missing)} have "
                     f"no finished cell; valid: run them first (--methods allocation)")
  means = {m: float(np.mean(vals[m])) for m in ALLOCATION}
  return max(ALLOCATION, key=lambda m: (means[m], -ALLOCATION.index(m))), means


def summarise(data: dict) -> dict:
  """{network: {method: {reduction: {acc, val, used, seconds, seeds lists, dense, chosen}}}}."""
  out: dict = {}
  for c in data["cells"]:
    slot = out.setdefault(c["network"], {}).setdefault(c["method"], {}).setdefault(
        c["reduction"], {"acc": [], "val": [], "used": [], "seconds": [], "seeds": [],
                         "chosen": [], "dense": c["counts"]["dense"]})
    slot["acc"].append(c["accuracy"])
    if "val_accuracy" in c:
      slot["val"].append(c["val_accuracy"])
    slot["used"].append(c["counts"]["packed"])
    slot["seconds"].append(c["seconds"])
    slot["seeds"].append(c["seed"])
    if "chosen" in c:
      slot["chosen"].append(c["chosen"])
  return out


def dense_lines(data: dict) -> dict:
  """{network: (mean dense accuracy, mean dense + method epochs accuracy, seeds)}."""
  acc: dict = {}
  for rec in data["baselines"].values():
    acc.setdefault(rec["network"], []).append(rec)
  return {n: (float(np.mean([r["accuracy"] for r in rs])),
              float(np.mean([r.get("accuracy_finetuned", r["accuracy"]) for r in rs])),
              sorted(r["seed"] for r in rs),
              all("accuracy_finetuned" in r for r in rs)) for n, rs in acc.items()}


def _fmt(values: list[float]) -> str:
  """Percent, with the std over seeds when there is more than one."""
  if len(values) == 1:
    return f"{100 * values[0]:.2f}"
  return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def markdown(data: dict, command: str) -> str:
  """The report: the setting, one table per network (test accuracy and crossbars per method
  and target), the validation table and the readings; `command` regenerates it."""
  s = data["setting"]
  whole = all(c.get("counted") == "model" for c in data["cells"])
  scope = ("over the whole model (every mapped layer, the layers left dense "
           f"({s.get('leave_dense', 'first-conv')}) included: what a chip holds)" if whole else
           f"over the pruned layers (every mapped layer but {s.get('leave_dense', 'first-conv')}, "
           "the same for every method)")
  summary, dense = summarise(data), dense_lines(data)
  reductions = sorted({c["reduction"] for c in data["cells"]})
  lines = [
      f"Dataset {s['dataset']}, {s['train_size']} training images, test set "
      f"{'full' if not s['test_size'] else s['test_size']}; crossbar `{s['spec']}`"
      + (f" (per network: `{s['network_specs']}`)" if s.get("network_specs") else "") + "; dense "
      f"baseline {s['dense_epochs']} epochs (Adam {s['lr']:g}); every method then gets "
      f"{s['epochs']} epochs (Adam {s['finetune_lr']:g}); LGD budgets fall over the first "
      f"{s['prune_fraction']:.0%} of them, masks every {s['frequency']} steps, RPP temperature "
      f"{s['temperature']:g}; group lasso lambda {s['gl_lambda']:g}"
      + (f"; validation split {s['validation_size']} training images outside the training "
         f"subset; distillation weight {s['distill_weight']:g}, temperature "
         f"{s['distill_temperature']:g}" if "validation_size" in s else "") + ".", "",
      f"Regenerate: `{command}`", "",
      "Cells: test accuracy in % (mean ± std over seeds where more than one), then crossbars "
      f"used / dense {scope}; column grain counted with output recombination, which for "
      "crossbar-grain and TFMOT masks is never more than the non-zero blocks.", ""]
  for net in sorted(summary):
    d = dense.get(net)
    if d:
      tuned = (f"dense + the same {s['epochs']} epochs {100 * d[1]:.2f}%" if d[3] else
               "dense + the same epochs not measured")
      lines.append(f"**{net}**: dense {100 * d[0]:.2f}%, {tuned} "
                   f"(seeds {', '.join(map(str, d[2]))})")
      lines.append("")
    lines.append("| method | " + " | ".join(f"target {r:.0%}" for r in reductions) + " |")
    lines.append("|---|" + "---|" * len(reductions))
    for method in [m for m in METHODS if m in summary[net]]:
      row = []
      for r in reductions:
        slot = summary[net][method].get(r)
        if slot is None:
          row.append("")
          continue
        used = sorted(set(slot["used"]))
        seeds = f", seeds {','.join(map(str, slot['seeds']))}" if len(slot["seeds"]) > 1 else ""
        row.append(f"{_fmt(slot['acc'])} ({'/'.join(map(str, used))}/{slot['dense']}, "
                   f"{1 - np.mean(slot['used']) / slot['dense']:.0%} fewer{seeds})")
      lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(row) + " |")
    lines.append("")
    lines += validation_table(summary[net], reductions)
  lines += reading(data, summary, dense)
  lines += allocation_reading(data, summary)
  lines += issue28_reading(data, summary)
  lines += energy_table(data)
  return "\n".join(lines) + "\n"


def validation_table(summary: dict, reductions: list[float]) -> list[str]:
  """Validation accuracy of the allocation rows (A1-A5: what chooses A6), the issue-28 rows
  (A8-A10, the last with its one-shot pick), seconds per cell."""
  order = ALLOCATION + METHOD_GROUPS["issue28"] + DISTILLED + KD + PROCEDURE
  rows = [m for m in dict.fromkeys(order) if m in summary]
  if not rows:
    return []
  lines = ["Validation accuracy in % (mean over seeds; A1-A5's choose A6's allocation) / "
           "seconds per cell (mean):", "",
           "| method | " + " | ".join(f"target {r:.0%}" for r in reductions) + " |",
           "|---|" + "---|" * len(reductions)]
  for m in rows:
    row = []
    for r in reductions:
      slot = summary[m].get(r)
      if slot is None or not slot["val"]:
        row.append("")
        continue
      chosen = f", chose {'/'.join(sorted(set(slot['chosen'])))}" if slot["chosen"] else ""
      row.append(f"{100 * np.mean(slot['val']):.2f} / {np.mean(slot['seconds']):.0f} s{chosen}")
    lines.append(f"| {METHOD_LABELS[m]} | " + " | ".join(row) + " |")
  return lines + [""]


def dense_on(data: dict, net: str, seeds: list[int], field: str = "accuracy") -> float | None:
  """Mean dense `field` of `net` over `seeds` (those with a baseline), None if none has it."""
  got = [r[field] for r in data["baselines"].values()
         if r["network"] == net and r["seed"] in seeds and field in r]
  return float(np.mean(got)) if got else None


def allocation_reading(data: dict, summary: dict, goal: float = 0.01) -> list[str]:
  """Per (network, reduction) with allocation rows: the row validation picks, A6, and the
  distance of each to the dense model over the same seeds (the goal: within `goal`)."""
  lines = []
  for net in sorted(summary):
    rows = {m: summary[net][m] for m in ALLOCATION if m in summary[net]}
    for r in sorted({r for v in rows.values() for r in v}):
      cells = {m: v[r] for m, v in rows.items() if r in v and v[r]["val"]}
      if len(cells) < len(ALLOCATION):
        continue
      best = max(cells, key=lambda m: np.mean(cells[m]["val"]))
      test_best = max(cells, key=lambda m: np.mean(cells[m]["acc"]))
      ref = dense_on(data, net, cells[best]["seeds"])
      if ref is None:
        continue
      acc = np.mean(cells[best]["acc"])
      text = (f"- {net} at {r:.0%}: validation picks {METHOD_LABELS[best]} (validation "
              f"{100 * np.mean(cells[best]['val']):.2f}%), test {_fmt(cells[best]['acc'])}% with "
              f"{np.mean(cells[best]['used']):.0f}/{cells[best]['dense']} crossbars (seeds "
              f"{','.join(map(str, cells[best]['seeds']))}): {100 * (acc - ref):+.2f} points from "
              f"dense {100 * ref:.2f}% on the same seeds")
      if test_best != best:
        text += (f" (the test set would have picked {METHOD_LABELS[test_best]}, "
                 f"{_fmt(cells[test_best]['acc'])}%)")
      for m in DISTILLED + (f"{best}-kd",):
        slot = summary[net].get(m, {}).get(r)
        if m in KD and slot:
          slot = {**slot, "chosen": [best]}  # the pick's own -kd row is what A6 runs
        if slot and (m in DISTILLED or not summary[net].get(DISTILLED[0], {}).get(r)):
          d, d_ref = np.mean(slot["acc"]), dense_on(data, net, slot["seeds"])
          text += (f"; with distillation ({'/'.join(sorted(set(slot['chosen'])))}) "
                   f"{_fmt(slot['acc'])}% ({100 * (d - d_ref):+.2f} points from dense "
                   f"{100 * d_ref:.2f}%, seeds {','.join(map(str, slot['seeds']))})")
          if d - d_ref > acc - ref:
            acc, ref = d, d_ref
      met = acc >= ref - goal
      text += (f". Goal (within {100 * goal:.1f} point of dense), best of these: "
               f"{'met' if met else 'missed'} by {100 * abs(acc - (ref - goal)):.2f} points.")
      tuned = dense_on(data, net, cells[best]["seeds"], "accuracy_finetuned")
      if tuned is not None:
        text += f" Dense + the same epochs: {100 * tuned:.2f}%."
      lines.append(text)
  return (["Allocation rows (A1-A6), read per network and target:", ""] + lines + [""]
          if lines else [])


def issue28_reading(data: dict, summary: dict, dense_goal: float = 0.01,
                    per_layer_goal: float = 0.005) -> list[str]:
  """Per (network, reduction) with the validated row (A10): its distance to dense over the same
  seeds (issue 28's goal at 85%: within `dense_goal`) and to the per-layer row (A1) over the
  seeds both ran (never more than `per_layer_goal` below), and what the test set would pick."""
  lines = []
  for net in sorted(summary):
    for r, v in sorted(summary[net].get("alloc-validated", {}).items()):
      ref = dense_on(data, net, v["seeds"])
      if ref is None:
        continue
      acc = float(np.mean(v["acc"]))
      text = (f"- {net} at {r:.0%}: A10 (chose {'/'.join(v['chosen'])} on seeds "
              f"{','.join(map(str, v['seeds']))}) {_fmt(v['acc'])}%, {100 * (acc - ref):+.2f} "
              f"points from dense {100 * ref:.2f}% (goal within {100 * dense_goal:.1f}: "
              f"{'met' if acc >= ref - dense_goal else 'missed'})")
      per = summary[net].get("alloc-per-layer", {}).get(r)
      both = [s for s in v["seeds"] if per and s in per["seeds"]]
      if both:
        a = np.mean([x for x, s in zip(v["acc"], v["seeds"]) if s in both])
        b = np.mean([x for x, s in zip(per["acc"], per["seeds"]) if s in both])
        text += (f"; {100 * (a - b):+.2f} points from per-layer {100 * b:.2f}% (seeds "
                 f"{','.join(map(str, both))}; goal no more than {100 * per_layer_goal:.1f} "
                 f"below: {'met' if a >= b - per_layer_goal else 'missed'})")
      rows = {m: c[r] for m, c in summary[net].items() if r in c and m != "alloc-validated"
              and m in METHOD_GROUPS["issue28"]}
      if rows:
        top = max(rows, key=lambda m: np.mean(rows[m]["acc"]))
        text += (f"; best trained row by test {METHOD_LABELS[top]} {_fmt(rows[top]['acc'])}%")
      lines.append(text + ".")
  return (["Issue 28 (the validated row A10 against dense and per-layer):", ""] + lines + [""]
          if lines else [])


def energy_table(data: dict, saved_goal: float = 0.5, drop_goal: float = 0.01) -> list[str]:
  """Issue 27: per network, the dense baseline and every (row, target) whose cells carry the
  chip's energy per inference (`quality_methods.chip_cost`): test and validation accuracy,
  whole-model crossbars, energy (nJ) and the share saved against dense over the same seeds,
  and the goal (at least `saved_goal` saved, at most `drop_goal` below dense accuracy)."""
  cells = [c for c in data["cells"] if "energy_nj" in c]
  if not cells:
    return []
  lines = []
  for net in sorted({c["network"] for c in cells}):
    base = {r["seed"]: r for r in data["baselines"].values()
            if r["network"] == net and "energy_nj" in r}
    chip = next(c["chip"] for c in cells if c["network"] == net)
    lines += [f"Energy per inference on `{chip}` (the cost model: arrays, ADCs and DACs), "
              f"**{net}**; mean ± std over seeds, saved and points against dense on the same "
              f"seeds; goal: at least {saved_goal:.0%} saved within {100 * drop_goal:.1f} point "
              "of dense:", "",
              "| row | target | seeds | test % | validation % | crossbars | energy nJ | saved "
              "| points vs dense | goal |", "|---|---|---|---|---|---|---|---|---|---|"]
    if base:
      b = [base[s] for s in sorted(base)]
      lines.append(f"| dense | | {','.join(map(str, sorted(base)))} | "
                   f"{_fmt([r['accuracy'] for r in b])} | "
                   f"{100 * np.mean([r.get('val_accuracy', np.nan) for r in b]):.2f} | "
                   f"{np.mean([r['chip_crossbars'] for r in b]):.0f} | "
                   f"{np.mean([r['energy_nj'] for r in b]):.0f} | | | |")
    groups: dict = {}
    for c in cells:
      if c["network"] == net:
        groups.setdefault((c["method"], c["reduction"]), []).append(c)
    order = {m: i for i, m in enumerate(METHODS)}
    for (m, r), cs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
      cs = sorted(cs, key=lambda c: c["seed"])
      seeds = [c["seed"] for c in cs]
      row = (f"| {METHOD_LABELS.get(m, m)} | {r:.0%}"
             f"{' energy' if any(c.get('objective') == 'energy' for c in cs) else ''} | "
             f"{','.join(map(str, seeds))} | {_fmt([c['accuracy'] for c in cs])} | "
             f"{100 * np.mean([c.get('val_accuracy', np.nan) for c in cs]):.2f} | "
             f"{np.mean([c['chip_crossbars'] for c in cs]):.0f} | "
             f"{np.mean([c['energy_nj'] for c in cs]):.0f} | ")
      if all(s in base for s in seeds):
        saved = 1 - np.mean([c["energy_nj"] for c in cs]) / np.mean(
            [base[s]["energy_nj"] for s in seeds])
        drop = np.mean([c["accuracy"] for c in cs]) - np.mean(
            [base[s]["accuracy"] for s in seeds])
        met = saved >= saved_goal and drop >= -drop_goal
        row += f"{saved:.1%} | {100 * drop:+.2f} | {'met' if met else 'missed'} |"
      else:
        row += "| | |"
      lines.append(row)
    lines.append("")
  return lines


def reading(data: dict, summary: dict, dense: dict, at: float = 0.72) -> list[str]:
  """The goal check at reduction `at` and the regrowth comparison, per network."""
  if not any(m in LGD_METHODS for net in summary.values() for m in net):
    return []
  lines = [f"Reading at the {at:.0%} target (means over the seeds run there):", ""]
  for net in sorted(summary):
    cells = {m: v[at] for m, v in summary[net].items() if at in v}
    lgd = {m: c for m, c in cells.items() if m in LGD_METHODS and m.startswith("rpp-")}
    if not lgd or net not in dense:
      continue
    best = max(lgd, key=lambda m: np.mean(lgd[m]["acc"]))
    acc = np.mean(lgd[best]["acc"])
    ref = max(dense[net][:2])
    text = (f"- {net}: best LGD-RPP variant {METHOD_LABELS[best]} {100 * acc:.2f}% with "
            f"{np.mean(lgd[best]['used']):.0f}/{lgd[best]['dense']} crossbars; dense reference "
            f"(the better of dense and dense + the same epochs) {100 * ref:.2f}%: "
            f"{100 * (acc - ref):+.2f} points (goal: within 1.0).")
    if "topk-crossbar" in cells:
      topk = np.mean(cells["topk-crossbar"]["acc"])
      text += f" The top-k ablation (no RPP sampling) {100 * topk:.2f}%."
    used = np.mean(lgd[best]["used"])
    base = {m: c for m, c in cells.items() if m in BASELINES and np.mean(c["used"]) <= used}
    if base:
      top = max(base, key=lambda m: np.mean(base[m]["acc"]))
      text += (f" Best baseline at no more crossbars: {METHOD_LABELS[top]} "
               f"{100 * np.mean(base[top]['acc']):.2f}%: LGD "
               f"{100 * (acc - np.mean(base[top]['acc'])):+.2f} points.")
    for m, c in cells.items():
      if m in BASELINES and m not in base:
        text += (f" ({METHOD_LABELS[m]}: {100 * np.mean(c['acc']):.2f}% but "
                 f"{np.mean(c['used']):.0f}/{c['dense']} crossbars.)")
    lines.append(text)
    if "rpp-crossbar" in cells and "rpp-crossbar-st" in cells:
      r, st = cells["rpp-crossbar"], cells["rpp-crossbar-st"]
      lines.append(f"- {net}: regrowth reset {_fmt(r['acc'])}% vs straight_through "
                   f"{_fmt(st['acc'])}% (crossbar grain, seeds "
                   f"{','.join(map(str, r['seeds']))}): reset "
                   f"{100 * (np.mean(r['acc']) - np.mean(st['acc'])):+.2f} points.")
  return lines + [""]


def plot(data: dict, path: pathlib.Path) -> None:
  """Test accuracy against the measured crossbar reduction, one panel per network."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  summary, dense = summarise(data), dense_lines(data)
  nets = sorted(summary)
  if not nets:
    return
  shown = [m for m in METHODS if any(m in summary[net] for net in nets)]
  # One colour per row across panels: tab20's ten dark colours first, then its light ones.
  colours = {m: plt.cm.tab20((2 * i + i // 10) % 20) for i, m in enumerate(shown)}
  cols = min(3, len(nets))  # rows of three panels
  rows = -(-len(nets) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.8 * rows), squeeze=False)
  axes = axes.ravel()
  for ax in axes[len(nets):]:
    ax.set_visible(False)
  for ax, net in zip(axes, nets):
    for method in [m for m in METHODS if m in summary[net]]:
      style = METHOD_TABLE[method].style
      if method in PROCEDURE:  # each seed where it stopped (the seeds' counts differ)
        pts = sorted((1 - u / v["dense"], a, 0.0) for v in summary[net][method].values()
                     for u, a in zip(v["used"], v["acc"]))
        style = style.rstrip("-")
      else:
        pts = sorted((1 - np.mean(v["used"]) / v["dense"], np.mean(v["acc"]), np.std(v["acc"]))
                     for v in summary[net][method].values())
      xs, ys, es = (np.array(t) for t in zip(*pts))
      ax.errorbar(100 * xs, 100 * ys, yerr=100 * es, fmt=style, capsize=2,
                  label=METHOD_LABELS[method], markersize=5, color=colours[method])
    if net in dense:
      ax.axhline(100 * dense[net][0], color="k", lw=1,
                 label=f"dense (seeds {','.join(map(str, dense[net][2]))})")
      if dense[net][3]:  # measured
        ax.axhline(100 * dense[net][1], color="k", lw=1, ls=":", label="dense + same epochs")
    ax.set_title(net)
    whole = all(c.get("counted") == "model" for c in data["cells"] if c["network"] == net)
    ax.set_xlabel(f"crossbar reduction over {'the whole model' if whole else 'pruned layers'} (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    lows = [100 * np.mean(v["acc"]) for m in summary[net].values() for v in m.values()]
    top = 100 * max(dense[net][:2]) if net in dense else max(lows)
    ax.set_ylim(max(min(lows) - 1, top - 25), top + 1.5)
  for ax in axes[:len(nets)]:  # each panel has its own rows
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def render(out: pathlib.Path, data: dict, command: str) -> None:
  """Writes `<out>/bench_quality.md` and `<out>/bench_quality.png`."""
  (out / "bench_quality.md").write_text(markdown(data, command))
  plot(data, out / "bench_quality.png")

