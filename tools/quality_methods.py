"""The quality benchmark's methods: `METHOD_TABLE`, name -> label, plot style, family, run.

Every method starts from the dense baseline of a `quality_bench.Bench` and gets the same
number of post-baseline epochs; the procedures are the library's (`import xbar_tfmot as xt`):

  rpp-crossbar         LGD-RPP (`prune_crossbar`), crossbar grain (regrowth reset)
  rpp-crossbar-st      LGD-RPP, crossbar grain, regrowth straight_through
  rpp-column           LGD-RPP, column grain (output recombination)
  rpp-column-reorder   `reorder_model` (materialised), then LGD-RPP column grain
  topk-crossbar        exact top-k projection at every update (no RPP sampling), crossbar grain
  oneshot-crossbar     `one_shot_masks` of the trained dense kernels at crossbar grain, then
                       fine-tuning with the mask fixed
  tfmot-unstructured   TFMOT `prune_low_magnitude` (gradual) at the per-layer number of
                       non-zero weights the crossbar-grain budget keeps; crossbars counted by us
  group-lasso          sum over crossbar blocks of the block's L2 norm added to the loss for the
                       first half of the epochs, then the strongest blocks kept to the budget and
                       the second half fine-tunes with the mask fixed

Issue 13 (`--methods allocation`): LGD-RPP column grain on the baseline reordered once per
target (shared by the rows), differing only in how the crossbars are split among layers
(`CrossbarPolicy.mode`):

  alloc-per-layer      per_layer, at the per-layer reduction that makes the whole model hold no
                       more crossbars than the global modes (`equal_count_reduction`)
  alloc-global         global: the model-wide budget spread in proportion to dense counts
  alloc-energy         global_score, score magnitude (re-split at every mask update; the row
                       keeps the score's former name, energy)
  alloc-saliency       global_score, score saliency (|w dL/dw| on 4 training batches)
  alloc-sensitivity    sensitivity: curves measured on the validation split, then a knapsack
  alloc-best-distill   the row above with the best mean validation accuracy at that (network,
                       target), trained against the dense model's logits (DistillationLoss)
  <row>-kd             each allocation row with distillation
  layer-by-layer       (by name; not in the group, it trains about 4x longer than a row) the
                       paper's procedure (`prune_layer_by_layer`): one layer at a time, its
                       reduction climbing a 3-step grid up to the target until the validation
                       accuracy falls 2 points below the start (or Tc = 1), each layer then
                       fine-tuned one epoch; it lands on its own crossbar count

Issue 28's deep cuts (`--methods deep`): A3 and A1 trained differently, to see whether the
frontier needs a different fine-tuning rather than a different allocation:

  alloc-energy-rewind      A3 with learning-rate rewinding: from `--lr` (the dense baseline's
                           initial rate) instead of `--finetune-lr`, cosine over the epochs
  alloc-energy-regrow      A3 with `regrowth="straight_through"`: pruned columns keep their
                           weights and gradients until the budget freezes, and can come back
  alloc-per-layer-rewind   A1 with learning-rate rewinding
  alloc-validated-rewind   A10 with learning-rate rewinding (its candidates' steps too)
  alloc-validated-ramp     A15 with `global_score` candidates cut along the row's mask updates
                           (`gradual_cut`), as xbar-prune cuts them: the default
  alloc-validated-ramp-kd  A16 with the winner trained against the dense model's logits
                           (`train.distillation_weight` in xbar-prune; its candidates' steps
                           stay on the labels, as there)

Issue 27 (`--methods issue27`): every cell and dense baseline records its energy per inference
(nJ) and crossbars on the `CHIP` preset (`chip_cost`, the cost model);

  alloc-energy-objective   A3 with `CrossbarPolicy(objective="energy")`, the layers' costs per
                           crossbar from `crossbar_costs` on `CHIP`: the reduction is then the
                           share of the dense model's energy per inference not spent
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple

import numpy as np
from quality_bench import Bench


class Method(NamedTuple):
  """One compared method: its label in the table, plot style, family and how to run it.

  `run(bench, reduction)` returns `(stripped model, extra fields of the result cell)`.
  """

  label: str
  style: str
  family: str  # lgd, baseline, allocation, distilled, kd or procedure
  run: Callable[[Bench, float], tuple[Any, dict]]


def run_lgd(b: Bench, reduction: float, granularity: str, projection: str, regrowth: str,
            reorder: bool) -> tuple[Any, dict]:
  """LGD (`prune_crossbar`) with every pruned layer at `reduction`, optionally reordered first."""
  model, extra = b.copy(b.dense()[0]), {}
  names = b.pruned_names(model)
  if reorder:
    start = time.perf_counter()
    model, res = b.xt.reorder_model(model, b.spec, {n: reduction for n in names}, granularity,
                                    materialize=True, seed=b.seed)
    extra.update(reorder_seconds=time.perf_counter() - start, reorder_skipped=res.skipped)
  pruned = prune_and_fit(b, model, b.policy(model), reduction, granularity, projection, regrowth)
  wrapped = sorted(l.layer.name for l in pruned.layers if type(l).__name__ == "CrossbarPrune")
  if wrapped != sorted(names):
    raise RuntimeError(f"prune_crossbar wrapped {wrapped}; the benchmark prunes {sorted(names)}")
  return b.xt.strip_crossbar_pruning(pruned), extra


def prune_and_fit(b: Bench, model, policy, reduction: float, granularity: str = "column",
                  projection: str = "rpp", regrowth: str = "reset", y=None, distillation=None,
                  allocation_data=None, learning_rate: float | None = None) -> Any:
  """`prune_crossbar` under `policy`, its budget falling over `--prune-fraction` of the
  method's epochs, trained those epochs (against `y`, with `distillation` when given) from
  `learning_rate` (default `--finetune-lr`) on a cosine decay."""
  xt = b.xt
  pruned = xt.prune_crossbar(
      model, spec=b.spec, granularity=granularity, projection=projection, regrowth=regrowth,
      seed=b.seed, temperature=b.args.temperature, policy=policy,
      schedule=xt.CrossbarPolynomialDecay(final_reduction=reduction, begin_step=0,
                                          end_step=b.end_step, frequency=b.args.frequency))
  b.compile(pruned, learning_rate or b.args.finetune_lr, b.args.epochs, distillation)
  b.fit(pruned, b.args.epochs, [xt.UpdateCrossbarPruning(allocation_data=allocation_data)], y)
  return pruned


def reordered(b: Bench, reduction: float) -> tuple[Any, float, dict[str, str]]:
  """The dense baseline reordered for column grain at `reduction` in every pruned layer
  (`reorder_model`, materialised; once per reduction, shared by the allocation rows so that
  they differ only in the allocation): `(model, seconds, skipped layers)`."""
  def compute():
    base = b.dense()[0]
    start = time.perf_counter()
    model, res = b.xt.reorder_model(b.copy(base), b.spec,
                                    {n: reduction for n in b.pruned_names(base)}, "column",
                                    materialize=True, seed=b.seed)
    return model, time.perf_counter() - start, res.skipped
  return b.remember(("reordered", reduction), compute)


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


def allocation_policy(b: Bench, model, reduction: float, mode: str,
                      score: str) -> tuple[Any, float, dict]:
  """`(CrossbarPolicy, schedule reduction, extra fields)` of an allocation row."""
  if mode == "per_layer":
    r = equal_count_reduction(b, model, reduction)
    return b.policy(model), r, {"per_layer_reduction": r}
  if mode != "sensitivity":
    return b.policy(model, mode=mode, score=score), reduction, {}

  def curves():
    b.compile(model, b.args.finetune_lr, b.args.epochs)  # the curves read the compiled loss
    m = b.xt.sensitivity_curves(model, b.spec, (b.x_val, b.y_val), "column")
    b.log(f"{b.tag}: sensitivity curves at {reduction:g}: {m['evaluations']} evaluations on "
          f"{len(b.y_val)} validation images, {m['seconds']:.0f} s")
    return m
  m = b.remember(("curves", reduction), curves)
  return (b.policy(model, mode="sensitivity", curves=m["curves"]), reduction,
          {"curves_evaluations": m["evaluations"], "curves_seconds": m["seconds"],
           "curves": m["curves"]})


def run_allocation(b: Bench, reduction: float, mode: str, score: str, distill: bool = False,
                   rewind: bool = False, regrowth: str = "reset") -> tuple[Any, dict]:
  """LGD-RPP column grain on the reordered baseline, with `CrossbarPolicy(mode, score)`;
  `distill`: trained against the dense model's logits (`teacher_targets`, `DistillationLoss`);
  `rewind`: learning-rate rewinding (Renda et al., ICLR 2020), the row trains from the dense
  baseline's initial rate `--lr` instead of `--finetune-lr` (the dense schedule restarted and
  compressed to the row's epochs); `regrowth`: `prune_crossbar`'s, at column grain."""
  source, reorder_seconds, skipped = reordered(b, reduction)
  model = b.copy(source)
  policy, r, extra = allocation_policy(b, model, reduction, mode, score)
  extra.update(mode=mode, score=score if mode == "global_score" else None,
               reorder_seconds=reorder_seconds, reorder_skipped=skipped,
               budget=b.model_budget(model, policy, r), regrowth=regrowth,
               learning_rate=b.args.lr if rewind else b.args.finetune_lr)
  y, distillation, batch = b.y, None, b.args.batch
  if distill:
    y = b.xt.teacher_targets(b.dense()[0], b.x, b.y, batch_size=1000)
    distillation = (b.args.distill_temperature, b.args.distill_weight)
    extra.update(distill_weight=b.args.distill_weight,
                 distill_temperature=b.args.distill_temperature)
  gradients = None
  if mode == "global_score" and score in ("saliency", "fisher"):  # 4 batches, as xbar-prune
    gradients = _batches(b, y)
  pruned = prune_and_fit(b, model, policy, r, regrowth=regrowth, y=y, distillation=distillation,
                         allocation_data=gradients, learning_rate=b.args.lr if rewind else None)
  return b.xt.strip_crossbar_pruning(pruned), extra


def _batches(b: Bench, y) -> list:
  """The first four training batches (the gradient scores' data, as xbar-prune takes them)."""
  batch = b.args.batch
  return [(b.x[i:i + batch], y[i:i + batch]) for i in range(0, min(len(b.x), 4 * batch), batch)]


def run_validated(b: Bench, reduction: float, rewind: bool = False, ramp: bool = False,
                  distill: bool = False) -> tuple[Any, dict]:
  """`allocation.mode="validated"`: every candidate of `xt.choose_allocation` cut at once
  from the reordered baseline (or along the ramp, `ramp`), fine-tuned for
  `--candidate-steps` masked steps (0: none), BatchNorm re-estimated on 1,024 training images,
  scored on the validation split; the winner trained as its row. `rewind`: the candidates' steps
  and the winner's training start from `--lr` (learning-rate rewinding, `run_allocation`);
  `ramp`: `global_score` candidates are cut along the row's own mask updates (`gradual_cut`);
  `distill`: the winner (not the candidates' steps, as in xbar-prune) trains against the dense
  model's logits."""
  from xbar_tfmot.pruning.selection import CANDIDATES
  source, _, _ = reordered(b, reduction)
  model = b.copy(source)
  b.compile(model, b.args.finetune_lr, b.args.epochs)  # the gradients and curves read the loss
  curves = allocation_policy(b, model, reduction, "sensitivity", "magnitude")[0].curves
  candidates = {name: b.xt.candidate_policy(name, b.policy(model).leave_dense, curves)
                for name in CANDIDATES}
  choice = b.xt.choose_allocation(model, b.spec, candidates, reduction, "column",
                                  (b.x_val, b.y_val), gradient_data=_batches(b, b.y),
                                  calibration_images=b.x[:1024], train_data=(b.x, b.y),
                                  finetune_steps=b.args.candidate_steps,
                                  learning_rate=b.args.lr if rewind else b.args.finetune_lr,
                                  batch_size=b.args.batch, seed=b.seed,
                                  ramp_steps=max(1, b.end_step // b.args.frequency) if ramp else 1)
  b.log(f"{b.tag}: validated at {reduction:g}: " + "; ".join(choice.table()))
  mode, _, score = choice.chosen.partition(":")
  pruned, extra = run_allocation(b, reduction, mode, score or "magnitude", distill, rewind)
  extra.update(chosen=choice.chosen, choice_seconds=choice.seconds,
               candidate_steps=b.args.candidate_steps,
               candidates=[{k: v for k, v in r.items() if k != "budgets"} for r in choice.rows])
  return pruned, extra


def run_best_distilled(b: Bench, reduction: float) -> tuple[Any, dict]:
  """The allocation row with the best mean validation accuracy at this (network, reduction),
  over the seeds finished so far, run again with distillation from the dense model."""
  if b.choose is None:
    raise RuntimeError("alloc-best-distill needs Bench(choose=...) to read the results")
  best, by = b.choose(reduction)
  mode, score = ALLOC_MODES[best]
  b.log(f"{b.tag}: best allocation at {reduction:g} on validation: {best} "
        f"({', '.join(f'{m} {v:.4f}' for m, v in by.items())})")
  model, extra = run_allocation(b, reduction, mode, score, distill=True)
  return model, {**extra, "chosen": best, "validation_means": by}


# layer-by-layer's stop rules: the library defaults but for the grid, which climbs to the target
# in LBL_GRID_STEPS steps (the default 0.1 grid would train up to 9 epochs a layer)
LBL_MAX_ACCURACY_DROP, LBL_CROSSBAR_THRESHOLD, LBL_GRID_STEPS = 0.02, 1, 3


def run_layer_by_layer(b: Bench, reduction: float) -> tuple[Any, dict]:
  """The paper's procedure (`prune_layer_by_layer`) on the reordered baseline, column grain:
  each pruned layer in turn, up to `reduction` unless the validation accuracy (BatchNorm
  re-estimated) falls more than `LBL_MAX_ACCURACY_DROP` below the start."""
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
      leave_dense=b.policy(source).leave_dense, ramp=b.args.prune_fraction,
      updates_per_epoch=max(1, b.steps_per_epoch // b.args.frequency),
      temperature=b.args.temperature, seed=b.seed, log=b.log)
  return model, {"reorder_seconds": reorder_seconds, "reorder_skipped": skipped,
                 "epochs_trained": sum(epochs), "outcomes": [o.to_dict() for o in outcomes],
                 "rules": {"max_accuracy_drop": rules.max_accuracy_drop,
                           "max_reduction": rules.max_reduction,
                           "crossbar_threshold": rules.crossbar_threshold, "step": rules.step}}


def crossbar_masks(b: Bench, model, reduction: float) -> dict[str, np.ndarray]:
  """`one_shot_masks`: each pruned kernel's exact crossbar-grain projection at its budget."""
  return b.xt.one_shot_masks(model, b.spec, b.policy(model), reduction, "crossbar")


def finetune_masked(b: Bench, model, masks: dict[str, np.ndarray], epochs: int) -> Any:
  """`epochs` of fine-tuning with `masks` held fixed, then applied (exact zeros to count)."""
  from xbar_tfmot.pruning.callbacks import fixed_masks
  b.compile(model, b.args.finetune_lr, epochs)
  b.fit(model, epochs, fixed_masks(model, masks))
  b.xt.apply_masks(model, masks)
  return model


def run_oneshot(b: Bench, reduction: float) -> tuple[Any, dict]:
  model = b.copy(b.dense()[0])
  return finetune_masked(b, model, crossbar_masks(b, model, reduction), b.args.epochs), {}


def gl_epochs(args) -> tuple[int, int]:
  """(regularised epochs, fine-tuning epochs) of group lasso: half and half of `--epochs`."""
  reg = int(math.ceil(args.epochs / 2))
  return reg, args.epochs - reg


def group_lasso_model(b: Bench) -> tuple[Any, float]:
  """The dense baseline trained `gl_epochs[0]` epochs with the block group-lasso term, cached
  under `--out`, and the seconds that took: `(model without the term, seconds)`."""
  import tensorflow as tf
  reg = gl_epochs(b.args)[0]
  path = b.cache / f"{b.tag}_grouplasso_l{b.args.gl_lambda:g}_e{reg}.weights.h5"
  model = b.copy(b.dense()[0])
  if path.exists():
    b.compile(model, b.args.finetune_lr, reg)
    model.load_weights(str(path))
    return b.copy(model), 0.0
  pruned = set(b.pruned_names(model))
  geoms = [(model.get_layer(g.name).kernel, g) for g in b.geometries(model) if g.name in pruned]
  lam = b.args.gl_lambda
  model.add_loss(lambda: lam * tf.add_n([tf.reduce_sum(tf.sqrt(g.block_energy(k) + 1e-12))
                                         for k, g in geoms]))
  b.compile(model, b.args.finetune_lr, reg)
  start = time.perf_counter()
  b.fit(model, reg)
  seconds = time.perf_counter() - start
  model.save_weights(str(path))
  b.log(f"{b.tag}: group-lasso phase {seconds:.0f} s")
  return b.copy(model), seconds  # the copy has no penalty, for the fine-tuning phase


def run_group_lasso(b: Bench, reduction: float) -> tuple[Any, dict]:
  trained, reg_seconds = b.remember("group-lasso", lambda: group_lasso_model(b))
  model = b.copy(trained)
  masks = crossbar_masks(b, model, reduction)
  kernels = {n: model.get_layer(n).kernel.numpy() for n in masks}
  kept = {n: float(np.sum(np.square(kernels[n] * m)) / max(1e-30, np.sum(np.square(kernels[n]))))
          for n, m in masks.items()}
  model = finetune_masked(b, model, masks, gl_epochs(b.args)[1])
  return model, {"regularised_seconds": reg_seconds, "kept_energy_at_threshold": kept,
                 "gl_lambda": b.args.gl_lambda, "gl_epochs": list(gl_epochs(b.args))}


def run_tfmot(b: Bench, reduction: float) -> tuple[Any, dict]:
  """TFMOT's `prune_low_magnitude` at the non-zero weights of the crossbar-grain budget."""
  import tensorflow_model_optimization as tfmot
  model = b.copy(b.dense()[0])
  masks = crossbar_masks(b, model, reduction)
  sparsity = {n: float(1.0 - m.mean()) for n, m in masks.items()}
  sk = tfmot.sparsity.keras

  def wrap(layer):
    if sparsity.get(layer.name, 0) > 0:
      schedule = sk.PolynomialDecay(0.0, sparsity[layer.name], 0, b.end_step,
                                    frequency=b.args.frequency)
      return sk.prune_low_magnitude(layer, pruning_schedule=schedule)
    return layer

  pruned = b.keras.models.clone_model(model, clone_function=wrap)
  for layer in pruned.layers:  # the wrappers add mask variables after the layer's own
    inner = b.introspection.unwrap(layer)
    for w, v in zip(inner.weights, model.get_layer(inner.name).weights):
      w.assign(v)
  b.compile(pruned, b.args.finetune_lr, b.args.epochs)
  b.fit(pruned, b.args.epochs, [sk.UpdatePruningStep()])
  return sk.strip_pruning(pruned), {"target_sparsity": sparsity}


# Issue 27: the chip every row's energy per inference is costed on (the cost model,
# `core/cost.py`; docs/hardware.md), and the energy objective's layer costs come from.
CHIP = "isaac_32nm"


def chip(b: Bench) -> Any:
  """`HardwareSpec.preset(CHIP)`: weight bits, cells and differential pairs left to the
  mapping's `--spec`, its array's energy scaled to the spec's rows x columns."""
  return b.remember("chip", lambda: b.xt.HardwareSpec.preset(CHIP))


def chip_cost(b: Bench, model) -> dict:
  """Energy per inference (nJ, arrays + ADCs + DACs) and crossbars of `model` (stripped) on
  `CHIP`: its column-grain mapping (`build_mapping`, the packed count the cells report) through
  `hardware_cost_summary` (`core.cost.estimate_cost`)."""
  mapping = b.xt.build_mapping(model, b.spec, "column")
  s = b.xt.hardware_cost_summary(model, mapping, chip(b))
  return {"chip": CHIP, "energy_nj": float(s["energy_nj"]), "chip_crossbars": int(s["crossbars"])}


def run_energy_objective(b: Bench, reduction: float,
                         score: str = "magnitude") -> tuple[Any, dict]:
  """The A3 row (LGD-RPP column grain on the reordered baseline, `global_score` by `score`)
  with `CrossbarPolicy(objective="energy", layer_costs=crossbar_costs(model, spec, CHIP))`:
  `reduction` is then the share of the dense model's energy per inference (every mapped layer,
  those left dense included) that the pruned model may not spend: at most `(1 - reduction) * E`."""
  source, reorder_seconds, skipped = reordered(b, reduction)
  model = b.copy(source)
  costs = b.xt.crossbar_costs(model, b.spec, chip(b))
  policy = b.policy(model, mode="global_score", score=score, objective="energy",
                    layer_costs=costs)
  dense_pj = sum(costs[g.name] * g.dense_crossbars for g in b.geometries(model))
  extra = {"mode": "global_score", "score": score, "objective": "energy", "chip": CHIP,
           "reorder_seconds": reorder_seconds, "reorder_skipped": skipped,
           "budget": b.model_budget(model, policy, reduction),  # crossbars of the first split
           "energy_budget_nj": (1 - reduction) * dense_pj / 1e3,
           "crossbar_nj": {n: c / 1e3 for n, c in costs.items()}}
  gradients = _batches(b, b.y) if score in ("saliency", "fisher") else None
  pruned = prune_and_fit(b, model, policy, reduction, allocation_data=gradients)
  return b.xt.strip_crossbar_pruning(pruned), extra


def _lgd(granularity: str, projection: str, regrowth: str, reorder: bool):
  return lambda b, r: run_lgd(b, r, granularity, projection, regrowth, reorder)


def _alloc(mode: str, score: str = "magnitude", distill: bool = False, rewind: bool = False,
           regrowth: str = "reset"):
  return lambda b, r: run_allocation(b, r, mode, score, distill, rewind, regrowth)


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
                               run_oneshot),
    "tfmot-unstructured": Method("6. TFMOT prune_low_magnitude (unstructured)", "x--",
                                 "baseline", run_tfmot),
    "group-lasso": Method("7. group lasso on blocks + threshold + fine-tune", "P--", "baseline",
                          run_group_lasso),
    "alloc-per-layer": Method("A1. per-layer (same reduction in every pruned layer)", "s-",
                              "allocation", _alloc("per_layer")),
    "alloc-global": Method("A2. global proportional", "o-", "allocation", _alloc("global")),
    "alloc-energy": Method("A3. global_score energy", "^-", "allocation",
                           _alloc("global_score", "magnitude")),
    "alloc-saliency": Method("A4. global_score saliency", "v-", "allocation",
                             _alloc("global_score", "saliency")),
    "alloc-sensitivity": Method("A5. sensitivity (curves on the validation split)", "D-",
                                "allocation", _alloc("sensitivity")),
    "alloc-relative": Method("A8. global_score relative_magnitude (no size bias)", "<-",
                             "issue28", _alloc("global_score", "relative_magnitude")),
    "alloc-fisher": Method("A9. global_score fisher (OBD, no size bias)", ">-", "issue28",
                           _alloc("global_score", "fisher")),
    "alloc-validated": Method("A10. chosen on validation (candidates cut at once)", "*--",
                              "issue28", run_validated),
    "alloc-energy-rewind": Method("A12. A3 with learning-rate rewinding (from --lr)", "^:",
                                  "deep", _alloc("global_score", "magnitude", rewind=True)),
    "alloc-energy-regrow": Method("A13. A3 with column regrowth (straight_through)", "^-.",
                                  "deep", _alloc("global_score", "magnitude",
                                                 regrowth="straight_through")),
    "alloc-per-layer-rewind": Method("A14. A1 with learning-rate rewinding (from --lr)", "s:",
                                     "deep", _alloc("per_layer", rewind=True)),
    "alloc-validated-rewind": Method("A15. A10 with learning-rate rewinding (from --lr)", "*:",
                                     "deep", lambda b, r: run_validated(b, r, rewind=True)),
    "alloc-validated-ramp": Method("A16. A15 with candidates cut along the training's ramp",
                                   "*-.", "deep",
                                   lambda b, r: run_validated(b, r, rewind=True, ramp=True)),
    "alloc-validated-ramp-kd": Method("A17. A16 (the default) + distillation", "X:", "deep",
                                      lambda b, r: run_validated(b, r, rewind=True, ramp=True,
                                                                 distill=True)),
    "alloc-energy-objective": Method("A11. global_score magnitude, objective energy (isaac_32nm)",
                                     "p-", "issue27", run_energy_objective),
    "alloc-best-distill": Method("A6. best of A1-A5 on validation, + distillation", "*-",
                                 "distilled", run_best_distilled),
    "layer-by-layer": Method("A7. layer-by-layer (the paper's procedure)", "h-", "procedure",
                             run_layer_by_layer),
}
# Each allocation row again with distillation (`<row>-kd`): A6 is the one validation picks; a
# fixed `-kd` row runs before the pick is known (the reading uses it as A6 when it is the pick).
ALLOC_MODES = {"alloc-per-layer": ("per_layer", "magnitude"),
               "alloc-global": ("global", "magnitude"),
               "alloc-energy": ("global_score", "magnitude"),
               "alloc-saliency": ("global_score", "saliency"),
               "alloc-sensitivity": ("sensitivity", "magnitude")}
for _m, (_mode, _score) in ALLOC_MODES.items():
  _number, _text = METHOD_TABLE[_m].label.split(". ", 1)
  METHOD_TABLE[f"{_m}-kd"] = Method(f"{_number}-kd. {_text}, + distillation",
                                    METHOD_TABLE[_m].style.replace("-", ":"), "kd",
                                    _alloc(_mode, _score, True))
METHODS = tuple(METHOD_TABLE)
METHOD_LABELS = {m: spec.label for m, spec in METHOD_TABLE.items()}


def family(name: str) -> tuple[str, ...]:
  """The methods of one family, in table order."""
  return tuple(m for m, spec in METHOD_TABLE.items() if spec.family == name)


LGD_METHODS, BASELINES, ALLOCATION = family("lgd"), family("baseline"), family("allocation")
DISTILLED, KD, PROCEDURE = family("distilled"), family("kd"), family("procedure")
ISSUE8 = LGD_METHODS + BASELINES
# Method groups `--methods` accepts besides single names.
METHOD_GROUPS = {"issue8": ISSUE8, "allocation": ALLOCATION + DISTILLED,
                 "issue28": ("alloc-per-layer", "alloc-energy", "alloc-saliency",
                             "alloc-sensitivity", *family("issue28")),
                 "issue27": family("issue27"), "deep": family("deep")}


def run_method(b: Bench, method: str, reduction: float) -> tuple[Any, dict]:
  if method not in METHOD_TABLE:
    raise ValueError(f"--methods: {method!r} is unknown; valid: {', '.join(METHODS)}")
  return METHOD_TABLE[method].run(b, reduction)


def run_cell(b: Bench, method: str, reduction: float) -> dict:
  """Runs `method` at `reduction` and measures it: the result cell's fields but its key."""
  dense_model, record = b.dense()
  start = time.perf_counter()
  model, extra = run_method(b, method, reduction)
  seconds = time.perf_counter() - start
  counts = b.counts(model)
  budget = extra.pop("budget", None) or b.model_budget(dense_model, b.policy(dense_model),
                                                        reduction)
  return {"network": f"{b.network[0]}:{b.network[1]:g}", "seed": b.seed, "method": method,
          "reduction": reduction, "accuracy": b.accuracy(model),
          "val_accuracy": b.val_accuracy(model), "counted": "model", "counts": counts,
          "counts_pruned": b.counts(model, record["pruned_layers"]),
          "layers": b.layer_counts(model), "budget": budget,
          "reduction_measured": 1 - counts["packed"] / counts["dense"], "seconds": seconds,
          **chip_cost(b, model), **extra}
