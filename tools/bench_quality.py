"""Quality benchmark (issues 8, 13): test accuracy against crossbars, LGD-RPP vs baselines and
network-level allocations.

Trains one dense baseline per (network, seed) on real data (Fashion-MNIST from Debian's
`dataset-fashion-mnist`, or a local CIFAR-10 copy), caches it under `--out`, and from it runs
every method at every crossbar reduction with the same number of post-baseline epochs:

  rpp-crossbar         LGD-RPP, crossbar grain (regrowth reset)
  rpp-crossbar-st      LGD-RPP, crossbar grain, regrowth straight_through
  rpp-column           LGD-RPP, column grain (output recombination)
  rpp-column-reorder   `reorder_model` (materialised), then LGD-RPP column grain
  topk-crossbar        exact top-k projection at every update (no RPP sampling), crossbar grain
  oneshot-crossbar     exact crossbar-grain projection of the trained dense kernels once, then
                       fine-tuning with the mask fixed
  tfmot-unstructured   TFMOT `prune_low_magnitude` (gradual) at the per-layer number of
                       non-zero weights the crossbar-grain budget keeps; crossbars counted by us
  group-lasso          sum over crossbar blocks of the block's L2 norm added to the loss for the
                       first half of the epochs, then the strongest blocks kept to the budget and
                       the second half fine-tunes with the mask fixed

Issue 13 (`--methods allocation`): LGD-RPP column grain (output recombination) on the
baseline reordered once per target (`reorder_model`, shared by the rows), differing only in
how the crossbars are split among layers (`CrossbarPolicy.mode`):

  alloc-per-layer      per_layer, at the per-layer reduction that makes the whole model hold no
                       more crossbars than the global modes (`equal_count_reduction`)
  alloc-global         global: the model-wide budget spread in proportion to dense counts
  alloc-energy         global_score, score magnitude: the sum of squared weights (re-split at
                       every mask update; the row keeps the score's former name, energy)
  alloc-saliency       global_score, score saliency (|w dL/dw| on 4 training batches)
  alloc-sensitivity    sensitivity: curves measured on the validation split, then a knapsack
  alloc-best-distill   the row above with the best mean validation accuracy at that (network,
                       target), trained against the dense model's logits (DistillationLoss)
  layer-by-layer       (by name; not in the group, it trains about 4x longer than a row)
                       the paper's procedure (`prune_layer_by_layer`): one layer at a time, its
                       reduction climbing a 3-step grid up to the target until the validation
                       accuracy falls 2 points below the start (or Tc = 1), each layer then
                       fine-tuned one epoch; it lands on its own crossbar count, which the
                       cell reports (its epochs too: more than the other rows')

The validation split (`--validation-size`) is carved from the training images outside the
training subset (which stays the issue-8 subset); it alone chooses, the test set only reports.

Pruned layers are every mapped layer but `--leave-dense` (first convolution and classifier),
the same set for every method. Crossbars are counted over the WHOLE model, every mapped layer
including those left dense (what a chip holds): the crossbar report's `packed` count (column
grain with output recombination, equal to the block count for crossbar-grain masks); cells
also keep the count over the pruned layers (`counts_pruned`), which the issue-8 tables used.
Each finished cell is added to `<out>/results.json` at once, under a file lock (runs on
different (network, seed) pairs may share an `--out`); a rerun skips finished cells (and
refuses an `--out` holding another setting). Writes `<out>/bench_quality.md` and
`<out>/bench_quality.png`.

  python tools/bench_quality.py --cpu --out out/bench_quality
  python tools/bench_quality.py --out out/bench_quality --render-only
  python tools/bench_quality.py --cpu --quick --out /tmp/bq_quick   # a tiny setting, for the test

The crossbar spec is read by `xbar_tfmot.core.spec.parse_spec`, the layers left dense and the
per-layer budgets come from `CrossbarPolicy`, one-shot masks from the library's projection, and
compiling, training, BatchNorm re-estimation and evaluation from `xbar_tfmot.app.training`,
which the `xbar-prune` pipeline shares. Each method is one row of `METHOD_TABLE`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import re
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np


class Method(NamedTuple):
  """One compared method: its label in the table, plot style, family and how to run it.

  `run(bench, reduction)` returns `(stripped model, extra fields of the result cell)`.
  """

  label: str
  style: str
  family: str  # "lgd": LGD with a projection; "baseline": the methods LGD is compared with
  run: Callable[["Bench", float], tuple[Any, dict]]


def _lgd(granularity: str, projection: str, regrowth: str, reorder: bool):
  return lambda b, r: run_lgd(b, r, granularity, projection, regrowth, reorder)


def _alloc(mode: str, score: str = "magnitude", distill: bool = False):
  return lambda b, r: run_allocation(b, r, mode, score, distill)


# Order: table rows, plot legend and run order within a cell group.
METHOD_TABLE: dict[str, Method] = {
    "rpp-crossbar": Method("1. LGD-RPP crossbar grain", "o-", "lgd",
                           _lgd("crossbar", "rpp", "reset", False)),
    "rpp-crossbar-st": Method("LGD-RPP crossbar grain, regrowth straight_through", "o:", "lgd",
                              _lgd("crossbar", "rpp", "straight_through", False)),
    "rpp-column": Method("2. LGD-RPP column grain", "s-", "lgd",
                         _lgd("column", "rpp", "reset", False)),
    "rpp-column-reorder": Method("3. LGD-RPP column grain + reorder", "D-", "lgd",
                                 _lgd("column", "rpp", "reset", True)),
    "topk-crossbar": Method("4. LGD top-k (no RPP), crossbar grain", "^--", "lgd",
                            _lgd("crossbar", "topk", "reset", False)),
    "oneshot-crossbar": Method("5. one-shot block magnitude + fine-tune", "v--", "baseline",
                               lambda b, r: run_oneshot(b, r)),
    "tfmot-unstructured": Method("6. TFMOT prune_low_magnitude (unstructured)", "x--",
                                 "baseline", lambda b, r: run_tfmot(b, r)),
    "group-lasso": Method("7. group lasso on blocks + threshold + fine-tune", "P--", "baseline",
                          lambda b, r: run_group_lasso(b, r)),
    # Issue 13: network-level allocation, all LGD-RPP column grain + reorder.
    "alloc-per-layer": Method("A1. per-layer (same reduction in every pruned layer)", "s-",
                              "allocation", _alloc("per_layer")),
    "alloc-global": Method("A2. global proportional", "o-", "allocation", _alloc("global")),
    "alloc-energy": Method("A3. global_score energy", "^-", "allocation",
                           _alloc("global_score", "magnitude")),
    "alloc-saliency": Method("A4. global_score saliency", "v-", "allocation",
                             _alloc("global_score", "saliency")),
    "alloc-sensitivity": Method("A5. sensitivity (curves on the validation split)", "D-",
                                "allocation", _alloc("sensitivity")),
    "alloc-best-distill": Method("A6. best of A1-A5 on validation, + distillation", "*-",
                                 "distilled", lambda b, r: run_best_distilled(b, r)),
    "layer-by-layer": Method("A7. layer-by-layer (the paper's procedure)", "h-", "procedure",
                             lambda b, r: run_layer_by_layer(b, r)),
}
# Each allocation row again with distillation (`<row>-kd`): A6 is the one validation picks; a
# fixed `-kd` row runs before the pick is known (the reading uses it as A6 when it is the pick).
ALLOC_MODES = {"alloc-per-layer": ("per_layer", "magnitude"),
               "alloc-global": ("global", "magnitude"),
               "alloc-energy": ("global_score", "magnitude"),
               "alloc-saliency": ("global_score", "saliency"),
               "alloc-sensitivity": ("sensitivity", "magnitude")}
for _m, (_mode, _score) in ALLOC_MODES.items():
  METHOD_TABLE[f"{_m}-kd"] = Method(f"{METHOD_TABLE[_m].label.split('.')[0]}-kd. "
                                    f"{METHOD_TABLE[_m].label.split('. ', 1)[1]}, + distillation",
                                    METHOD_TABLE[_m].style.replace("-", ":"), "kd",
                                    _alloc(_mode, _score, True))
METHODS = tuple(METHOD_TABLE)
LGD_METHODS = tuple(m for m, spec in METHOD_TABLE.items() if spec.family == "lgd")
BASELINES = tuple(m for m, spec in METHOD_TABLE.items() if spec.family == "baseline")
ALLOCATION = tuple(m for m, spec in METHOD_TABLE.items() if spec.family == "allocation")
DISTILLED = tuple(m for m, spec in METHOD_TABLE.items() if spec.family == "distilled")
KD = tuple(m for m, spec in METHOD_TABLE.items() if spec.family == "kd")
PROCEDURE = tuple(m for m, spec in METHOD_TABLE.items() if spec.family == "procedure")
ISSUE8 = LGD_METHODS + BASELINES
# Method groups `--methods` accepts besides single names.
METHOD_GROUPS = {"issue8": ISSUE8, "allocation": ALLOCATION + DISTILLED}
METHOD_LABELS = {m: spec.label for m, spec in METHOD_TABLE.items()}
DATASETS = ("fashion_mnist", "cifar10")
CIFAR10_DEFAULT = "~/.keras/datasets/cifar-10-batches-py"
DEFAULT_NETWORKS = {"fashion_mnist": "vgg8:0.5,resnet20:1", "cifar10": "vgg8:1"}
# Settings that change results: an --out folder holds one setting.
SETTING_KEYS = ("dataset", "spec", "leave_dense", "train_size", "validation_size", "test_size",
                "dense_epochs", "epochs", "batch", "lr", "finetune_lr", "prune_fraction",
                "frequency", "temperature", "gl_lambda", "bn_recalibration", "distill_weight",
                "distill_temperature")


# ---------------------------------------------------------------------------- arguments

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="results folder (results.json, cache/, md, png)")
  p.add_argument("--dataset", default="fashion_mnist", choices=DATASETS)
  p.add_argument("--data", default=None,
                 help="dataset folder: Fashion-MNIST IDX files (default: Debian's), or CIFAR-10 "
                      f"'cifar-10-batches-py' (default {CIFAR10_DEFAULT})")
  p.add_argument("--networks", default=None,
                 help="comma list of zoo name:width (default fashion_mnist: "
                      f"{DEFAULT_NETWORKS['fashion_mnist']}; cifar10: {DEFAULT_NETWORKS['cifar10']})")
  p.add_argument("--methods", default="issue8",
                 help=f"comma list of {', '.join(METHODS)}, or the groups "
                      f"{', '.join(f'{g} ({len(m)} rows)' for g, m in METHOD_GROUPS.items())}")
  p.add_argument("--reductions", default="0.5,0.6,0.72,0.8", help="target crossbar reductions")
  p.add_argument("--seeds", default="0,1", help="seeds (model init, data subset, shuffling, RPP)")
  p.add_argument("--multi-seed-reductions", default="0.72",
                 help="seeds after the first run only at these reductions ('all': every one)")
  p.add_argument("--leave-dense", default="first-conv,classifier",
                 help="layers never pruned (nor counted): comma list of layer names and/or "
                      "'first-conv' (the first convolution) and 'classifier' (the last Dense)")
  p.add_argument("--regrowth-reductions", default="0.72",
                 help="rpp-crossbar-st (the regrowth comparison) runs only at these reductions "
                      "('all': every one)")
  p.add_argument("--spec", default="72x16", help="CrossbarSpec string, preset name or JSON file")
  p.add_argument("--train-size", type=int, default=10000, help="training images (random subset)")
  p.add_argument("--validation-size", type=int, default=2000,
                 help="validation images, carved from the training images outside the training "
                      "subset: sensitivity curves and the choice of the best allocation read "
                      "them, never the test set")
  p.add_argument("--test-size", type=int, default=0, help="test images (0: the whole test set)")
  p.add_argument("--dense-epochs", type=int, default=8, help="epochs of the dense baseline")
  p.add_argument("--epochs", type=int, default=2, help="post-baseline epochs of every method")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, dense baseline")
  p.add_argument("--finetune-lr", type=float, default=5e-4, help="Adam learning rate, methods")
  p.add_argument("--prune-fraction", type=float, default=0.25,
                 help="share of the method epochs over which the budget falls (then frozen)")
  p.add_argument("--frequency", type=int, default=10, help="mask update every N steps")
  p.add_argument("--temperature", type=float, default=1.0, help="initial RPP temperature")
  p.add_argument("--gl-lambda", type=float, default=1e-3, help="group-lasso coefficient")
  p.add_argument("--distill-weight", type=float, default=0.5,
                 help="alloc-best-distill: weight of the soft-target term (DistillationLoss)")
  p.add_argument("--distill-temperature", type=float, default=4.0,
                 help="alloc-best-distill: distillation temperature")
  p.add_argument("--no-finetuned-reference", action="store_true",
                 help="skip (for now) the 'dense + the same epochs' reference; a later run "
                      "without this flag adds it")
  p.add_argument("--bn-recalibration", type=int, default=5000,
                 help="before every evaluation, re-estimate BatchNorm statistics on this many "
                      "training images (forward passes only, all models alike; 0: off)")
  p.add_argument("--quick", action="store_true",
                 help="tiny setting for tests: 300 training / 500 test images, vgg8:0.25, "
                      "1 epoch, reduction 0.72, seed 0 (explicit options still win)")
  p.add_argument("--render-only", action="store_true",
                 help="only rewrite the markdown and plot from results.json")
  p.add_argument("--cpu", action="store_true",
                 help="hide GPUs from TensorFlow (CUDA_VISIBLE_DEVICES=''), as the published "
                      "numbers were measured; takes effect only if given before TensorFlow is "
                      "imported, i.e. on the command line")
  p.add_argument("--tf-log", action="store_true", help="show TensorFlow's C++ log lines")
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  given = {a.split("=")[0] for a in argv if a.startswith("--")}
  if args.quick:
    quick = {"--train-size": ("train_size", 300), "--test-size": ("test_size", 500),
             "--validation-size": ("validation_size", 200),
             "--networks": ("networks", "vgg8:0.25"), "--dense-epochs": ("dense_epochs", 1),
             "--epochs": ("epochs", 1), "--reductions": ("reductions", "0.72"),
             "--seeds": ("seeds", "0"), "--frequency": ("frequency", 2)}
    for flag, (field, value) in quick.items():
      if flag not in given:
        setattr(args, field, value)
  if args.networks is None:
    args.networks = DEFAULT_NETWORKS[args.dataset]
  args.network_list = [_network(n) for n in args.networks.split(",") if n]
  args.method_list = []
  for m in [m for m in args.methods.split(",") if m]:
    args.method_list += [x for x in METHOD_GROUPS.get(m, (m,)) if x not in args.method_list]
  for m in args.method_list:
    if m not in METHODS:
      p.error(f"--methods: {m!r} is unknown; valid: {', '.join(METHODS)}")
  args.reduction_list = [_float("--reductions", r) for r in args.reductions.split(",") if r]
  for r in args.reduction_list:
    if not 0.0 < r < 1.0:
      p.error(f"--reductions: {r} is invalid; valid: 0 < reduction < 1")
  args.seed_list = [int(s) for s in args.seeds.split(",") if s]
  if args.multi_seed_reductions == "all":
    args.multi_list = list(args.reduction_list)
  else:
    args.multi_list = [_float("--multi-seed-reductions", r)
                       for r in args.multi_seed_reductions.split(",") if r]
  args.regrowth_list = (list(args.reduction_list) if args.regrowth_reductions == "all" else
                        [_float("--regrowth-reductions", r)
                         for r in args.regrowth_reductions.split(",") if r])
  for flag, value, low in (("--train-size", args.train_size, 1), ("--epochs", args.epochs, 1),
                           ("--dense-epochs", args.dense_epochs, 1), ("--batch", args.batch, 1),
                           ("--frequency", args.frequency, 1), ("--test-size", args.test_size, 0),
                           ("--validation-size", args.validation_size, 1)):
    if value < low:
      p.error(f"{flag}={value} is invalid; valid: an integer >= {low}")
  if not 0.0 < args.prune_fraction <= 1.0:
    p.error(f"--prune-fraction={args.prune_fraction} is invalid; valid: 0 < f <= 1")
  if not 0.0 <= args.distill_weight <= 1.0:
    p.error(f"--distill-weight={args.distill_weight} is invalid; valid: 0 <= w <= 1")
  if not args.distill_temperature > 0:
    p.error(f"--distill-temperature={args.distill_temperature} is invalid; valid: > 0")
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


def settings(args: argparse.Namespace) -> dict[str, Any]:
  return {k: getattr(args, k) for k in SETTING_KEYS}


# ---------------------------------------------------------------------------- data

def load_cifar10(path: str | None):
  """CIFAR-10 from a local `cifar-10-batches-py` folder (`xbar_tfmot.datasets`); never downloads."""
  from xbar_tfmot.app.datasets import load_cifar10 as load
  try:
    return load(path)
  except FileNotFoundError as e:
    raise SystemExit(f"--dataset cifar10: {e} Pass --data that folder.") from None


def load_data(args, seed: int):
  """`(train, validation, test)` pairs: the training subset is the first `--train-size` of a
  seeded permutation of the training images, the validation split the next
  `--validation-size` (disjoint from it; adding the split leaves the training subset as it was)."""
  if args.dataset == "cifar10":
    (x, y), (xt, yt) = load_cifar10(args.data)
  else:
    from xbar_tfmot.app.datasets import load_fashion_mnist
    (x, y), (xt, yt) = load_fashion_mnist(args.data)
  if args.train_size + args.validation_size > len(y):
    raise SystemExit(f"--train-size {args.train_size} + --validation-size {args.validation_size} "
                     f"exceed the {len(y)} training images; valid: a sum <= {len(y)}")
  order = np.random.default_rng(seed).permutation(len(y))
  train, held = order[: args.train_size], order[args.train_size:][: args.validation_size]
  if args.test_size:
    xt, yt = xt[: args.test_size], yt[: args.test_size]
  return (x[train], y[train]), (x[held], y[held]), (xt, yt)


# ---------------------------------------------------------------------------- models

class Bench:
  """Everything one (network, seed) needs: data, the dense baseline, spec, pruned layers."""

  def __init__(self, args, network: tuple[str, float], seed: int, log: Callable[[str], None]):
    import tf_keras as keras

    import xbar_tfmot as xt
    from xbar_tfmot.app import training
    from xbar_tfmot.models import introspection
    self.keras, self.xt, self.introspection, self.training = keras, xt, introspection, training
    self.args, self.network, self.seed, self.log = args, network, seed, log
    self.spec = spec_of(args.spec)
    (self.x, self.y), (self.x_val, self.y_val), (self.x_test, self.y_test) = load_data(args, seed)
    self.steps_per_epoch = -(-len(self.y) // args.batch)
    self.total_steps = self.steps_per_epoch * args.epochs
    self.end_step = max(1, int(round(self.total_steps * args.prune_fraction)))
    self.cache = pathlib.Path(args.out) / "cache"
    self.cache.mkdir(parents=True, exist_ok=True)
    self.tag = f"{args.dataset}_{network[0]}_w{network[1]:g}_s{seed}"
    self._dense = None
    self._gl = None
    self._reordered: dict[float, tuple] = {}  # reduction: (reordered model, seconds, skipped)
    self._curves: dict[float, dict] = {}  # reduction: sensitivity_curves result
    self.choose: Callable[[float], tuple[str, dict]] | None = None  # set by main()

  # -- building blocks
  def build(self):
    from xbar_tfmot.app.zoo import build_model
    return build_model(self.network[0], self.x.shape[1:], 10, self.network[1], "tf_keras",
                       seed=self.seed)

  def compile(self, model, lr: float, epochs: int):
    """Adam with the learning rate on a cosine decay to 0 over `epochs` epochs of steps."""
    schedule = self.keras.optimizers.schedules.CosineDecay(
        lr, max(1, epochs * self.steps_per_epoch))
    self.training.compile_classifier(model, self.keras, schedule)
    return model

  def copy(self, model):
    c = self.keras.models.clone_model(model)
    c.set_weights(model.get_weights())
    return c

  def fit(self, model, epochs: int, callbacks=()) -> None:
    self.training.fit_seeded(model, self.x, self.y, self.keras, epochs, self.args.batch,
                             self.seed, callbacks)

  def recalibrate(self, model) -> None:
    """Re-estimates BatchNorm moving statistics as the average over `--bn-recalibration`
    training images (batches of 500, forward only; no weight changes).

    Pruning with a short fine-tuning leaves the moving averages far from the pruned network's
    statistics (channels with tiny variance amplify the error): without this, ResNet20 at 72%
    scored 10-30% where batch statistics gave about 80%.
    """
    self.xt.recalibrate_batchnorm(model, self.x[:self.args.bn_recalibration], batch_size=500)

  def accuracy(self, model, recalibrate: bool = True) -> float:
    if recalibrate and self.args.bn_recalibration:
      self.recalibrate(model)
    return self.training.accuracy(model, self.x_test, self.y_test, batch_size=1000)

  def val_accuracy(self, model) -> float:
    """Accuracy on the validation split (call after `accuracy`, which re-estimates BN)."""
    return self.training.accuracy(model, self.x_val, self.y_val, batch_size=1000)

  def dense_names(self, model) -> list[str]:
    """Mapped layers left dense by `--leave-dense`."""
    mapped = [l for l in self.introspection.iter_layers(model) if self.introspection.is_mapped(l)]
    out = []
    for item in [i for i in self.args.leave_dense.split(",") if i]:
      if item == "first-conv":
        out += [l.name for l in mapped if self.introspection.layer_kind(l) != "Dense"][:1]
      elif item == "classifier":
        out += [l.name for l in mapped if self.introspection.layer_kind(l) == "Dense"][-1:]
      elif item in [l.name for l in mapped]:
        out.append(item)
      else:
        raise SystemExit(f"--leave-dense: {item!r} is not a mapped layer of {model.name}; valid: "
                         f"first-conv, classifier, {', '.join(l.name for l in mapped)}")
    return out

  def policy(self, model):
    """The `CrossbarPolicy` of every method: `--leave-dense` layers dense, the rest at the
    target reduction each (per layer)."""
    return self.xt.CrossbarPolicy(leave_dense=[re.escape(n) for n in self.dense_names(model)])

  def budgets(self, model, reduction: float) -> dict[str, int]:
    """`{pruned layer: crossbar budget}` at `reduction`, from the policy."""
    mapped = [l for l in self.introspection.iter_layers(model) if self.introspection.is_mapped(l)]
    plan = self.policy(model).plan([self.introspection.geometry_of(l, self.spec) for l in mapped],
                                   reduction)
    return {n: b for n, b in plan.items() if b is not None}

  def pruned_names(self, model) -> list[str]:
    """Mapped layers that every method prunes (all but `--leave-dense`)."""
    return list(self.budgets(model, 0.5))

  def geometries(self, model) -> dict[str, Any]:
    return {n: self.introspection.geometry_of(model.get_layer(n), self.spec)
            for n in self.pruned_names(model)}

  def counts(self, model, names: list[str] | None = None) -> dict[str, int]:
    """Crossbar report counts summed over `names`, or over every mapped layer of the model
    (what a chip holds, the layers left dense included) when `names` is None."""
    report = self.xt.crossbar_report(model, self.spec)
    rows = {r.name: r.counts for r in report.mapped}
    names = list(rows) if names is None else names
    return {f: int(sum(getattr(rows[n], f) for n in names))
            for f in ("dense", "blocks", "packed", "nonzero_weights")}

  def layer_counts(self, model) -> dict[str, int]:
    """`{mapped layer: packed crossbars}`: where an allocation put the budget."""
    return {r.name: int(r.counts.packed) for r in self.xt.crossbar_report(model, self.spec).mapped}

  def model_budget(self, model, policy, reduction: float) -> int:
    """Crossbars the whole model may hold under `policy` at `reduction`: the planned budgets
    plus the dense count of every layer left dense."""
    mapped = [l for l in self.introspection.iter_layers(model) if self.introspection.is_mapped(l)]
    geoms = [self.introspection.geometry_of(l, self.spec) for l in mapped]
    plan = policy.plan(geoms, reduction)
    return int(sum(g.dense_crossbars if plan[g.name] is None else plan[g.name] for g in geoms))

  # -- cached models
  def dense(self):
    """The dense baseline (trained once, cached), and its record."""
    if self._dense is None:
      path = self.cache / f"{self.tag}_dense.weights.h5"
      record_path = self.cache / f"{self.tag}_dense.json"
      model = self.compile(self.build(), self.args.lr, self.args.dense_epochs)
      if path.exists() and record_path.exists():
        model.load_weights(str(path))
        record = json.loads(record_path.read_text())
      else:
        start = time.perf_counter()
        self.fit(model, self.args.dense_epochs)
        record = {"accuracy": self.accuracy(self.copy(model)),
                  "seconds": time.perf_counter() - start}
        model.save_weights(str(path))
        record_path.write_text(json.dumps(record))
      if record.get("bn_recalibration") != self.args.bn_recalibration:
        record.update(accuracy=self.accuracy(self.copy(model)),
                      bn_recalibration=self.args.bn_recalibration, finetune_epochs=None)
      if (record.get("finetune_epochs") != self.args.epochs  # the dense + method epochs line
          and not self.args.no_finetuned_reference):
        tuned = self.compile(self.copy(model), self.args.finetune_lr, self.args.epochs)
        start = time.perf_counter()
        self.fit(tuned, self.args.epochs)
        record.update(accuracy_finetuned=self.accuracy(tuned), finetune_epochs=self.args.epochs,
                      seconds_finetuned=time.perf_counter() - start)
        record_path.write_text(json.dumps(record))
        self.log(f"{self.tag}: dense {record['accuracy']:.4f} ({record['seconds']:.0f} s), + "
                 f"{self.args.epochs} epochs {record['accuracy_finetuned']:.4f}")
      if "val_accuracy" not in record:
        probe = self.copy(model)
        self.accuracy(probe)
        record["val_accuracy"] = self.val_accuracy(probe)
        record_path.write_text(json.dumps(record))
      names = self.pruned_names(model)
      record.update(counts=self.counts(model), counts_pruned=self.counts(model, names),
                    pruned_layers=names)
      self._dense = (model, record)
    return self._dense


def spec_of(text: str):
  """`--spec`: a preset name, a JSON file or `ROWSxCOLS[,field=value...]` (`parse_spec`)."""
  from xbar_tfmot.core.spec import parse_spec
  try:
    return parse_spec(text)
  except (OSError, ValueError, TypeError) as e:
    raise SystemExit(f"--spec: {e}") from None


# ---------------------------------------------------------------------------- methods

def run_lgd(b: Bench, reduction: float, granularity: str, projection: str, regrowth: str,
            reorder: bool):
  xt = b.xt
  base, _ = b.dense()
  extra: dict[str, Any] = {}
  model = b.copy(base)
  names = b.pruned_names(model)
  if reorder:
    start = time.perf_counter()
    model, res = xt.reorder_model(model, b.spec, {n: reduction for n in names}, granularity,
                                  materialize=True, seed=b.seed)
    extra.update(reorder_seconds=time.perf_counter() - start, reorder_skipped=res.skipped)
  pruned = xt.prune_crossbar(
      model, spec=b.spec, granularity=granularity, projection=projection, regrowth=regrowth,
      seed=b.seed, temperature=b.args.temperature,
      policy=b.policy(model),
      schedule=xt.CrossbarPolynomialDecay(final_reduction=reduction, begin_step=0,
                                          end_step=b.end_step, frequency=b.args.frequency))
  wrapped = sorted(l.layer.name for l in pruned.layers if type(l).__name__ == "CrossbarPrune")
  b.compile(pruned, b.args.finetune_lr, b.args.epochs)
  b.fit(pruned, b.args.epochs, [xt.UpdateCrossbarPruning()])
  if wrapped != sorted(names):
    raise RuntimeError(f"prune_crossbar wrapped {wrapped}; the benchmark prunes {sorted(names)}")
  return xt.strip_crossbar_pruning(pruned), extra


def reordered(b: Bench, reduction: float):
  """The dense baseline reordered for column grain at `reduction` in every pruned layer
  (`reorder_model`, materialised; computed once per reduction and shared by the allocation
  rows, so they differ only in the allocation): `(model, seconds, skipped layers)`."""
  if reduction not in b._reordered:
    base, _ = b.dense()
    names = b.pruned_names(base)
    start = time.perf_counter()
    model, res = b.xt.reorder_model(b.copy(base), b.spec, {n: reduction for n in names},
                                    "column", materialize=True, seed=b.seed)
    b._reordered[reduction] = (model, time.perf_counter() - start, res.skipped)
  return b._reordered[reduction]


def equal_count_reduction(b: Bench, model, reduction: float) -> float:
  """The per-layer reduction at which the whole model holds no more crossbars than the
  model-wide budget `max(1, round((1 - reduction) * D))` of the global modes (`D`: every
  mapped layer): per-layer mode then competes at the same chip size. Bisection on the plan."""
  target = b.xt.crossbar_budget(b.counts(model)["dense"], reduction)
  policy = b.policy(model)
  low, high = reduction, 0.999
  if b.model_budget(model, policy, low) <= target:
    return low
  for _ in range(40):
    mid = (low + high) / 2
    low, high = (mid, high) if b.model_budget(model, policy, mid) > target else (low, mid)
  return high


def allocation_policy(b: Bench, model, reduction: float, mode: str, score: str):
  """`(CrossbarPolicy, schedule reduction, extra fields)` of an allocation row."""
  dense = [re.escape(n) for n in b.dense_names(model)]
  if mode == "per_layer":
    r = equal_count_reduction(b, model, reduction)
    return b.xt.CrossbarPolicy(leave_dense=dense), r, {"per_layer_reduction": r}
  if mode != "sensitivity":
    return b.xt.CrossbarPolicy(leave_dense=dense, mode=mode, score=score), reduction, {}
  if reduction not in b._curves:
    b.compile(model, b.args.finetune_lr, b.args.epochs)  # the curves read the compiled loss
    b._curves[reduction] = b.xt.sensitivity_curves(model, b.spec, (b.x_val, b.y_val), "column")
    b.log(f"{b.tag}: sensitivity curves at {reduction:g}: "
          f"{b._curves[reduction]['evaluations']} evaluations on {len(b.y_val)} validation "
          f"images, {b._curves[reduction]['seconds']:.0f} s")
  m = b._curves[reduction]
  return (b.xt.CrossbarPolicy(leave_dense=dense, mode="sensitivity", curves=m["curves"]),
          reduction, {"curves_evaluations": m["evaluations"], "curves_seconds": m["seconds"],
                      "curves": m["curves"]})


def run_allocation(b: Bench, reduction: float, mode: str, score: str, distill: bool = False):
  """LGD-RPP column grain on the reordered baseline, with `CrossbarPolicy(mode, score)`;
  `distill`: trained against the dense model's logits (`teacher_targets`, `DistillationLoss`)."""
  xt = b.xt
  source, reorder_seconds, skipped = reordered(b, reduction)
  model = b.copy(source)
  policy, r, extra = allocation_policy(b, model, reduction, mode, score)
  extra.update(mode=mode, score=score if mode == "global_score" else None,
               reorder_seconds=reorder_seconds, reorder_skipped=skipped,
               budget=b.model_budget(model, policy, r))
  pruned = xt.prune_crossbar(
      model, spec=b.spec, granularity="column", projection="rpp", regrowth="reset",
      seed=b.seed, temperature=b.args.temperature, policy=policy,
      schedule=xt.CrossbarPolynomialDecay(final_reduction=r, begin_step=0, end_step=b.end_step,
                                          frequency=b.args.frequency))
  y = b.y
  if distill:
    y = xt.teacher_targets(b.dense()[0], b.x, b.y, batch_size=1000)
    extra.update(distill_weight=b.args.distill_weight,
                 distill_temperature=b.args.distill_temperature)
  schedule = b.keras.optimizers.schedules.CosineDecay(
      b.args.finetune_lr, max(1, b.args.epochs * b.steps_per_epoch))
  b.training.compile_classifier(
      pruned, b.keras, schedule,
      distillation=(b.args.distill_temperature, b.args.distill_weight) if distill else None)
  saliency = None
  if mode == "global_score" and score == "saliency":  # 4 training batches, as xbar-prune
    saliency = [(b.x[i:i + b.args.batch], y[i:i + b.args.batch])
                for i in range(0, min(len(b.x), 4 * b.args.batch), b.args.batch)]
  b.training.fit_seeded(pruned, b.x, y, b.keras, b.args.epochs, b.args.batch, b.seed,
                        [xt.UpdateCrossbarPruning(allocation_data=saliency)])
  return xt.strip_crossbar_pruning(pruned), extra


def run_best_distilled(b: Bench, reduction: float):
  """The allocation row with the best mean validation accuracy at this (network, reduction),
  over the seeds finished so far, run again with distillation from the dense model."""
  if b.choose is None:
    raise RuntimeError("alloc-best-distill needs Bench.choose (set by main) to read the results")
  best, by = b.choose(reduction)
  mode, score = ALLOC_MODES[best]
  b.log(f"{b.tag}: best allocation at {reduction:g} on validation: {best} "
        f"({', '.join(f'{m} {v:.4f}' for m, v in by.items())})")
  model, extra = run_allocation(b, reduction, mode, score, distill=True)
  return model, {**extra, "chosen": best, "validation_means": by}


# layer-by-layer's stop rules: the library defaults but for the grid, which climbs to the target
# in LBL_GRID_STEPS steps (the default 0.1 grid would train up to 9 epochs a layer)
LBL_MAX_ACCURACY_DROP, LBL_CROSSBAR_THRESHOLD, LBL_GRID_STEPS = 0.02, 1, 3


def run_layer_by_layer(b: Bench, reduction: float):
  """The paper's procedure on the reordered baseline, column grain: each pruned layer in turn,
  up to `reduction` (`max_reduction`) unless the validation accuracy (BatchNorm re-estimated)
  falls more than `LBL_MAX_ACCURACY_DROP` below the start; one epoch a step, one epoch of
  fine-tuning a layer."""
  source, reorder_seconds, skipped = reordered(b, reduction)
  rules = b.xt.StopRules(max_accuracy_drop=LBL_MAX_ACCURACY_DROP, max_reduction=reduction,
                         crossbar_threshold=LBL_CROSSBAR_THRESHOLD,
                         step=reduction / LBL_GRID_STEPS)
  epochs = []

  def train(model, n: int, *, callbacks, seed: int, finetune: bool) -> None:
    b.compile(model, b.args.finetune_lr, n)
    b.training.fit_seeded(model, b.x, b.y, b.keras, n, b.args.batch, seed, callbacks)
    epochs.append(n)

  def validate(model) -> float:
    b.recalibrate(model)
    return b.val_accuracy(model)

  model, outcomes = b.xt.prune_layer_by_layer(
      b.copy(source), b.spec, granularity="column", rules=rules, train=train,
      validate=validate, steps_per_epoch=b.steps_per_epoch,
      leave_dense=[re.escape(n) for n in b.dense_names(source)], ramp=b.args.prune_fraction,
      updates_per_epoch=max(1, b.steps_per_epoch // b.args.frequency),
      temperature=b.args.temperature, seed=b.seed, log=b.log)
  return model, {"reorder_seconds": reorder_seconds, "reorder_skipped": skipped,
                 "epochs_trained": sum(epochs), "outcomes": [o.to_dict() for o in outcomes],
                 "rules": {"max_accuracy_drop": rules.max_accuracy_drop,
                           "max_reduction": rules.max_reduction,
                           "crossbar_threshold": rules.crossbar_threshold, "step": rules.step}}


def exact_masks(b: Bench, model, reduction: float) -> dict[str, np.ndarray]:
  """Crossbar-grain exact projection of each pruned layer's kernel at its budget."""
  return b.xt.one_shot_masks(model, b.spec, b.policy(model), reduction, "crossbar")


def finetune_masked(b: Bench, model, masks: dict[str, np.ndarray], epochs: int):
  from xbar_tfmot.pruning.callbacks import fixed_masks
  b.compile(model, b.args.finetune_lr, epochs)
  b.fit(model, epochs, fixed_masks(model, masks))
  b.xt.apply_masks(model, masks)  # exact zeros for the count, whatever the last step did
  return model


def run_oneshot(b: Bench, reduction: float):
  model = b.copy(b.dense()[0])
  return finetune_masked(b, model, exact_masks(b, model, reduction), b.args.epochs), {}


def gl_epochs(args) -> tuple[int, int]:
  """(regularised epochs, fine-tuning epochs) of group lasso: half and half of `--epochs`."""
  reg = int(math.ceil(args.epochs / 2))
  return reg, args.epochs - reg


def group_lasso_model(b: Bench):
  """The dense baseline trained `gl_epochs[0]` epochs with the block group-lasso term (cached)."""
  if b._gl is None:
    import tensorflow as tf
    path = b.cache / f"{b.tag}_grouplasso_l{b.args.gl_lambda:g}_e{gl_epochs(b.args)[0]}.weights.h5"
    base, _ = b.dense()
    model = b.copy(base)
    if path.exists():
      b.compile(model, b.args.finetune_lr, gl_epochs(b.args)[0])
      model.load_weights(str(path))
      seconds = 0.0
    else:
      geoms = [(model.get_layer(n).kernel, g) for n, g in b.geometries(model).items()]
      lam = b.args.gl_lambda

      def penalty():
        return lam * tf.add_n([tf.reduce_sum(tf.sqrt(g.block_energy(k) + 1e-12))
                               for k, g in geoms])

      model.add_loss(penalty)
      b.compile(model, b.args.finetune_lr, gl_epochs(b.args)[0])
      start = time.perf_counter()
      b.fit(model, gl_epochs(b.args)[0])
      seconds = time.perf_counter() - start
      model.save_weights(str(path))
      b.log(f"{b.tag}: group-lasso phase {seconds:.0f} s")
    plain = b.copy(model)  # without the penalty for the fine-tuning phase
    b._gl = (plain, seconds)
  return b._gl


def run_group_lasso(b: Bench, reduction: float):
  trained, reg_seconds = group_lasso_model(b)
  model = b.copy(trained)
  masks = exact_masks(b, model, reduction)
  kept = {n: float(np.sum(np.square(model.get_layer(n).kernel.numpy() * m))
                   / max(1e-30, np.sum(np.square(model.get_layer(n).kernel.numpy()))))
          for n, m in masks.items()}
  model = finetune_masked(b, model, masks, gl_epochs(b.args)[1])
  return model, {"regularised_seconds": reg_seconds, "kept_energy_at_threshold": kept,
                 "gl_lambda": b.args.gl_lambda, "gl_epochs": list(gl_epochs(b.args))}


def run_tfmot(b: Bench, reduction: float):
  import tensorflow_model_optimization as tfmot
  base, _ = b.dense()
  model = b.copy(base)
  masks = exact_masks(b, model, reduction)
  sparsity = {n: float(1.0 - m.mean()) for n, m in masks.items()}
  sk = tfmot.sparsity.keras

  def wrap(layer):
    if layer.name in sparsity and sparsity[layer.name] > 0:
      schedule = sk.PolynomialDecay(0.0, sparsity[layer.name], 0, b.end_step,
                                    frequency=b.args.frequency)
      return sk.prune_low_magnitude(layer, pruning_schedule=schedule)
    return layer

  pruned = b.keras.models.clone_model(model, clone_function=wrap)
  _copy_into_wrapped(model, pruned)
  b.compile(pruned, b.args.finetune_lr, b.args.epochs)
  b.fit(pruned, b.args.epochs, [sk.UpdatePruningStep()])
  return sk.strip_pruning(pruned), {"target_sparsity": sparsity}


def _copy_into_wrapped(source, wrapped) -> None:
  """Copies the weights of `source` into `wrapped` layer by layer (wrappers add mask vars)."""
  from xbar_tfmot.models import introspection
  for layer in wrapped.layers:
    inner = introspection.unwrap(layer)
    src = source.get_layer(inner.name)
    for w, v in zip(inner.weights, src.weights):
      w.assign(v)


def run_method(b: Bench, method: str, reduction: float):
  if method not in METHOD_TABLE:
    raise ValueError(f"--methods: {method!r} is unknown; valid: {', '.join(METHODS)}")
  return METHOD_TABLE[method].run(b, reduction)


# ---------------------------------------------------------------------------- results file

class Results:
  """`<out>/results.json`: setting, per-(network, seed) baselines and finished cells."""

  def __init__(self, out: pathlib.Path, args):
    self.path = out / "results.json"
    self.setting = settings(args)
    if self.path.exists():
      self.data = json.loads(self.path.read_text())
      old = self.data.get("setting", {})
      diff = {k: (old.get(k), v) for k, v in self.setting.items() if old.get(k) != v}
      if diff and not args.render_only:
        raise SystemExit(
            f"--out {out} holds results of another setting ("
            + ", ".join(f"--{k.replace('_', '-')} {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            + "); use another --out or the same options.")
    else:
      self.data = {"setting": self.setting, "baselines": {}, "cells": []}

  @staticmethod
  def key(network, seed, method, reduction) -> str:
    return f"{network[0]}:{network[1]:g}|{seed}|{method}|{reduction:g}"

  def done(self) -> set[str]:
    self.reload()
    return {c["key"] for c in self.data["cells"]}

  def reload(self) -> None:
    """Reads the cells other runs on the same `--out` added since (runs may share a folder
    if they train different (network, seed) pairs: each cell is added under a file lock)."""
    if self.path.exists():
      with self._lock():
        disk = json.loads(self.path.read_text())
      known = {c["key"] for c in self.data["cells"]}
      self.data["cells"] += [c for c in disk["cells"] if c["key"] not in known]
      self.data["baselines"] = {**disk["baselines"], **self.data["baselines"]}

  def _lock(self):
    import contextlib
    import fcntl

    @contextlib.contextmanager
    def held():
      with open(self.path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
          yield
        finally:
          fcntl.flock(f, fcntl.LOCK_UN)
    return held()

  def add_cell(self, cell: dict) -> None:
    self.data["cells"].append(cell)
    self.save()

  def set_baseline(self, tag: str, record: dict) -> None:
    self.data["baselines"][tag] = record
    self.save()

  def save(self) -> None:
    """Merges what other runs wrote since, then writes (under the lock)."""
    from xbar_tfmot.app.training import write_json
    with self._lock():
      if self.path.exists():
        disk = json.loads(self.path.read_text())
        known = {c["key"] for c in self.data["cells"]}
        self.data["cells"] += [c for c in disk["cells"] if c["key"] not in known]
        self.data["baselines"] = {**disk["baselines"], **self.data["baselines"]}
      write_json(self.path, self.data, sort_keys=False)


# ---------------------------------------------------------------------------- rendering


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
  if len(values) == 1:
    return f"{100 * values[0]:.2f}"
  return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def markdown(data: dict, command: str) -> str:
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
      f"{'full' if not s['test_size'] else s['test_size']}; crossbar `{s['spec']}`; dense "
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
        row.append(f"{_fmt(slot['acc'])} ({'/'.join(map(str, used))}/{slot['dense']}, "
                   f"{1 - np.mean(slot['used']) / slot['dense']:.0%} fewer"
                   f"{', seeds ' + ','.join(map(str, slot['seeds'])) if len(slot['seeds']) > 1 else ''})")
      lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(row) + " |")
    lines.append("")
    lines += validation_table(summary[net], reductions)
  lines += reading(data, summary, dense)
  lines += allocation_reading(data, summary)
  return "\n".join(lines) + "\n"


def validation_table(summary: dict, reductions: list[float]) -> list[str]:
  """Validation accuracy of the allocation rows (what chooses the best), seconds per cell."""
  rows = [m for m in ALLOCATION + DISTILLED + KD + PROCEDURE if m in summary]
  if not rows:
    return []
  lines = ["Validation accuracy in % (mean over seeds; chooses A6's allocation) / seconds per "
           "cell (mean):", "",
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
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  summary, dense = summarise(data), dense_lines(data)
  nets = sorted(summary)
  if not nets:
    return
  fig, axes = plt.subplots(1, len(nets), figsize=(6.5 * len(nets), 4.8), squeeze=False)
  for ax, net in zip(axes[0], nets):
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
                  label=METHOD_LABELS[method], markersize=5)
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
  for ax in axes[0]:  # each panel has its own rows
    ax.legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def render(out: pathlib.Path, data: dict, command: str) -> None:
  (out / "bench_quality.md").write_text(markdown(data, command))
  plot(data, out / "bench_quality.png")


# ---------------------------------------------------------------------------- main

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


def plan(args) -> list[tuple[tuple[str, float], int, str, float]]:
  """Cells in run order: first seed everywhere, then the other seeds at the multi-seed cuts;
  the distilled rows last (they choose among the finished allocation rows)."""
  cells = []
  for i, seed in enumerate(args.seed_list):
    for net in args.network_list:
      for r in args.reduction_list:
        if i and not any(abs(r - m) < 1e-9 for m in args.multi_list):
          continue
        for method in args.method_list:
          if method == "rpp-crossbar-st" and not any(abs(r - m) < 1e-9
                                                     for m in args.regrowth_list):
            continue
          cells.append((net, seed, method, r))
  return sorted(cells, key=lambda c: c[2] in DISTILLED)


def command_line(argv: list[str] | None) -> str:
  argv = sys.argv[1:] if argv is None else argv
  return " ".join([".venv/bin/python tools/bench_quality.py"] + argv)


def main(argv: list[str] | None = None) -> dict:
  if "--cpu" in (sys.argv[1:] if argv is None else argv):
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything imports TensorFlow
  if "--tf-log" not in (sys.argv[1:] if argv is None else argv):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = Results(out, args)
  command = command_line(argv)
  if args.render_only:
    render(out, results.data, results.data.get("command", command))
    print(f"wrote {out / 'bench_quality.md'} and {out / 'bench_quality.png'}")
    return results.data
  if args.dataset == "cifar10":
    load_cifar10(args.data)  # fail early, naming the missing path

  def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

  import tensorflow as tf
  log(f"tf {tf.__version__}, python {platform.python_version()}; out {out}; "
      f"{len(plan(args))} cells planned, {len(results.done())} done")
  results.data["command"] = command  # the latest invocation
  benches: dict = {}
  t0 = time.perf_counter()
  for net, seed, method, r in plan(args):
    key = Results.key(net, seed, method, r)
    if key in results.done():
      continue
    if (net, seed) not in benches:
      benches.clear()  # one (network, seed) in memory at a time
      benches[(net, seed)] = Bench(args, net, seed, log)
    b = benches[(net, seed)]
    b.choose = lambda reduction, net=net: (results.reload(),
                                           choose_allocation(results.data, net, reduction))[1]
    dense_model, record = b.dense()
    baseline = {**record, "network": f"{net[0]}:{net[1]:g}", "seed": seed}
    if results.data["baselines"].get(b.tag) != baseline:
      results.set_baseline(b.tag, baseline)
    start = time.perf_counter()
    model, extra = run_method(b, method, r)
    seconds = time.perf_counter() - start
    names = record["pruned_layers"]
    counts = b.counts(model)
    budget = extra.pop("budget", None) or b.model_budget(dense_model, b.policy(dense_model), r)
    cell = {"key": key, "network": f"{net[0]}:{net[1]:g}", "seed": seed, "method": method,
            "reduction": r, "accuracy": b.accuracy(model), "val_accuracy": b.val_accuracy(model),
            "counted": "model", "counts": counts, "counts_pruned": b.counts(model, names),
            "layers": b.layer_counts(model), "budget": budget,
            "reduction_measured": 1 - counts["packed"] / counts["dense"],
            "seconds": seconds, **extra}
    results.add_cell(cell)
    log(f"{key}: acc {cell['accuracy']:.4f}, crossbars {counts['packed']}/{counts['dense']} "
        f"(blocks {counts['blocks']}, budget {cell['budget']}), {seconds:.0f} s")
  results.data["seconds_this_run"] = time.perf_counter() - t0
  results.save()
  render(out, results.data, results.data.get("command", command))
  log(f"done in {time.perf_counter() - t0:.0f} s; wrote {out / 'bench_quality.md'}, "
      f"{out / 'bench_quality.png'}")
  return results.data


if __name__ == "__main__":
  main()
