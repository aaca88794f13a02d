"""An allocation chosen on validation: candidate policies cut, briefly fine-tuned, the best wins.

No allocation wins on every network: per-layer normalised scores cut a large layer to the
bone whether or not the network can afford it (docs/design.md, "The policy"). So instead of a
default that won on one benchmark, `choose_allocation` cuts the trained model to each
candidate's budgets without training (`gradual_cut`: the exact projection, a `global_score`
pool re-split along the pruning schedule's ramp as training would re-split it), optionally
fine-tunes it for a few masked steps (`finetune_steps`: at deep cuts every one-shot score is
near chance and does not rank what training recovers), re-estimates its BatchNorm statistics
on training images, and measures its accuracy on validation images carved from the training
set; the caller trains the best candidate's policy (as scored: `AllocationChoice.policy`).
Every candidate competes at the same whole-model crossbar count (`equal_count`) and sees the
same training batches. The test set is never an argument. Our formulation (not the paper's).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from xbar_tfmot.core.errors import PolicyError
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning.one_shot import gradual_cut

# `mode[:score]` names of the candidates; `sensitivity` measures its curves first.
CANDIDATES = ("per_layer", "global_score:magnitude", "global_score:saliency",
              "global_score:relative_magnitude", "global_score:fisher", "sensitivity")


@dataclasses.dataclass(frozen=True)
class AllocationChoice:
  """The candidate that won, and every candidate's row: `name`, `validation_accuracy` (the
  score, after the fine-tuning steps), `trajectory` (when steps were taken: `[steps,
  accuracy]` after 0, a quarter, half and all of them), `crossbars` (whole-model, pruned
  layers and dense ones), `energy_nj` (per inference, from the costs per crossbar, when
  given), `budgets`, or `infeasible` (why)."""
  chosen: str
  rows: tuple[dict[str, Any], ...]
  seconds: float
  policy: CrossbarPolicy | None = None  # the chosen candidate as scored (`equal_count`)

  def table(self) -> list[str]:
    """One line a candidate, the chosen one marked."""
    out = []
    for r in self.rows:
      mark = "*" if r["name"] == self.chosen else " "
      energy = f", {r['energy_nj']:.1f} nJ" if "energy_nj" in r else ""
      as_cut = f" (as cut {r['trajectory'][0][1]:.4f})" if "trajectory" in r else ""
      what = (f"validation accuracy {r['validation_accuracy']:.4f}{as_cut}, {r['crossbars']} "
              f"crossbars{energy}" if "validation_accuracy" in r
              else f"infeasible: {r['infeasible']}")
      out.append(f"{mark} {r['name']}: {what}")
    return out


def candidate_policy(name: str, leave_dense: Any = None,
                     curves: Mapping[str, Any] | None = None, objective: str = "crossbars",
                     layer_costs: Mapping[str, float] | None = None) -> CrossbarPolicy:
  """The policy of a candidate name (`per_layer`, `global_score:fisher`, `sensitivity`, ...);
  `objective` and `layer_costs` as `CrossbarPolicy` takes them (`energy`: global_score
  candidates only)."""
  mode, _, score = name.partition(":")
  cost = {} if objective == "crossbars" else {"objective": objective, "layer_costs": layer_costs}
  if mode == "sensitivity":
    return CrossbarPolicy(leave_dense=leave_dense, mode=mode, curves=curves, **cost)
  return CrossbarPolicy(leave_dense=leave_dense, mode=mode, **({"score": score} if score else {}),
                        **cost)


def equal_count(policy: CrossbarPolicy, geometries: Sequence[LayerGeometry],
                reduction: float) -> CrossbarPolicy:
  """A `per_layer` policy at the whole-model crossbar count of the global modes.

  Why: `per_layer` cuts each pruned layer by `reduction`, so with layers left dense the whole
  model holds more crossbars than the global modes' `crossbar_budget(D, reduction)` (`D`:
  every mapped layer), and would win a comparison on a bigger chip. The returned policy gives
  every pruned layer one target, the least reduction (bisection) at which the whole model
  holds no more than that. Other modes, and per-layer policies with targets, are returned as
  they are."""
  if policy.mode != "per_layer" or policy.targets:
    return policy
  limit = crossbar_budget(sum(g.dense_crossbars for g in geometries), reduction)

  def held(r: float) -> int:
    budgets = policy.plan(geometries, r)
    return sum(g.dense_crossbars if budgets[g.name] is None else budgets[g.name]
               for g in geometries)

  if held(reduction) <= limit:
    return policy
  low, high = reduction, 1.0 - 1e-9
  if held(high) > limit:
    raise PolicyError(f"per_layer: the layers left dense and one crossbar per pruned layer hold "
                      f"{held(high)} crossbars, more than the whole-model total {limit} at "
                      f"reduction {reduction}; valid: a lower reduction or fewer dense layers.")
  for _ in range(40):
    mid = (low + high) / 2
    low, high = (mid, high) if held(mid) > limit else (low, mid)
  pruned = [n for n, b in policy.plan(geometries, high).items() if b is not None]
  return dataclasses.replace(policy, targets={n: high for n in pruned})


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
  """Top-1 accuracy of `model` on `(x, y)` in inference mode (no compile needed)."""
  if len(y) == 0:
    raise PolicyError("choose_allocation: the validation split is empty; valid: a few hundred "
                      "images held out of the training set.")
  hits = 0
  for i in range(0, len(y), batch_size):
    logits = np.asarray(model(x[i:i + batch_size], training=False))
    hits += int(np.sum(np.argmax(logits, axis=-1) == np.asarray(y[i:i + batch_size]).ravel()))
  return hits / len(y)


def finetune_batches(data: tuple[np.ndarray, np.ndarray], steps: int, batch_size: int = 128,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  """`steps` training batches drawn from `data = (x, y)` in a seeded shuffled order (epoch after
  epoch), so that every candidate is fine-tuned on the same images."""
  x, y = data
  if steps == 0:
    return []
  if len(y) == 0:
    raise PolicyError("choose_allocation: the fine-tuning data is empty; valid: training "
                      "images (x, y), or finetune_steps=0.")
  size = min(batch_size, len(y))
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(len(y)) for _ in range(-(-steps * size // len(y)))])
  return [(x[i], y[i]) for i in order[:steps * size].reshape(steps, size)]


def masked_finetune(model: Any, masks: Mapping[str, np.ndarray], batches: Sequence[tuple],
                    learning_rate: float = 1e-3,
                    after_step: Callable[[int], None] | None = None) -> None:
  """Adam steps (fresh moments, the usual constants) on `batches` with the compiled loss; the
  gradients of each masked kernel are masked, so its pruned weights stay exactly zero.
  `after_step(t)` is called after step t (1, 2, ...).

  Why its own loop: the model's compiled optimizer carries the state of whatever trained it
  before, and candidates must start alike; a plain loop is the same in both Keras flavours."""
  import tensorflow as tf
  loss_fn = introspection.compiled_loss(model, "choose_allocation")
  kernels = introspection.mapped_kernels(model, masks, "choose_allocation")
  mask_of = {id(kernels[n]): tf.constant(m, kernels[n].dtype) for n, m in masks.items()}
  variables = list(model.trainable_variables)
  moments = [(tf.Variable(tf.zeros(v.shape, v.dtype)), tf.Variable(tf.zeros(v.shape, v.dtype)))
             for v in variables]
  b1, b2, eps = 0.9, 0.999, 1e-7

  @tf.function
  def train_step(x, y, t):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(loss_fn(y, model(x, training=True)))
    for v, g, (first, second) in zip(variables, tape.gradient(loss, variables), moments):
      if g is None:
        continue
      g = tf.convert_to_tensor(g) * mask_of.get(id(v), 1.0)
      first.assign(b1 * first + (1 - b1) * g)
      second.assign(b2 * second + (1 - b2) * g * g)
      v.assign_sub(learning_rate * (first / (1 - b1**t)) / (tf.sqrt(second / (1 - b2**t)) + eps))

  for t, (x, y) in enumerate(batches, 1):
    train_step(x, y, tf.constant(t, tf.float32))
    if after_step is not None:
      after_step(t)


def choose_allocation(model: Any, spec: CrossbarSpec, candidates: Mapping[str, CrossbarPolicy],
                      reduction: float, granularity: str, validation: tuple[np.ndarray, np.ndarray],
                      gradient_data: Any = None, calibration_images: np.ndarray | None = None,
                      log: Callable[[str], None] = lambda line: None,
                      costs: Mapping[str, float] | None = None,
                      train_data: tuple[np.ndarray, np.ndarray] | None = None,
                      finetune_steps: int = 0, learning_rate: float = 1e-3,
                      batch_size: int = 128, seed: int = 0,
                      ramp_steps: int = 1) -> AllocationChoice:
  """Scores each candidate policy on `validation` and returns the best (ties: the earlier
  candidate). `model` (trained, compiled when a gradient score is a candidate or steps are
  taken) is left as it was. `gradient_data`: training batches for the gradient scores;
  `calibration_images`: training images for BatchNorm re-estimation after each cut (None:
  none); `costs`: each mapped layer's energy (pJ) per crossbar (`allocation.crossbar_costs`),
  for each row's `energy_nj`; `train_data` `(x, y)`, `finetune_steps`, `learning_rate`,
  `batch_size`, `seed`: each cut is fine-tuned by `masked_finetune` on the same
  `finetune_steps` batches of `train_data` before it is scored (0: scored one-shot);
  `ramp_steps`: a `global_score` candidate is cut along that many mask updates of the pruning
  schedule's ramp (`gradual_cut`; pass the training's own count), 1: at once. A candidate
  whose budgets cannot be met is recorded as infeasible."""
  from xbar_tfmot.models.batchnorm import recalibrate_batchnorm
  if finetune_steps < 0 or (finetune_steps and train_data is None):
    raise PolicyError(f"choose_allocation: finetune_steps={finetune_steps} needs training data; "
                      f"valid: finetune_steps >= 0, and train_data=(x, y) when it is > 0.")
  started = time.perf_counter()
  weights = model.get_weights()
  geometries = {l.name: introspection.geometry_of(l, spec)
                for l in introspection.iter_layers(model) if introspection.is_mapped(l)}
  batches = finetune_batches(train_data, finetune_steps, batch_size, seed) if train_data else []

  def score() -> float:
    if calibration_images is not None:
      recalibrate_batchnorm(model, calibration_images, batch_size=256)
    return accuracy(model, *validation)

  rows, scored_policies = [], {}
  try:
    for name, policy in candidates.items():
      model.set_weights(weights)  # every candidate is cut from the model as given
      try:
        policy = scored_policies[name] = equal_count(policy, list(geometries.values()),
                                                     reduction)
        budgets, masks = gradual_cut(model, spec, policy, reduction, granularity,
                                     gradient_data, ramp_steps)
      except ValueError as e:
        rows.append({"name": name, "infeasible": str(e)})
        continue
      row: dict[str, Any] = {"name": name}
      if batches:
        trajectory = row["trajectory"] = [[0, score()]]

        def checkpoint(t: int) -> None:
          if t in (finetune_steps // 4, finetune_steps // 2, finetune_steps):
            trajectory.append([t, score()])

        masked_finetune(model, masks, batches, learning_rate, checkpoint)
      row.update(validation_accuracy=row["trajectory"][-1][1] if batches else score(),
                 crossbars=sum(geometries[n].dense_crossbars if b is None else b
                               for n, b in budgets.items()),
                 budgets=budgets)
      if costs is not None:
        row["energy_nj"] = sum(costs[n] * (geometries[n].dense_crossbars if b is None else b)
                               for n, b in budgets.items()) / 1e3
      rows.append(row)
      log(f"{name}: validation accuracy {row['validation_accuracy']:.4f}")
  finally:
    model.set_weights(weights)
  scored = [r for r in rows if "validation_accuracy" in r]
  if not scored:
    raise PolicyError(f"choose_allocation: no candidate can meet reduction {reduction}: "
                      + "; ".join(f"{r['name']}: {r['infeasible']}" for r in rows))
  best = max(scored, key=lambda r: (r["validation_accuracy"], -scored.index(r)))
  return AllocationChoice(best["name"], tuple(rows), time.perf_counter() - started,
                          scored_policies[best["name"]])
