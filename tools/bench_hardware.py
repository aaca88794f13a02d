"""Hardware benchmark (issue 14): crossbars, energy, area and analog accuracy of pruned VGG8.

On Fashion-MNIST (Debian's `dataset-fashion-mnist` through `xbar_tfmot.app.datasets`; a random
training subset of `--train-size` images), a zoo `vgg8` of `--width` is trained dense, then

  dense           the dense model
  rpp-column-R    LGD-RPP at column grain (`prune_crossbar`, reduction R per pruned layer, the
                  first convolution left dense: the library's default policy), one per
                  `--reductions` value
  tfmot-R         TFMOT `prune_low_magnitude` (gradual, unstructured) with, per layer, the
                  sparsity that leaves exactly the non-zero weights of rpp-column-R (the first
                  `--reductions` value), crossbars counted by us at column grain

and, with `--hwa-variation V`, hardware-aware models trained the same way while the forward
pass sees the first preset's chip at variation V (issue 27):

  dense-hwa         the dense model fine-tuned `--epochs` more with hardware-aware training
  rpp-column-R-hwa  rpp-column-R with hardware-aware pruning and fine-tuning

every pruned model getting the same `--epochs` after the dense baseline. For each model: the
crossbars, and energy, area and latency per inference of the cost model for each `--presets`
chip, and the test accuracy (mean ± std over `--instances` chip instances, seeds 0..n-1, the
same for every model) on the first `--presets` chip swept one factor at a time
(`xbar_tfmot.sweep_hardware`): variation (ADC at the preset's bits), ADC bits (no
variation), stuck-at cells (half on, half off), drift `--times` after programming; each
condition also with the `--compensation` steps of `compensate_chip` when given (issue 26,
item 9). BatchNorm statistics of every model are
re-estimated on training images before it is evaluated. No choice is made from test images;
the reductions and the training lengths are fixed in advance.

Every trained model is cached in `<out>/cache/` and every measured condition appended to
`<out>/results.json` at once: a rerun resumes, skipping what is finished (and refuses an
`--out` holding another setting). Writes `<out>/bench_hardware.md` and
`<out>/bench_hardware.png`.

  python tools/bench_hardware.py --out out/bench_hardware
  python tools/bench_hardware.py --out out/bench_hardware --speed   # analog vs explicit speed
  python tools/bench_hardware.py --out out/bench_hardware --render-only
  python tools/bench_hardware.py --quick --out /tmp/bh_quick        # tiny setting, for the test

`--speed` times one chip instance of the first preset (nominal: its ADC and input bits) over
the first `--speed-images` test images (default all 10000) against the crossbar-explicit
model (`crossbar_model`) of the same mapping, in `--rounds` interleaved rounds (explicit,
analog, explicit, ...), after one warm-up call each; it reports the medians, the spread and
the ratio, and appends them to results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

SETTING_KEYS = ("width", "train_size", "test_size", "dense_epochs", "epochs", "batch", "lr",
                "finetune_lr", "prune_fraction", "frequency", "spec", "reductions", "seed",
                "bn_recalibration", "calibration", "instances", "presets", "set", "hwa_variation")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="results folder (results.json, cache/, md, png)")
  p.add_argument("--data", default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
  p.add_argument("--width", type=float, default=0.5, help="vgg8 width multiplier")
  p.add_argument("--train-size", type=int, default=10000, help="training images (random subset)")
  p.add_argument("--test-size", type=int, default=0, help="test images (0: all 10000)")
  p.add_argument("--dense-epochs", type=int, default=4)
  p.add_argument("--epochs", type=int, default=2, help="epochs of every pruned model")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, dense baseline")
  p.add_argument("--finetune-lr", type=float, default=5e-4, help="Adam learning rate, pruning")
  p.add_argument("--prune-fraction", type=float, default=0.5,
                 help="share of the pruning epochs over which the budget falls")
  p.add_argument("--frequency", type=int, default=20, help="mask update every N steps")
  p.add_argument("--spec", default="isaac_128x128", help="CrossbarSpec preset, file or string")
  p.add_argument("--reductions", default="0.72,0.85", help="LGD-RPP target reductions; the "
                 "first also sets the TFMOT model's non-zero count")
  p.add_argument("--presets", default="isaac_32nm,puma_128x128",
                 help="hardware presets for the cost table; the first also for accuracy")
  p.add_argument("--set", default="", help="overrides of every preset, e.g. "
                 "'bit_serial=false,adc_bits=6' (values read as JSON)")
  p.add_argument("--instances", type=int, default=10, help="chip instances (seeds 0..n-1)")
  p.add_argument("--variations", default="0,0.02,0.05,0.1", help="variation sweep (of g_max)")
  p.add_argument("--adc-bits", default="4,6,8", help="ADC sweep (no variation)")
  p.add_argument("--stuck", default="0,0.01", help="stuck-at fraction sweep (half on, half off)")
  p.add_argument("--times", default="", help="drift sweep: seconds after programming, e.g. "
                 "'86400,3.15e7' (the chip's drift_* fields, no variation)")
  p.add_argument("--compensation", default="", help="compensate_chip steps, e.g. "
                 "'adc,column_gain,batchnorm': every condition is measured without and with them")
  p.add_argument("--hwa-variation", type=float, default=0.0, help="> 0: add hardware-aware "
                 "models (dense-hwa, rpp-column-R-hwa) trained on the first preset at this "
                 "variation (of g_max)")
  p.add_argument("--calibration", type=int, default=256, help="training images for DAC/ADC ranges")
  p.add_argument("--bn-recalibration", type=int, default=2000,
                 help="training images to re-estimate BatchNorm statistics on before evaluating")
  p.add_argument("--seed", type=int, default=0, help="training subset, init and shuffling seed")
  p.add_argument("--speed", action="store_true", help="measure analog vs explicit speed instead")
  p.add_argument("--rounds", type=int, default=5, help="--speed: interleaved rounds")
  p.add_argument("--speed-images", type=int, default=0,
                 help="--speed: the first N test images (0: all 10000)")
  p.add_argument("--speed-model", default="rpp-column-0.72", help="--speed: which cached model")
  p.add_argument("--quick", action="store_true",
                 help="tiny setting for tests: 300 training / 100 test images, vgg8 width 0.125, "
                      "1 + 1 epochs, reduction 0.72, 2 instances, variation 0,0.05, ADC 4,8, "
                      "no stuck-at sweep, drift at 1 day, column-gain compensation, "
                      "hardware-aware models at 5%%, multi-bit analog inputs (--set bit_serial=false: a "
                      "bit-serial chip simulates 16 cycles), --speed on 100 images in 2 rounds "
                      "(explicit options still win)")
  p.add_argument("--render-only", action="store_true", help="only rewrite the md and png")
  p.add_argument("--cpu", action="store_true", help="hide GPUs (CUDA_VISIBLE_DEVICES='')")
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  given = {a.split("=")[0] for a in argv if a.startswith("--")}
  if args.quick:
    quick = {"--train-size": 300, "--test-size": 100, "--width": 0.125, "--dense-epochs": 1,
             "--epochs": 1, "--reductions": "0.72", "--presets": "isaac_32nm",
             "--instances": 2, "--variations": "0,0.05", "--adc-bits": "4,8", "--stuck": "",
             "--frequency": 2, "--bn-recalibration": 300, "--calibration": 64, "--rounds": 2,
             "--speed-images": 100, "--set": "bit_serial=false", "--hwa-variation": 0.05,
             "--times": "86400", "--compensation": "column_gain"}
    for flag, value in quick.items():
      if flag not in given:
        setattr(args, flag[2:].replace("-", "_"), value)
  from xbar_tfmot.core.errors import XbarError
  from xbar_tfmot.core.hardware import check_compensation
  from xbar_tfmot.models.hardware_sweep import parse_values
  try:
    args.reduction_list = parse_values(args.reductions, "--reductions")
    args.variation_list = parse_values(args.variations, "--variations")
    args.adc_list = parse_values(args.adc_bits, "--adc-bits", int)
    args.stuck_list = parse_values(args.stuck, "--stuck")
    args.time_list = parse_values(args.times, "--times")
    args.compensation_steps = check_compensation(args.compensation, "--compensation")
  except XbarError as e:
    p.error(str(e))
  if not 0 <= args.hwa_variation < 1:
    p.error(f"--hwa-variation={args.hwa_variation!r}: valid: 0 (no hardware-aware models) or a "
            f"fraction of g_max below 1")
  if not args.reduction_list or not all(0 < r < 1 for r in args.reduction_list):
    p.error(f"--reductions={args.reductions!r}: valid: numbers 0 < r < 1")
  args.preset_list = [s for s in args.presets.split(",") if s]
  try:
    args.overrides = {k.strip(): json.loads(v) for k, _, v in
                      (item.partition("=") for item in args.set.split(",") if item.strip())}
    for name in args.preset_list:
      chip(args, name)
  except (ValueError, TypeError) as e:
    p.error(f"--set={args.set!r}: {e}; valid: field=value pairs of HardwareSpec, e.g. "
            f"'bit_serial=false'")
  for flag, value, low in (("--train-size", args.train_size, 1), ("--test-size", args.test_size, 0),
                           ("--dense-epochs", args.dense_epochs, 1), ("--epochs", args.epochs, 1),
                           ("--instances", args.instances, 1), ("--rounds", args.rounds, 1),
                           ("--frequency", args.frequency, 1), ("--batch", args.batch, 1)):
    if value < low:
      p.error(f"{flag}={value}: valid: an integer >= {low}")
  return args


def chip(args, name: str):
  """The hardware preset `name` with the `--set` overrides."""
  import dataclasses

  import xbar_tfmot as xt
  return dataclasses.replace(xt.HardwareSpec.preset(name), **args.overrides)


def settings(args) -> dict[str, Any]:
  return {k: getattr(args, k) for k in SETTING_KEYS}


def labels(args) -> list[str]:
  """Model labels in table order."""
  rpp = [f"rpp-column-{r:g}" for r in args.reduction_list]
  hwa = [f"{m}-hwa" for m in ["dense"] + rpp] if args.hwa_variation else []
  return ["dense"] + rpp + [f"tfmot-{args.reduction_list[0]:g}"] + hwa


def compensations(args) -> list[tuple[str, ...]]:
  """The compensation settings every condition is measured under: none, and `--compensation`."""
  return [()] + ([args.compensation_steps] if args.compensation_steps else [])


# ---------------------------------------------------------------------------- results file

class Results:
  """`<out>/results.json`: the setting, per-model records and measured conditions."""

  def __init__(self, out: pathlib.Path, args):
    self.path = out / "results.json"
    setting = settings(args)
    if self.path.exists():
      self.data = json.loads(self.path.read_text())
      old = self.data.get("setting", {})
      diff = sorted(k for k in setting if old.get(k) != setting[k])
      if diff and not args.render_only:
        raise SystemExit(f"--out {out} holds results of another setting (" + ", ".join(
            f"--{k.replace('_', '-')} {old.get(k)!r} there, {setting[k]!r} now" for k in diff)
            + "); use another --out or the same options.")
    else:
      self.data = {"setting": setting, "models": {}, "cells": {}, "speed": []}

  def save(self) -> None:
    from xbar_tfmot.app.training import write_json
    write_json(self.path, self.data, sort_keys=False)


# ---------------------------------------------------------------------------- models

class Bench:
  """Data, training and the cached models of one setting."""

  def __init__(self, args, out: pathlib.Path, log: Callable[[str], None]):
    import tf_keras as keras

    import xbar_tfmot as xt
    from xbar_tfmot.app import training
    from xbar_tfmot.app.datasets import load_fashion_mnist
    from xbar_tfmot.core.spec import parse_spec
    self.keras, self.xt, self.training, self.args, self.log = keras, xt, training, args, log
    try:
      (x, y), (xt_, yt) = load_fashion_mnist(args.data)
    except FileNotFoundError as e:
      raise SystemExit(f"--data: {e}") from None
    order = np.random.default_rng(args.seed).permutation(len(y))[:args.train_size]
    self.x, self.y = x[order], y[order]
    self.x_test_all = xt_
    self.x_test, self.y_test = (xt_[:args.test_size], yt[:args.test_size]) if args.test_size \
        else (xt_, yt)
    self.spec = parse_spec(args.spec)
    self.cache = out / "cache"
    self.cache.mkdir(parents=True, exist_ok=True)
    self.steps_per_epoch = -(-len(self.y) // args.batch)

  def build(self):
    from xbar_tfmot.app.zoo import build_model
    return build_model("vgg8", self.x.shape[1:], 10, self.args.width, "tf_keras",
                       seed=self.args.seed)

  def compile(self, model, lr: float, epochs: int):
    schedule = self.keras.optimizers.schedules.CosineDecay(lr, epochs * self.steps_per_epoch)
    self.training.compile_classifier(model, self.keras, schedule)
    return model

  def fit(self, model, epochs: int, callbacks=()) -> None:
    self.training.fit_seeded(model, self.x, self.y, self.keras, epochs, self.args.batch,
                             self.args.seed, callbacks)

  def copy(self, model):
    c = self.keras.models.clone_model(model)
    c.set_weights(model.get_weights())
    return c

  def model(self, label: str):
    """The model of `label`, trained once and cached (weights), BatchNorm re-estimated."""
    path = self.cache / f"{label}.weights.h5"
    if path.exists():  # a fresh graph: stripped wrappers leave layers called twice
      model = self.build()
      model.load_weights(str(path))
      return model
    start = time.perf_counter()
    base, hwa, _ = label.partition("-hwa")
    aware = self.xt.HardwareAware(chip(self.args, self.args.preset_list[0]).replace(
        variation=self.args.hwa_variation), seed=self.args.seed) if hwa else None
    if label == "dense":
      model = self.compile(self.build(), self.args.lr, self.args.dense_epochs)
      self.fit(model, self.args.dense_epochs)
    elif label == "dense-hwa":
      wrapped = self.xt.hardware_aware_model(self.copy(self.model("dense")), self.spec, aware,
                                             seed=self.args.seed)
      self.compile(wrapped, self.args.finetune_lr, self.args.epochs)
      self.fit(wrapped, self.args.epochs, [self.xt.UpdateCrossbarPruning()])
      model = self.xt.strip_crossbar_pruning(wrapped)
    elif base.startswith("rpp-column-"):
      model = self.prune_rpp(float(base.rpartition("-")[2]), aware)
    else:
      model = self.prune_tfmot(f"rpp-column-{label.rpartition('-')[2]}")
    self.xt.recalibrate_batchnorm(model, self.x[:self.args.bn_recalibration], batch_size=500)
    model.save_weights(str(path))
    self.log(f"{label}: trained in {time.perf_counter() - start:.0f} s")
    return self.model(label)

  def prune_rpp(self, reduction: float, aware=None):
    """LGD-RPP at column grain from the dense model; `aware`: hardware-aware training."""
    xt = self.xt
    model = self.copy(self.model("dense"))
    end_step = max(1, round(self.args.prune_fraction * self.args.epochs * self.steps_per_epoch))
    pruned = xt.prune_crossbar(
        model, spec=self.spec, granularity="column", seed=self.args.seed, hardware_aware=aware,
        schedule=xt.CrossbarPolynomialDecay(final_reduction=reduction, begin_step=0,
                                            end_step=end_step, frequency=self.args.frequency))
    self.compile(pruned, self.args.finetune_lr, self.args.epochs)
    self.fit(pruned, self.args.epochs, [xt.UpdateCrossbarPruning()])
    return xt.strip_crossbar_pruning(pruned)

  def prune_tfmot(self, reference: str):
    """TFMOT magnitude pruning to the per-layer non-zero counts of the `reference` model."""
    import tensorflow_model_optimization as tfmot

    from xbar_tfmot.models import introspection
    sk = tfmot.sparsity.keras
    ref = self.model(reference)
    sparsity = {}
    for layer in introspection.iter_layers(ref):
      if introspection.is_mapped(layer):
        kernel = np.asarray(layer.kernel)
        if np.count_nonzero(kernel) < kernel.size:
          sparsity[layer.name] = float(1.0 - np.count_nonzero(kernel) / kernel.size)
    # TFMOT updates masks only at multiples of `frequency` up to `end_step`: round up to one,
    # or the last update falls short of the final sparsity.
    f = self.args.frequency
    end_step = f * -(-max(1, round(self.args.prune_fraction * self.args.epochs
                                   * self.steps_per_epoch)) // f)

    def wrap(layer):
      if layer.name in sparsity:
        return sk.prune_low_magnitude(layer, pruning_schedule=sk.PolynomialDecay(
            0.0, sparsity[layer.name], 0, end_step, frequency=self.args.frequency))
      return layer

    dense = self.model("dense")
    pruned = self.keras.models.clone_model(dense, clone_function=wrap)
    for layer in pruned.layers:
      for w, v in zip(introspection.unwrap(layer).weights, dense.get_layer(
          introspection.unwrap(layer).name).weights):
        w.assign(v)
    self.compile(pruned, self.args.finetune_lr, self.args.epochs)
    self.fit(pruned, self.args.epochs, [sk.UpdatePruningStep()])
    return sk.strip_pruning(pruned)

  def mapping(self, model):
    return self.xt.build_mapping(model, self.spec, "column")


def model_record(b: Bench, model, args) -> dict[str, Any]:
  """Float accuracy, crossbars, non-zero weights and cost per preset (with `--set`) of one
  model."""
  import xbar_tfmot as xt
  mapping = b.mapping(model)
  report = b.xt.crossbar_report(model, b.spec)
  return {
      "float_accuracy": b.training.accuracy(model, b.x_test, b.y_test),
      "crossbars": int(mapping.totals["crossbars"]),
      "dense_crossbars": int(sum(r.counts.dense for r in report.mapped)),
      "nonzero_weights": int(sum(r.counts.nonzero_weights for r in report.mapped)),
      "weights": int(sum(np.asarray(r.geometry.kernel_shape).prod() for r in report.mapped)),
      "cost": {p: xt.hardware_cost_summary(model, mapping, chip(args, p))
               for p in args.preset_list},
  }


# ---------------------------------------------------------------------------- rendering

def _pct(mean: float, std: float) -> str:
  return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _duration(seconds: float) -> str:
  """`seconds` in the largest whole unit of year, day, hour, second that fits."""
  for unit, size in (("year", 3.15e7), ("day", 86400.0), ("hour", 3600.0)):
    if seconds >= size:
      return f"{seconds / size:.3g} {unit}" + ("" if round(seconds / size, 2) == 1 else "s")
  return f"{seconds:g} s"


def sweep_rows(data: dict, args, label: str, compensation: tuple[str, ...] = ()) -> list[dict]:
  """The sweep rows of one model under one compensation, from the stored cells (a condition
  not measured yet has no row)."""
  import xbar_tfmot as xt
  cells = data["cells"].get(label, {})
  rows = []
  nominal = chip(args, args.preset_list[0])
  for c in xt.sweep_conditions(nominal, args.variation_list, args.adc_list, args.stuck_list,
                               args.time_list, compensation):
    accs = cells.get(c.key)
    if accs is not None:
      rows.append({"factor": c.factor, "value": c.value, "mean": float(np.mean(accs)),
                   "std": float(np.std(accs)), "accuracies": accs})
  return rows


def markdown(data: dict, args, command: str) -> str:
  s = data["setting"]
  names = [m for m in labels(args) if m in data["models"]]
  first = args.preset_list[0]
  lines = [
      f"Fashion-MNIST, {s['train_size']} training images (random subset, seed {s['seed']}), "
      f"test set {'all 10000' if not s['test_size'] else 'first ' + str(s['test_size'])} "
      f"images; vgg8 width {s['width']:g}; crossbar `{s['spec']}` at column grain; dense "
      f"{s['dense_epochs']} epochs (Adam {s['lr']:g}), every pruned model {s['epochs']} more "
      f"(Adam {s['finetune_lr']:g}, budget falling over the first {s['prune_fraction']:.0%}, "
      f"masks every {s['frequency']} steps); BatchNorm re-estimated on "
      f"{s['bn_recalibration']} training images; DAC/ADC ranges calibrated on "
      f"{s['calibration']} training images.", "",
      f"Regenerate: `{command}`", "",
      "| model | crossbars | non-zero weights | float accuracy | "
      + " | ".join(f"{p}: energy / area / latency" for p in args.preset_list) + " |",
      "|---|---|---|---|" + "---|" * len(args.preset_list)]
  for m in names:
    r = data["models"][m]
    costs = " | ".join(f"{r['cost'][p]['energy_nj']:.0f} nJ / {r['cost'][p]['area_mm2']:.3f} "
                       f"mm² / {r['cost'][p]['latency_ns'] / 1e3:.1f} µs"
                       for p in args.preset_list)
    lines.append(f"| {m} | {r['crossbars']} / {r['dense_crossbars']} "
                 f"({1 - r['crossbars'] / r['dense_crossbars']:.0%} fewer) | "
                 f"{r['nonzero_weights']:,} / {r['weights']:,} | {100 * r['float_accuracy']:.2f} | "
                 f"{costs} |")
  modes = compensations(args)
  rows = {(m, comp): {(r["factor"], r["value"]): r for r in sweep_rows(data, args, m, comp)}
          for m in names for comp in modes}
  points = [(f, v) for f, vals in (("variation", args.variation_list),
                                   ("adc_bits", args.adc_list), ("stuck", args.stuck_list),
                                   ("time", args.time_list))
            for v in vals]
  hw = data.get("hardware", {})
  lines += ["", f"Test accuracy in % on `{first}` chips (mean ± std over {args.instances} chip "
            f"instances, seeds 0..{args.instances - 1}, the same for every model); one factor at a "
            f"time: variation (`{hw.get('variation_model', 'absolute')}`, of g_max) with the ADC "
            f"at the preset's {hw.get('adc_bits')} bits and no faults; ADC bits with no variation "
            f"and no faults; stuck-at cells (half on, half off) with no variation; inputs "
            f"{hw.get('input_bits')} bits; weights, cells and differential pairs as `{s['spec']}` "
            f"says; drift (`drift_nu` {hw.get('drift_nu')} ± {hw.get('drift_nu_std')}, t0 "
            f"{hw.get('drift_t0')} s, global drift compensation "
            f"{'on' if hw.get('drift_compensation') else 'off'}) with no variation. A condition "
            f"without variation, faults or a drift spread programs the same chip for every "
            f"seed: it is measured once (± 0.00)."
            + (f" Each cell: without / with `compensate_chip` steps "
               f"`{','.join(args.compensation_steps)}` (on the {s['calibration']} calibration "
               f"images)." if len(modes) > 1 else ""), "",
            "| condition | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  unit = {"variation": lambda v: f"variation {100 * v:g}%", "adc_bits": lambda v: f"ADC {v} bits",
          "stuck": lambda v: f"stuck-at {100 * v:g}%", "time": lambda v: f"drift {_duration(v)}"}

  def cell(m: str, point: tuple) -> str:
    found = [rows[(m, comp)].get(point) for comp in modes]
    return " / ".join(_pct(r["mean"], r["std"]) if r else "–" for r in found) \
        if any(found) else ""

  for f, v in points:
    cells = [cell(m, (f, v)) for m in names]
    lines.append(f"| {unit[f](v)} | " + " | ".join(cells) + " |")
  for sp in data.get("speed", []):
    lines += ["", f"Speed ({sp['model']}, {sp['images']} test images, batch {sp['batch']}, "
              f"{sp['rounds']} interleaved rounds, {sp['load']}): crossbar-explicit median "
              f"{sp['explicit_median']:.2f} s (range {sp['explicit_min']:.2f}-"
              f"{sp['explicit_max']:.2f}), one `{first}` chip instance median "
              f"{sp['analog_median']:.2f} s (range {sp['analog_min']:.2f}-{sp['analog_max']:.2f});"
              f" ratio of medians {sp['ratio_median']:.2f}x (per-round ratios "
              f"{sp['ratio_min']:.2f}-{sp['ratio_max']:.2f}x); building the chip (programming, "
              f"calibration) {sp['build_seconds']:.1f} s once."]
  return "\n".join(lines) + "\n"


def plot(data: dict, args, path: pathlib.Path) -> None:
  from xbar_tfmot.app import plots
  series = {m: sweep_rows(data, args, m) for m in labels(args) if m in data["models"]}
  plots.hardware_sweep(series, path, f"vgg8 width {args.width:g} on Fashion-MNIST, "
                       f"{args.preset_list[0]} chips ({args.instances} instances)")


def render(out: pathlib.Path, data: dict, args, command: str) -> None:
  (out / "bench_hardware.md").write_text(markdown(data, args, command))
  plot(data, args, out / "bench_hardware.png")


# ---------------------------------------------------------------------------- speed

def measure_speed(b: Bench, data: dict, args, log) -> dict[str, Any]:
  """Interleaved rounds of the crossbar-explicit model and one analog chip instance."""
  import tensorflow as tf

  path = b.cache / f"{args.speed_model}.weights.h5"
  if not path.exists():
    raise SystemExit(f"--speed-model {args.speed_model!r}: no cached model in {b.cache}; run "
                     f"the benchmark without --speed first (valid: {', '.join(labels(args))}).")
  model = b.model(args.speed_model)
  mapping = b.mapping(model)
  hw = chip(args, args.preset_list[0])
  start = time.perf_counter()
  analog = b.xt.analog_model(model, mapping, hw, 0, b.x[:args.calibration])
  build = time.perf_counter() - start
  explicit = b.xt.crossbar_model(model, mapping)
  batch = 500
  x = b.x_test_all[:args.speed_images] if args.speed_images else b.x_test_all
  runs = {name: tf.function(lambda t, m=m: m(t, training=False))
          for name, m in (("explicit", explicit), ("analog", analog))}

  def timed(name: str) -> float:
    start = time.perf_counter()
    for i in range(0, len(x), batch):
      runs[name](tf.constant(x[i:i + batch])).numpy()
    return time.perf_counter() - start

  for name in runs:  # warm-up: traces both batch shapes
    timed(name)
  seconds: dict[str, list[float]] = {"explicit": [], "analog": []}
  for r in range(args.rounds):
    for name in ("explicit", "analog"):
      seconds[name].append(timed(name))
    log(f"speed round {r + 1}: explicit {seconds['explicit'][-1]:.2f} s, analog "
        f"{seconds['analog'][-1]:.2f} s")
  ratios = [a / e for a, e in zip(seconds["analog"], seconds["explicit"])]
  load = os.getloadavg()
  return {"model": args.speed_model, "images": int(len(x)), "batch": batch,
          "rounds": args.rounds, "hardware": hw.name, "build_seconds": build,
          "explicit": seconds["explicit"], "analog": seconds["analog"],
          **{f"{n}_{k}": f(seconds[n]) for n in seconds
             for k, f in (("median", statistics.median), ("min", min), ("max", max))},
          "ratio_median": statistics.median(seconds["analog"]) / statistics.median(
              seconds["explicit"]), "ratio_min": min(ratios), "ratio_max": max(ratios),
          "load": f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
                  f"{os.cpu_count()} CPUs", "when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                   time.gmtime())}


# ---------------------------------------------------------------------------- main

def sweep_order(args) -> list[dict[str, tuple]]:
  """Single conditions as `sweep` arguments: deterministic chips (no variation, no faults)
  first, then the random ones, largest variation first, then stuck-at, then drift (a spread
  of the exponent makes chips differ); each measured without and then with compensation
  (`main`); so an interrupted run
  has every model at the same points and the widest span of each factor."""
  points = ([{"variations": (v,)} for v in sorted(args.variation_list, reverse=True)]
            + [{"adc_bits": (b,)} for b in args.adc_list]
            + [{"stuck": (r,)} for r in args.stuck_list]
            + [{"times": (t,)} for t in args.time_list])
  return sorted(points, key=lambda p: any(v != 0 for k, vs in p.items() if k != "adc_bits"
                                          for v in vs))

def command_line(argv: list[str] | None) -> str:
  argv = sys.argv[1:] if argv is None else argv
  return " ".join([".venv/bin/python tools/bench_hardware.py"] + argv)


def main(argv: list[str] | None = None) -> dict:
  raw = sys.argv[1:] if argv is None else argv
  if "--cpu" in raw:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = Results(out, args)
  command = command_line([a for a in raw if a != "--speed" and a != "--render-only"])
  if args.render_only:
    render(out, results.data, args, results.data.get("command", command))
    return results.data

  def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

  import tensorflow as tf

  import xbar_tfmot as xt
  b = Bench(args, out, log)
  if args.speed:
    record = measure_speed(b, results.data, args, log)
    results.data.setdefault("speed", []).append(record)
    results.save()
    render(out, results.data, args, results.data.get("command", command))
    log(f"speed: analog / explicit {record['ratio_median']:.2f}x (rounds "
        f"{record['ratio_min']:.2f}-{record['ratio_max']:.2f}x)")
    return results.data
  results.data["command"] = command
  hw = chip(args, args.preset_list[0])
  results.data["hardware"] = hw.to_dict()
  log(f"tf {tf.__version__}, python {platform.python_version()}; out {out}; models "
      f"{', '.join(labels(args))}; {len(b.y)} training, {len(b.y_test)} test images")
  models = {}
  for label in labels(args):  # train everything first
    models[label] = b.model(label)
    if label not in results.data["models"]:
      results.data["models"][label] = model_record(b, models[label], args)
      results.save()
    rec = results.data["models"][label]
    log(f"{label}: float {rec['float_accuracy']:.4f}, crossbars {rec['crossbars']}/"
        f"{rec['dense_crossbars']}, non-zero {rec['nonzero_weights']}")
  mappings = {label: b.mapping(m) for label, m in models.items()}
  measured = reused = 0
  for point, comp in ((p, c) for p in sweep_order(args) for c in compensations(args)):
    for label, model in models.items():  # one condition for every model, the cheapest first
      cells = results.data["cells"].setdefault(label, {})

      def save(key: str, accs: list[float], label=label, point=point, comp=comp) -> None:
        results.data["cells"][label][key] = accs
        results.save()
        render(out, results.data, args, command)
        log(f"{label} {point}{' compensated' if comp else ''}: {np.mean(accs):.4f} ± "
            f"{np.std(accs):.4f} ({len(accs)} chips)")

      rows = xt.sweep_hardware(model, mappings[label], hw, b.x_test, b.y_test,
                               b.x[:args.calibration], args.instances, cache=cells,
                               on_result=save, compensation=comp, **point)
      measured += sum(r["measured"] for r in rows)
      reused += sum(not r["measured"] for r in rows)
  results.save()
  render(out, results.data, args, command)
  log(f"done: {measured} conditions measured, {reused} reused (cached or equal chips); wrote "
      f"{out / 'bench_hardware.md'}, {out / 'bench_hardware.png'}")
  return results.data


if __name__ == "__main__":
  main()
