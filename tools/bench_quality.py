"""Quality benchmark (issues 8, 13): test accuracy against crossbars, LGD-RPP vs baselines and
network-level allocations.

Trains one dense baseline per (network, seed) on real data (Fashion-MNIST from Debian's
`dataset-fashion-mnist`, or a local CIFAR-10 copy), caches it under `--out`, and from it runs
every method at every crossbar reduction with the same number of post-baseline epochs. The
methods (`quality_methods.py`, one row of `METHOD_TABLE` each): LGD-RPP at crossbar and column
grain, with reorder, the top-k ablation, one-shot, TFMOT and group-lasso baselines (group
`issue8`), the network-level allocations and the best of them with distillation (group
`allocation`, issue 13), and the paper's layer-by-layer procedure.

The validation split (`--validation-size`) is carved from the training images outside the
training subset (which stays the issue-8 subset); it alone chooses, the test set only reports.

Pruned layers are every mapped layer but `--leave-dense` (first convolution and classifier),
the same set for every method. Crossbars are counted over the WHOLE model, every mapped layer
including those left dense (what a chip holds): the crossbar report's `packed` count (column
grain with output recombination, equal to the block count for crossbar-grain masks); cells
also keep the count over the pruned layers (`counts_pruned`), which the issue-8 tables used.
Each finished cell is added to `<out>/results.json` at once, under its lock file (runs on
different (network, seed) pairs may share an `--out`); a rerun skips finished cells (and
refuses an `--out` holding another setting). A reduction a network cannot reach (its layers
left dense and one crossbar per pruned layer exceed the whole-model total) is logged with the
library's reason and left out; the other cells run. Writes `<out>/bench_quality.md` and
`<out>/bench_quality.png`.

  python tools/bench_quality.py --cpu --out out/bench_quality
  python tools/bench_quality.py --out out/bench_quality --render-only
  python tools/bench_quality.py --cpu --quick --out /tmp/bq_quick   # a tiny setting, for the test

This file is the driver (arguments, the run loop). Beside it: `quality_bench.py` (one `Bench`
per (network, seed): data, the cached dense baseline, counts), `quality_methods.py` (the methods,
each a call of the library's procedures: `prune_crossbar`, `one_shot_masks`,
`prune_layer_by_layer`, `CrossbarPolicy`, `recalibrate_batchnorm`) and `quality_report.py` (the
results file, summaries, markdown and plot).
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import platform
import sys
import time
from typing import Any

if str(pathlib.Path(__file__).resolve().parent) not in sys.path:  # tools/ is not a package
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

# The parts of the benchmark, also reachable from the driver as before they were split out.
from quality_bench import Bench, load_cifar10, load_data  # noqa: E402,F401
from quality_methods import (ALLOCATION, DISTILLED, METHOD_GROUPS, METHODS,  # noqa: E402,F401
                             chip_cost, equal_count_reduction, run_cell)
from quality_report import (Results, allocation_reading, choose_allocation,  # noqa: E402,F401
                            render, summarise)

DATASETS = ("fashion_mnist", "cifar10")
CIFAR10_DEFAULT = "~/.keras/datasets/cifar-10-batches-py"
DEFAULT_NETWORKS = {"fashion_mnist": "vgg8:0.5,resnet20:1", "cifar10": "vgg8:1"}
# Settings that change results: an --out folder holds one setting.
SETTING_KEYS = ("dataset", "spec", "network_specs", "leave_dense", "train_size", "validation_size", "test_size",
                "dense_epochs", "epochs", "batch", "lr", "finetune_lr", "prune_fraction",
                "frequency", "temperature", "gl_lambda", "bn_recalibration", "distill_weight",
                "distill_temperature")
AT_LEAST_0 = (lambda v: v >= 0, "an integer >= 0")
AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
# (flag, default, help, (check, what is valid) or None): the default's type is the flag's; a
# False default makes a switch.
FLAGS: tuple[tuple[str, Any, str, Any], ...] = (
    ("--data", None, "dataset folder: Fashion-MNIST IDX files (default: Debian's), or CIFAR-10 "
     f"'cifar-10-batches-py' (default {CIFAR10_DEFAULT})", None),
    ("--networks", None, "comma list of zoo name:width (default fashion_mnist: "
     f"{DEFAULT_NETWORKS['fashion_mnist']}; cifar10: {DEFAULT_NETWORKS['cifar10']})", None),
    ("--methods", "issue8", f"comma list of {', '.join(METHODS)}, or the groups "
     f"{', '.join(f'{g} ({len(m)} rows)' for g, m in METHOD_GROUPS.items())}", None),
    ("--reductions", "0.5,0.6,0.72,0.8", "target crossbar reductions", None),
    ("--seeds", "0,1", "seeds (model init, data subset, shuffling, RPP)", None),
    ("--multi-seed-reductions", "0.72",
     "seeds after the first run only at these reductions ('all': every one)", None),
    ("--leave-dense", "first-conv,classifier", "layers never pruned: comma list of layer names "
     "and/or 'first-conv' (the first convolution) and 'classifier' (the last Dense)", None),
    ("--regrowth-reductions", "0.72", "rpp-crossbar-st (the regrowth comparison) runs only at "
     "these reductions ('all': every one)", None),
    ("--spec", "72x16", "CrossbarSpec string, preset name or JSON file", None),
    ("--network-specs", "", "per-network crossbar specs overriding --spec, e.g. "
     "'mlp=32x32,lenet5=32x16' (each network at a size that gives it >= ~100 dense crossbars)",
     None),
    ("--train-size", 10000, "training images (random subset)", AT_LEAST_1),
    ("--validation-size", 2000, "validation images, carved from the training images outside "
     "the training subset: sensitivity curves and the choice of the best allocation read them, "
     "never the test set", AT_LEAST_1),
    ("--test-size", 0, "test images (0: the whole test set)", AT_LEAST_0),
    ("--dense-epochs", 8, "epochs of the dense baseline", AT_LEAST_1),
    ("--epochs", 2, "post-baseline epochs of every method", AT_LEAST_1),
    ("--batch", 64, "batch size", AT_LEAST_1),
    ("--lr", 1e-3, "Adam learning rate, dense baseline", None),
    ("--finetune-lr", 5e-4, "Adam learning rate, methods", None),
    ("--prune-fraction", 0.25, "share of the method epochs over which the budget falls (then "
     "frozen)", (lambda v: 0.0 < v <= 1.0, "0 < f <= 1")),
    ("--frequency", 10, "mask update every N steps", AT_LEAST_1),
    ("--temperature", 1.0, "initial RPP temperature", None),
    ("--gl-lambda", 1e-3, "group-lasso coefficient", None),
    ("--distill-weight", 0.5, "alloc-best-distill: weight of the soft-target term "
     "(DistillationLoss)", (lambda v: 0.0 <= v <= 1.0, "0 <= w <= 1")),
    ("--distill-temperature", 4.0, "alloc-best-distill: distillation temperature",
     (lambda v: v > 0, "> 0")),
    ("--candidate-steps", 32, "alloc-validated: masked fine-tuning steps of each candidate "
     "before it is scored (0: one-shot); recorded in the cell, not a setting", AT_LEAST_0),
    ("--no-finetuned-reference", False, "skip (for now) the 'dense + the same epochs' "
     "reference; a later run without this flag adds it", None),
    ("--bn-recalibration", 5000, "before every evaluation, re-estimate BatchNorm statistics on "
     "this many training images (forward passes only, all models alike; 0: off)", None),
    ("--quick", False, "tiny setting for tests: 300 training / 500 test images, vgg8:0.25, "
     "1 epoch, reduction 0.72, seed 0 (explicit options still win)", None),
    ("--render-only", False, "only rewrite the markdown and plot from results.json", None),
    ("--cpu", False, "hide GPUs from TensorFlow (CUDA_VISIBLE_DEVICES=''), as the published "
     "numbers were measured; takes effect only if given on the command line", None),
    ("--tf-log", False, "show TensorFlow's C++ log lines", None),
)
QUICK = {"--train-size": 300, "--test-size": 500, "--validation-size": 200,
         "--networks": "vgg8:0.25", "--dense-epochs": 1, "--epochs": 1, "--reductions": "0.72",
         "--seeds": "0", "--frequency": 2}


def _field(flag: str) -> str:
  return flag[2:].replace("-", "_")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The options, with `--quick`'s values for those not given and the lists parsed."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="results folder (results.json, cache/, md, png)")
  p.add_argument("--dataset", default="fashion_mnist", choices=DATASETS)
  for flag, default, text, _ in FLAGS:
    if default is False:
      p.add_argument(flag, action="store_true", help=text)
    else:
      p.add_argument(flag, default=default, type=str if default is None else type(default),
                     help=text)
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  given = {a.split("=")[0] for a in argv if a.startswith("--")}
  for flag, value in QUICK.items() if args.quick else ():
    if flag not in given:
      setattr(args, _field(flag), value)
  if args.networks is None:
    args.networks = DEFAULT_NETWORKS[args.dataset]
  args.network_list = [_network(n) for n in args.networks.split(",") if n]
  args.method_list = []
  for m in [m for m in args.methods.split(",") if m]:
    args.method_list += [x for x in METHOD_GROUPS.get(m, (m,)) if x not in args.method_list]
  for m in args.method_list:
    if m not in METHODS:
      p.error(f"--methods: {m!r} is unknown; valid: {', '.join(METHODS)}")
  args.reduction_list = _floats("--reductions", args.reductions)
  for r in args.reduction_list:
    if not 0.0 < r < 1.0:
      p.error(f"--reductions: {r} is invalid; valid: 0 < reduction < 1")
  args.seed_list = [int(s) for s in args.seeds.split(",") if s]
  args.multi_list = _floats("--multi-seed-reductions", args.multi_seed_reductions,
                            args.reduction_list)
  args.regrowth_list = _floats("--regrowth-reductions", args.regrowth_reductions,
                               args.reduction_list)
  for flag, _, _, check in FLAGS:
    value = getattr(args, _field(flag))
    if check and not check[0](value):
      p.error(f"{flag}={value} is invalid; valid: {check[1]}")
  return args


def _network(text: str) -> tuple[str, float]:
  from xbar_tfmot.app.zoo import BUILDERS
  name, _, width = text.partition(":")
  if name not in BUILDERS:
    raise SystemExit(f"--networks: {name!r} is unknown; valid: {', '.join(sorted(BUILDERS))} "
                     f"(as name:width, e.g. vgg8:0.5)")
  return name, _float("--networks", width or "1")


def _float(flag: str, text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise SystemExit(f"{flag}: {text!r} is not a number") from None


def _floats(flag: str, text: str, every: list[float] | None = None) -> list[float]:
  """A comma list of numbers; 'all' is `every` where the flag accepts it."""
  if every is not None and text == "all":
    return list(every)
  return [_float(flag, r) for r in text.split(",") if r]


def settings(args: argparse.Namespace) -> dict[str, Any]:
  return {k: getattr(args, k) for k in SETTING_KEYS}


def plan(args) -> list[tuple[tuple[str, float], int, str, float]]:
  """Cells in run order: first seed everywhere, then the other seeds at the multi-seed cuts;
  the distilled rows last (they choose among the finished allocation rows)."""
  def among(r: float, values: list[float]) -> bool:
    return any(abs(r - v) < 1e-9 for v in values)

  cells = [(net, seed, method, r)
           for i, seed in enumerate(args.seed_list) for net in args.network_list
           for r in args.reduction_list if not i or among(r, args.multi_list)
           for method in args.method_list
           if method != "rpp-crossbar-st" or among(r, args.regrowth_list)]
  return sorted(cells, key=lambda c: c[2] in DISTILLED)


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  if "--cpu" in argv:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything imports TensorFlow
  if "--tf-log" not in argv:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = Results(out, settings(args), check=not args.render_only)
  command = " ".join([".venv/bin/python tools/bench_quality.py"] + argv)
  written = f"{out / 'bench_quality.md'} and {out / 'bench_quality.png'}"
  if args.render_only:
    render(out, results.data, results.data.get("command", command))
    print(f"wrote {written}")
    return results.data
  if args.dataset == "cifar10":
    load_cifar10(args.data)  # fail early, naming the missing path

  def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

  import tensorflow as tf
  from xbar_tfmot.core.errors import PolicyError
  cells = plan(args)
  log(f"tf {tf.__version__}, python {platform.python_version()}; out {out}; "
      f"{len(cells)} cells planned, {len(results.done())} done")
  results.data["command"] = command  # the latest invocation
  bench = None
  t0 = time.perf_counter()
  for net, seed, method, r in cells:
    key = Results.key(net, seed, method, r)
    if key in results.done():
      continue
    if bench is None or (bench.network, bench.seed) != (net, seed):
      bench = None  # one (network, seed) in memory at a time
      bench = Bench(args, net, seed, log, choose=functools.partial(results.choose, net))
    baseline = {**bench.dense()[1], "network": f"{net[0]}:{net[1]:g}", "seed": seed,
                **chip_cost(bench, bench.dense()[0])}  # issue 27: energy per inference
    if results.data["baselines"].get(bench.tag) != baseline:
      results.set_baseline(bench.tag, baseline)
    try:
      cell = {"key": key, **run_cell(bench, method, r)}
    except PolicyError as e:  # this network cannot be cut so deep: no cell, the others run
      log(f"{key}: skipped: {e}")
      continue
    results.add_cell(cell)
    counts = cell["counts"]
    log(f"{key}: acc {cell['accuracy']:.4f}, crossbars {counts['packed']}/{counts['dense']} "
        f"(blocks {counts['blocks']}, budget {cell['budget']}), {cell['energy_nj']:.0f} nJ on "
        f"{cell['chip']}, {cell['seconds']:.0f} s")
  results.data["seconds_this_run"] = time.perf_counter() - t0
  results.save()
  render(out, results.data, results.data.get("command", command))
  log(f"done in {time.perf_counter() - t0:.0f} s; wrote {written.replace(' and ', ', ')}")
  return results.data


if __name__ == "__main__":
  main()
