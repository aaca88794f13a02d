"""PNG plots of a pruning run: crossbars per layer, crossbar occupancy maps, training curves.

matplotlib (the `report` extra) is imported on first use with the non-interactive Agg backend.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Sequence

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def crossbars_per_layer(layers: Sequence[dict[str, Any]], path: pathlib.Path,
                        title: str) -> None:
  """Grouped bars of dense and pruned crossbars per mapped layer (log scale when wide)."""
  plt = _pyplot()
  names = [l["name"] for l in layers]
  dense = np.array([l["dense"] for l in layers])
  pruned = np.array([l["pruned"] for l in layers])
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.2))
  ax.bar(x - 0.2, dense, 0.4, label="dense", color="#9bb7d4")
  ax.bar(x + 0.2, pruned, 0.4, label="pruned", color="#c0392b")
  for xi, d, p in zip(x, dense, pruned):
    if d:
      ax.annotate(f"-{1 - p / d:.0%}", (xi + 0.2, max(p, 1)), ha="center", va="bottom",
                  fontsize=7)
  ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
  ax.set_ylabel("crossbars")
  if dense.max() > 20 * max(1, dense.min()):
    ax.set_yscale("log")
  ax.set_title(title, fontsize=10)
  ax.legend()
  _save(fig, path)


def occupancy(maps: Sequence[tuple[str, np.ndarray, str]], path: pathlib.Path,
              title: str) -> None:
  """One panel per layer: `(name, bool map, axis label)`; dark cells survive.

  Crossbar grain maps are `(G_in, G_out)` blocks; column grain maps `(G_in, C_out)` column
  segments (the columns of each input group that are packed into crossbars).
  """
  _save(occupancy_figure(maps, title), path)


def _save(fig, path: pathlib.Path) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  _pyplot().close(fig)


def index_ticks(n: int, most: int = 8) -> list[int]:
  """At most `most` integer ticks from 0 to `n - 1`, both ends included (`[0]` for one row)."""
  return sorted({int(round(t)) for t in np.linspace(0, max(0, n - 1), max(1, min(n, most)))})


def occupancy_figure(maps: Sequence[tuple[str, np.ndarray, str]], title: str):
  """The figure of `occupancy` (not saved): integer ticks on both axes, however few groups."""
  plt = _pyplot()
  n = len(maps)
  cols = min(4, n)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
  for ax, (name, grid, xlabel) in zip(axes.flat, maps):
    ax.imshow(grid, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_title(f"{name}: {grid.mean():.0%} kept", fontsize=8)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel("input group", fontsize=7)
    ax.tick_params(labelsize=6)
    grid = np.atleast_2d(grid)
    ax.set_yticks(index_ticks(grid.shape[0]))
    ax.set_xticks(index_ticks(grid.shape[1]))
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def training_curves(phases: Sequence[tuple[str, dict[str, list[float]]]], path: pathlib.Path,
                    title: str) -> bool:
  """Accuracy and loss per epoch over the training phases, phase boundaries marked.

  Returns False (and writes nothing) when no phase trained.
  """
  phases = [(name, h) for name, h in phases if h.get("loss")]
  if not phases:
    return False
  plt = _pyplot()
  fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
  offset = 0
  for name, history in phases:
    epochs = np.arange(offset + 1, offset + len(history["loss"]) + 1)
    for ax, key in ((acc_ax, "accuracy"), (loss_ax, "loss")):
      for prefix, style in (("", "-"), ("val_", "--")):
        if f"{prefix}{key}" in history:
          ax.plot(epochs, history[f"{prefix}{key}"], style, marker="o", markersize=3,
                  label=f"{name} {'test' if prefix else 'train'}")
    for boundary in history.get("phase_boundary", []):
      for ax in (acc_ax, loss_ax):
        ax.axvline(offset + boundary + 0.5, color="grey", lw=0.8, ls=":")
    if offset:
      for ax in (acc_ax, loss_ax):
        ax.axvline(offset + 0.5, color="black", lw=0.6)
    offset += len(history["loss"])
  acc_ax.set_ylabel("accuracy")
  loss_ax.set_ylabel("loss")
  for ax in (acc_ax, loss_ax):
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  _save(fig, path)
  return True


def hardware_sweep(series: dict[str, Sequence[dict[str, Any]]], path: pathlib.Path,
                   title: str) -> bool:
  """Accuracy against variation and against ADC bits, one line per model, ± std bars.

  `series`: `{model label: sweep rows}` (`xbar_tfmot.sweep_hardware`). Returns False
  (and writes nothing) when no row has a variation or ADC factor.
  """
  panels = [("variation", "variation (% of g_max)", 100.0), ("adc_bits", "ADC bits", 1.0)]
  panels = [p for p in panels if any(r["factor"] == p[0] for rows in series.values()
                                     for r in rows)]
  if not panels:
    return False
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
  for ax, (factor, xlabel, scale) in zip(axes[0], panels):
    for label, rows in series.items():
      points = sorted((r["value"], r["mean"], r["std"]) for r in rows if r["factor"] == factor)
      if points:
        xs, ys, es = (np.array(v, float) for v in zip(*points))
        ax.errorbar(scale * xs, 100 * ys, yerr=100 * es, marker="o", markersize=4, capsize=2,
                    label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    if factor == "adc_bits":
      ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  _save(fig, path)
  return True
