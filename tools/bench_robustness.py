"""Robustness in the allocation (issue 27, item 3): do crossbars spent where the chip's weight
noise hurts most beat crossbars spent by weight magnitude, at the same whole-model count?

On Fashion-MNIST, `--train-size` training images and a validation split of `--val-size` more,
both drawn from the TRAINING images (`--split-seed`); the test set only reports. Per `--seeds`
value: a zoo `vgg8` of `--width` is trained dense for `--dense-epochs`; then, on the first
`--curve-size` validation images (the *measurement* part):

  a. per-layer noise sensitivity: loss and accuracy with only that layer programmed on a chip
     of `--preset` at each `--sens-variations` level (`pruning.robustness.
     layer_noise_sensitivity`, the library's chip kernel: quantised, programmed with the
     spec's variation), over `--sens-chips` chip seeds (1000, 1001, ...: not the evaluation
     chips);
  b. sensitivity curves (loss against crossbar budget, each layer cut alone, column grain),
     noise-free and with the cut layer programmed on those chips at each level
     (`sensitivity_curves(perturb=chip_perturbation(...))`).

Allocations at the same whole-model crossbar count (`--reduction` fewer, first convolution
left dense as in the default policy): `magnitude` (`global_score`, the default run's),
`sens-clean` (`sensitivity`, noise-free curves) and `sens-chip-V` (`sensitivity`, the curves
at chip variation V), and `guard-N` (asked for with `--allocations`): `magnitude`'s final
split with N more crossbars in the pruned layer whose noise hurts the magnitude-pruned model
most (its loss on the measurement images with only that layer on a chip at
`--guard-variation`), the other layers sharing the rest by magnitude (`global_score` with that
layer targeted); `dense` (also with `--allocations`) evaluates the unpruned model. Each
allocation is pruned from the same dense model the same way (LGD-RPP, column grain,
`--epochs`, cosine learning rate, the same seed), stripped, its BatchNorm re-estimated on
training images, and evaluated with `xt.analog_accuracy` at each `--eval-variations` level
on `--instances` chips (seeds 0..n-1; one at variation 0, where they are equal) on the
*decision* part of the validation split (the images after the first `--curve-size`) and on
the first `--test-size` test images (report).
`--ideal-periphery`: float inputs and no ADC (the weights' non-idealities only).

Models, sensitivities and curves are cached under `<out>/cache/`, results appended to
`<out>/results.json` (a rerun resumes; one folder per setting).

  python tools/bench_robustness.py --out out/bench_robust --ideal-periphery
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--train-size", type=int, default=10000)
  p.add_argument("--val-size", type=int, default=4000)
  p.add_argument("--curve-size", type=int, default=1000,
                 help="validation images for the sensitivities and curves; the rest decide")
  p.add_argument("--test-size", type=int, default=10000)
  p.add_argument("--split-seed", type=int, default=0)
  p.add_argument("--seeds", default="0,1", help="training seeds (dense model and pruning)")
  p.add_argument("--dense-epochs", type=int, default=3)
  p.add_argument("--epochs", type=int, default=3, help="epochs of every pruned model")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--finetune-lr", type=float, default=5e-4)
  p.add_argument("--reduction", type=float, default=0.85)
  p.add_argument("--frequency", type=int, default=20)
  p.add_argument("--spec", default="isaac_128x128")
  p.add_argument("--preset", default="isaac_32nm")
  p.add_argument("--sens-variations", default="0.05,0.1")
  p.add_argument("--sens-chips", type=int, default=3)
  p.add_argument("--allocations", default=None,
                 help="default: magnitude, sens-clean and sens-chip-V for each sens variation")
  p.add_argument("--guard-variation", type=float, default=0.1,
                 help="chip variation at which guard-N measures the pruned model's layers")
  p.add_argument("--eval-variations", default="0,0.05,0.1")
  p.add_argument("--instances", type=int, default=5)
  p.add_argument("--ideal-periphery", action="store_true",
                 help="float inputs and no ADC (the weights' non-idealities only; much faster)")
  p.add_argument("--calibration", type=int, default=256)
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  import xbar_tfmot as xt
  from xbar_tfmot.app import datasets, training, zoo
  from xbar_tfmot.core.spec import parse_spec
  from xbar_tfmot.pruning import robustness

  import tf_keras as keras  # the zoo's default flavour
  wall = time.perf_counter()
  out = pathlib.Path(args.out)
  (out / "cache").mkdir(parents=True, exist_ok=True)
  results_path = out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  (x_all, y_all), (x_test, y_test) = datasets.load_fashion_mnist()
  order = np.random.default_rng(args.split_seed).permutation(len(y_all))
  train = order[:args.train_size]
  val = order[args.train_size:args.train_size + args.val_size]
  x, y = x_all[train], y_all[train]
  x_meas, y_meas = x_all[val[:args.curve_size]], y_all[val[:args.curve_size]]
  x_dec, y_dec = x_all[val[args.curve_size:]], y_all[val[args.curve_size:]]
  x_test, y_test = x_test[:args.test_size], y_test[:args.test_size]
  assert len(x_dec) > 0, "--val-size must exceed --curve-size"
  spec = parse_spec(args.spec)
  hw = xt.HardwareSpec.preset(args.preset)
  if args.ideal_periphery:
    hw = hw.replace(input_bits=None, adc_bits=None)
  sens_levels = [float(v) for v in args.sens_variations.split(",") if v]
  allocations = (args.allocations.split(",") if args.allocations else
                 ["magnitude", "sens-clean"] + [f"sens-chip-{v:g}" for v in sens_levels])
  eval_levels = [float(v) for v in args.eval_variations.split(",")]
  chips = [1000 + i for i in range(args.sens_chips)]
  steps = -(-len(y) // args.batch)

  def log(text: str) -> None:
    print(f"[{time.perf_counter() - wall:6.0f} s] {text}", flush=True)

  def save():
    results_path.write_text(json.dumps(results, indent=1))

  for seed in [int(s) for s in args.seeds.split(",")]:
    def build():
      return zoo.build_model("vgg8", x.shape[1:], 10, args.width, "tf_keras", seed=seed)

    def compile_fit(model, lr, epochs, callbacks=()):
      schedule = keras.optimizers.schedules.CosineDecay(lr, epochs * steps)
      training.compile_classifier(model, keras, schedule)
      training.fit_seeded(model, x, y, keras, epochs, args.batch, seed, callbacks)

    def load(label: str):
      model = build()
      model.load_weights(str(out / "cache" / f"{label}-s{seed}.weights.h5"))
      training.compile_classifier(model, keras, 1e-3)
      return model

    dense_path = out / "cache" / f"dense-s{seed}.weights.h5"
    if not dense_path.exists():
      start = time.perf_counter()
      model = build()
      compile_fit(model, args.lr, args.dense_epochs)
      model.save_weights(str(dense_path))
      log(f"seed {seed}: dense trained in {time.perf_counter() - start:.0f} s")
    dense = load("dense")
    key = f"s{seed}"
    info = results.setdefault("measure", {}).setdefault(key, {})
    if "sensitivity" not in info:
      start = time.perf_counter()
      info["sensitivity"] = {
          f"{v:g}": robustness.layer_noise_sensitivity(dense, hw.replace(variation=v), spec,
                                                       (x_meas, y_meas), chips)
          for v in sens_levels}
      info["sensitivity_seconds"] = time.perf_counter() - start
      save()
      log(f"seed {seed}: layer noise sensitivity in {info['sensitivity_seconds']:.0f} s")
    curves = info.setdefault("curves", {})
    for name in ["clean"] + [f"chip-{v:g}" for v in sens_levels]:
      if name in curves:
        continue
      perturb = None if name == "clean" else robustness.chip_perturbation(
          hw.replace(variation=float(name[5:])), spec, chips)
      m = xt.sensitivity_curves(dense, spec, (x_meas, y_meas), "column", perturb=perturb)
      curves[name] = m
      save()
      log(f"seed {seed}: curves {name}: {m['evaluations']} evaluations in {m['seconds']:.0f} s")

    for alloc in allocations:
      label = f"{alloc}"
      path = out / "cache" / f"{label}-s{seed}.weights.h5"
      if alloc == "dense":  # the unpruned model, for reference (already trained)
        policy = None
      elif alloc == "magnitude":
        policy = xt.CrossbarPolicy(mode="global_score", score="magnitude")
      elif alloc.startswith("guard-"):
        policy = guard_policy(xt, results, info, load("magnitude"), int(alloc[len("guard-"):]),
                              spec, hw.replace(variation=args.guard_variation), chips,
                              (x_meas, y_meas), seed, robustness, save, log)
      else:
        policy = xt.CrossbarPolicy(mode="sensitivity",
                                   curves=curves[alloc[len("sens-"):]]["curves"])
      if not path.exists():
        start = time.perf_counter()
        base = load("dense")
        end = max(1, round(0.5 * args.epochs * steps))
        wrapped = xt.prune_crossbar(
            base, spec=spec, granularity="column", seed=seed, policy=policy,
            schedule=xt.CrossbarPolynomialDecay(args.reduction, 0, end, frequency=args.frequency))
        compile_fit(wrapped, args.finetune_lr, args.epochs, [xt.UpdateCrossbarPruning()])
        model = xt.strip_crossbar_pruning(wrapped)
        xt.recalibrate_batchnorm(model, x[:2000], batch_size=500)
        model.save_weights(str(path))
        log(f"seed {seed}: {label} trained in {time.perf_counter() - start:.0f} s")
      model = load(label)
      mapping = xt.build_mapping(model, spec, "column")
      row = results.setdefault("models", {}).setdefault(f"{label}|s{seed}", {})
      if "crossbars" not in row:
        row["crossbars"] = mapping.totals.get("crossbars")
        row["layers"] = {n: len(mapping.layer(n)["crossbars"]) for n in mapping.layer_names}
        row["float"] = {"val": training.accuracy(model, x_dec, y_dec),
                        "test": training.accuracy(model, x_test, y_test)}
        save()
      for split, (xs, ys) in (("val", (x_dec, y_dec)), ("test", (x_test, y_test))):
        for v in eval_levels:
          cell = f"{split}|{v:g}"
          if cell in row:
            continue
          start = time.perf_counter()
          # no variation: every chip is the same (quantisation only), one is measured
          row[cell] = xt.analog_accuracy(model, mapping, hw.replace(variation=v), xs, ys,
                                         list(range(args.instances if v > 0 else 1)),
                                         calibration=x[:args.calibration])
          save()
          log(f"seed {seed}: {label} {cell}: {statistics.mean(row[cell]):.4f} ± "
              f"{statistics.pstdev(row[cell]):.4f} ({time.perf_counter() - start:.0f} s)")
  print(report(results, allocations, eval_levels))
  log("done")


def guard_policy(xt, results: dict, info: dict, magnitude_model, extra: int, spec, hw, chips,
                 data, seed: int, robustness, save, log):
  """`magnitude`'s allocation with `extra` more crossbars in the pruned layer whose noise hurts
  the magnitude-pruned model most (loss on the measurement images with only that layer on a
  chip at `hw`'s variation), taken from the other pool layers by magnitude: `global_score`
  with that one layer targeted at `magnitude`'s budget + `extra` (same whole-model count)."""
  import re
  if "pruned_sensitivity" not in info:
    info["pruned_sensitivity"] = robustness.layer_noise_sensitivity(magnitude_model, hw, spec,
                                                                    data, chips)
    save()
  sens = info["pruned_sensitivity"]
  budgets = results["models"][f"magnitude|s{seed}"]["layers"]
  from xbar_tfmot.models import introspection
  dense = {l.name: introspection.geometry_of(l, spec).dense_crossbars
           for l in introspection.iter_layers(magnitude_model) if l.name in budgets}
  clean = statistics.mean(sens["(none)"]["loss"])
  room = [n for n in budgets if budgets[n] < dense[n]]  # pruned layers that can take more
  name = max(room, key=lambda n: statistics.mean(sens[n]["loss"]) - clean)
  target = min(dense[name], budgets[name] + extra)
  info.setdefault("guard", {})[str(extra)] = {"layer": name, "budget": target}
  save()
  log(f"seed {seed}: guard-{extra}: {name} {budgets[name]} -> {target} crossbars")
  return xt.CrossbarPolicy(mode="global_score", score="magnitude",
                           targets={re.escape(name): 1.0 - target / dense[name]})


def _ms(values) -> str:
  return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.pstdev(values):.2f}"


def report(results: dict, allocations, levels) -> str:
  """Markdown tables: accuracy (%) per allocation and chip variation, mean ± std over every
  chip of every seed, on the decision part of the validation split and on the test images;
  then the per-layer noise sensitivity (accuracy drop and loss increase with only that layer
  on the chip), of the dense model at each level and of the magnitude-pruned model."""
  models = results.get("models", {})
  lines = []
  for split in ("val", "test"):
    lines += [f"\n{split}: accuracy (%), mean ± std over chips x seeds", "",
              "| allocation | crossbars | float | " + " | ".join(
                  f"chip {v:g}" for v in levels) + " |",
              "|" + "---|" * (3 + len(levels))]
    for alloc in allocations:
      rows = [r for k, r in sorted(models.items()) if k.split("|")[0] == alloc]
      if not rows:
        continue
      cells = []
      for v in levels:
        values = [a for r in rows for a in r.get(f"{split}|{v:g}", [])]
        cells.append(_ms(values) if values else "")
      xbars = "/".join(str(r["crossbars"]) for r in rows)
      lines.append(f"| {alloc} | {xbars} | {_ms([r['float'][split] for r in rows])} | "
                   + " | ".join(cells) + " |")
    lines += [f"\n{split}: minus `magnitude` (points), paired by seed and chip: mean ± std "
              f"(chips where higher / lower)", "",
              "| allocation | float | " + " | ".join(f"chip {v:g}" for v in levels) + " |",
              "|" + "---|" * (2 + len(levels))]
    for alloc in allocations:
      pairs = [(r, models.get(f"magnitude|{k.split('|')[1]}")) for k, r in sorted(models.items())
               if k.split("|")[0] == alloc and alloc != "magnitude"]
      pairs = [(r, m) for r, m in pairs if m]
      if not pairs:
        continue
      cells = [_ms([r["float"][split] - m["float"][split] for r, m in pairs])]
      for v in levels:
        diffs = [a - b for r, m in pairs
                 for a, b in zip(r.get(f"{split}|{v:g}", []), m.get(f"{split}|{v:g}", []))]
        cells.append(f"{_ms(diffs)} ({sum(d > 0 for d in diffs)}/{sum(d < 0 for d in diffs)})"
                     if diffs else "")
      lines.append(f"| {alloc} | " + " | ".join(cells) + " |")
  for key, info in sorted(results.get("measure", {}).items()):
    for extra, guard in sorted(info.get("guard", {}).items()):
      lines.append(f"\nguard-{extra} ({key}): {guard['layer']} kept {guard['budget']} crossbars")
    tables = {f"dense model, variation {v}": t for v, t in info.get("sensitivity", {}).items()}
    if "pruned_sensitivity" in info:
      tables["magnitude-pruned model, --guard-variation"] = info["pruned_sensitivity"]
    if not tables:
      continue
    names = list(tables)
    lines += [f"\nnoise sensitivity ({key}, measurement images): accuracy drop (points) and loss "
              f"increase with only the layer on the chip, mean ± std over chips", "",
              "| layer | " + " | ".join(f"{n}" for n in names) + " |",
              "|" + "---|" * (1 + len(names))]
    layers = [n for n in tables[names[0]] if n != "(none)"]
    for layer in layers:
      cells = []
      for n in names:
        t = tables[n]
        acc = statistics.mean(t["(none)"]["accuracy"])
        loss = statistics.mean(t["(none)"]["loss"])
        cells.append(f"{_ms([acc - a for a in t[layer]['accuracy']])} / "
                     f"{statistics.mean(t[layer]['loss']) - loss:+.3f}")
      lines.append(f"| {layer} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
