"""The quality benchmark's data and dense baseline for one (network, seed), and its counting.

Part of `tools/bench_quality.py`: every method of `quality_methods.py` starts from the same
cached dense baseline, prunes the same layers (all mapped layers but `--leave-dense`) and is
evaluated on the same splits, with BatchNorm statistics re-estimated first.
"""

from __future__ import annotations

import json
import pathlib
import re
import time
from typing import Any, Callable

import numpy as np


def load_cifar10(path: str | None) -> tuple:
  """CIFAR-10 from a local `cifar-10-batches-py` folder; never downloads."""
  from xbar_tfmot.app.datasets import load_cifar10 as load
  try:
    return load(path)
  except FileNotFoundError as e:
    raise SystemExit(f"--dataset cifar10: {e} Pass --data that folder.") from None


def load_data(args, seed: int) -> tuple:
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


def spec_of(text: str) -> Any:
  """`--spec`: a preset name, a JSON file or `ROWSxCOLS[,field=value...]` (`parse_spec`)."""
  from xbar_tfmot.core.spec import parse_spec
  try:
    return parse_spec(text)
  except (OSError, ValueError, TypeError) as e:
    raise SystemExit(f"--spec: {e}") from None


class Bench:
  """One (network, seed): data, the cached dense baseline, spec and pruned layers.

  `choose(reduction)` gives the allocation row validation picks and every row's mean
  (`quality_report.choose_allocation` on the results so far); only `alloc-best-distill` reads it.
  """

  def __init__(self, args, network: tuple[str, float], seed: int, log: Callable[[str], None],
               choose: Callable[[float], tuple[str, dict]] | None = None):
    import tf_keras as keras

    import xbar_tfmot as xt
    from xbar_tfmot.app import training
    from xbar_tfmot.models import introspection
    self.keras, self.xt, self.introspection, self.training = keras, xt, introspection, training
    self.args, self.network, self.seed, self.log, self.choose = args, network, seed, log, choose
    specs = dict(item.split("=", 1) for item in args.network_specs.split(",") if item.strip())
    self.spec = spec_of(specs.get(network[0], args.spec))
    (self.x, self.y), (self.x_val, self.y_val), (self.x_test, self.y_test) = load_data(args, seed)
    self.steps_per_epoch = -(-len(self.y) // args.batch)
    self.end_step = max(1, int(round(self.steps_per_epoch * args.epochs * args.prune_fraction)))
    self.cache = pathlib.Path(args.out) / "cache"
    self.cache.mkdir(parents=True, exist_ok=True)
    self.tag = f"{args.dataset}_{network[0]}_w{network[1]:g}_s{seed}" + (
        f"_xb{specs[network[0]]}" if network[0] in specs else "")
    self.memo: dict[Any, Any] = {}

  def remember(self, key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()` once per `key`: what several rows of this (network, seed) share (the dense
    baseline, the reordered baseline per reduction, sensitivity curves, group lasso)."""
    if key not in self.memo:
      self.memo[key] = compute()
    return self.memo[key]

  # -- training and evaluation, as `xbar-prune` does them (`xbar_tfmot.app.training`)
  def build(self):
    from xbar_tfmot.app.zoo import build_model
    return build_model(self.network[0], self.x.shape[1:], 10, self.network[1], "tf_keras",
                       seed=self.seed)

  def compile(self, model, lr: float, epochs: int,
              distillation: tuple[float, float] | None = None):
    """Adam with the learning rate on a cosine decay to 0 over `epochs` epochs of steps."""
    schedule = self.keras.optimizers.schedules.CosineDecay(
        lr, max(1, epochs * self.steps_per_epoch))
    self.training.compile_classifier(model, self.keras, schedule, distillation=distillation)
    return model

  def copy(self, model):
    c = self.keras.models.clone_model(model)
    c.set_weights(model.get_weights())
    return c

  def fit(self, model, epochs: int, callbacks=(), y=None) -> None:
    """`epochs` on the training subset, against `y` (default: its labels)."""
    self.training.fit_seeded(model, self.x, self.y if y is None else y, self.keras, epochs,
                             self.args.batch, self.seed, callbacks)

  def recalibrate(self, model) -> None:
    """Re-estimates BatchNorm moving statistics on `--bn-recalibration` training images.

    Pruning with a short fine-tuning leaves the moving averages far from the pruned network's
    statistics: without this, ResNet20 at 72% scored 10-30% where batch statistics gave 80%.
    """
    self.xt.recalibrate_batchnorm(model, self.x[:self.args.bn_recalibration], batch_size=500)

  def accuracy(self, model, recalibrate: bool = True) -> float:
    if recalibrate and self.args.bn_recalibration:
      self.recalibrate(model)
    return self.training.accuracy(model, self.x_test, self.y_test, batch_size=1000)

  def val_accuracy(self, model) -> float:
    """Accuracy on the validation split (call after `accuracy`, which re-estimates BN)."""
    return self.training.accuracy(model, self.x_val, self.y_val, batch_size=1000)

  # -- layers and budgets
  def geometries(self, model) -> list:
    """The `LayerGeometry` of every mapped layer, in model order."""
    return [self.introspection.geometry_of(l, self.spec)
            for l in self.introspection.iter_layers(model) if self.introspection.is_mapped(l)]

  def dense_names(self, model) -> list[str]:
    """Mapped layers left dense by `--leave-dense`."""
    geoms = self.geometries(model)
    names = [g.name for g in geoms]
    out = []
    for item in [i for i in self.args.leave_dense.split(",") if i]:
      if item == "first-conv":
        out += [g.name for g in geoms if g.kind != "Dense"][:1]
      elif item == "classifier":
        out += [g.name for g in geoms if g.kind == "Dense"][-1:]
      elif item in names:
        out.append(item)
      else:
        raise SystemExit(f"--leave-dense: {item!r} is not a mapped layer of {model.name}; valid: "
                         f"first-conv, classifier, {', '.join(names)}")
    return out

  def policy(self, model, **fields):
    """The `CrossbarPolicy` of every method, `--leave-dense` layers dense; `fields` (mode,
    score, curves) choose the allocation (default: the target reduction in every layer)."""
    return self.xt.CrossbarPolicy(leave_dense=[re.escape(n) for n in self.dense_names(model)],
                                  **fields)

  def pruned_names(self, model) -> list[str]:
    """Mapped layers that every method prunes (all but `--leave-dense`)."""
    plan = self.policy(model).plan(self.geometries(model), 0.5)
    return [n for n, budget in plan.items() if budget is not None]

  def model_budget(self, model, policy, reduction: float) -> int:
    """Crossbars the whole model may hold under `policy` at `reduction`: the planned budgets
    plus the dense count of every layer left dense."""
    geoms = self.geometries(model)
    plan = policy.plan(geoms, reduction)
    return int(sum(g.dense_crossbars if plan[g.name] is None else plan[g.name] for g in geoms))

  def counts(self, model, names: list[str] | None = None) -> dict[str, int]:
    """Crossbar report counts summed over `names`, or over every mapped layer of the model
    (what a chip holds, the layers left dense included) when `names` is None."""
    rows = {r.name: r.counts for r in self.xt.crossbar_report(model, self.spec).mapped}
    names = list(rows) if names is None else names
    return {f: int(sum(getattr(rows[n], f) for n in names))
            for f in ("dense", "blocks", "packed", "nonzero_weights")}

  def layer_counts(self, model) -> dict[str, int]:
    """`{mapped layer: packed crossbars}`: where an allocation put the budget."""
    return {r.name: int(r.counts.packed) for r in self.xt.crossbar_report(model, self.spec).mapped}

  # -- the dense baseline
  def dense(self):
    """The dense baseline (trained once, cached under `--out`), and its record."""
    return self.remember("dense", self._train_dense)

  def _train_dense(self):
    args, path = self.args, self.cache / f"{self.tag}_dense.weights.h5"
    record_path = self.cache / f"{self.tag}_dense.json"
    model = self.compile(self.build(), args.lr, args.dense_epochs)
    if path.exists() and record_path.exists():
      model.load_weights(str(path))
      record = json.loads(record_path.read_text())
    else:
      start = time.perf_counter()
      self.fit(model, args.dense_epochs)
      record = {"accuracy": self.accuracy(self.copy(model)),
                "seconds": time.perf_counter() - start}
      model.save_weights(str(path))
      record_path.write_text(json.dumps(record))
    if record.get("bn_recalibration") != args.bn_recalibration:
      record.update(accuracy=self.accuracy(self.copy(model)),
                    bn_recalibration=args.bn_recalibration, finetune_epochs=None)
    if record.get("finetune_epochs") != args.epochs and not args.no_finetuned_reference:
      tuned = self.compile(self.copy(model), args.finetune_lr, args.epochs)  # dense + the epochs
      start = time.perf_counter()
      self.fit(tuned, args.epochs)
      record.update(accuracy_finetuned=self.accuracy(tuned), finetune_epochs=args.epochs,
                    seconds_finetuned=time.perf_counter() - start)
      record_path.write_text(json.dumps(record))
      self.log(f"{self.tag}: dense {record['accuracy']:.4f} ({record['seconds']:.0f} s), + "
               f"{args.epochs} epochs {record['accuracy_finetuned']:.4f}")
    if "val_accuracy" not in record:
      probe = self.copy(model)
      self.accuracy(probe)
      record["val_accuracy"] = self.val_accuracy(probe)
      record_path.write_text(json.dumps(record))
    names = self.pruned_names(model)
    record.update(counts=self.counts(model), counts_pruned=self.counts(model, names),
                  pruned_layers=names)
    return model, record
