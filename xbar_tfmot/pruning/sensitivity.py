"""Per-layer sensitivity curves for `CrossbarPolicy(mode="sensitivity")`.

`sensitivity_curves(model, spec, data)` measures, for every mapped layer alone, the loss on
held-out batches after the one-shot exact projection of that layer to each budget of a grid
(the other layers dense), restoring the kernel after each point. The policy then splits the
model-wide budget to minimise the summed loss increase over these curves (an exact knapsack
over interpolated curves, `core.policy.allocate_by_curves`). The curves are measured once,
before pruning; the result says what they cost (model evaluations and seconds).

`perturb` (optional) evaluates each point on perturbed copies of the cut kernel instead, the
loss averaged over them; `pruning.robustness.chip_perturbation` programs them on a simulated
chip (issue 27, item 3), so the curves include the chip's weight noise.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.core.projection import crossbar_budget, project
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection

REDUCTIONS = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95)


def _batches(data: Any, batch_size: int) -> list:
  if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape"):
    x, y = data
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
  return [(b[0], b[1]) for b in data]


def sensitivity_curves(model: Any, spec: CrossbarSpec | str, data: Any,
                       granularity: str = "crossbar", reductions: Sequence[float] = REDUCTIONS,
                       loss: Any = None, batch_size: int = 256,
                       layers: Sequence[str] | None = None,
                       perturb: Callable[[str, np.ndarray, np.ndarray], Sequence[np.ndarray]]
                       | None = None) -> dict[str, Any]:
  """Loss against crossbar budget for each mapped layer, pruned alone by the exact projection.

  Args:
    model: a plain (unwrapped) tf_keras or Keras 3 model, trained; its kernels are restored.
    spec: the crossbar.
    data: held-out batches `[(x, y), ...]` or an `(x, y)` pair of arrays (a validation split
      carved from the training images; never the test set).
    granularity: `crossbar` or `column`, as in `prune_crossbar`.
    reductions: the grid; each becomes a budget `max(1, round((1 - r) * dense))`, and the
      dense count and 1 crossbar are always measured.
    loss: a callable `loss(y, y_pred)`; default the model's compiled loss.
    layers: names to measure (default: every mapped layer).
    perturb: optional `perturb(layer_name, cut_kernel, mask) -> [kernel, ...]`; each point
      (the dense one included, with an all-ones mask) is then the mean loss over the returned
      kernels, each evaluated in place of the layer's kernel.

  Returns:
    `{"curves": {layer: [[budget, loss], ...]}, "evaluations": n, "seconds": s}`; pass
    `curves` to `CrossbarPolicy(mode="sensitivity", curves=...)`.
  """
  spec = CrossbarSpec.from_string(spec) if isinstance(spec, str) else spec
  loss_fn = introspection.compiled_loss(model, "sensitivity_curves", loss)
  batches = _batches(data, batch_size)
  if not batches:
    raise PruningConfigError("sensitivity_curves: data holds no batch.")
  start = time.perf_counter()
  evaluations = 0

  def evaluate() -> float:
    nonlocal evaluations
    evaluations += 1
    total = count = 0.0
    for x, y in batches:
      total += float(np.mean(np.asarray(loss_fn(y, model(x, training=False))))) * len(x)
      count += len(x)
    return total / count

  def point(name: str, cut: np.ndarray, mask: np.ndarray) -> float:
    if perturb is None:
      kernel.assign(cut)
      return evaluate()
    variants = list(perturb(name, cut, mask))
    if not variants:
      raise PruningConfigError(f"sensitivity_curves: perturb returned no kernel for {name}.")
    losses = []
    for variant in variants:
      kernel.assign(np.asarray(variant, saved.dtype).reshape(saved.shape))
      losses.append(evaluate())
    return float(np.mean(losses))

  base = evaluate() if perturb is None else None
  curves = {}
  for layer in introspection.iter_layers(model):
    if not introspection.is_mapped(layer) or (layers is not None and layer.name not in layers):
      continue
    g = introspection.geometry_of(layer, spec)
    kernel = introspection.mapped_kernel(layer)
    saved = np.asarray(kernel).copy()
    budgets = sorted({1, g.dense_crossbars} | {crossbar_budget(g.dense_crossbars, r)
                                               for r in reductions})
    points = []
    try:
      for b in budgets:
        if b == g.dense_crossbars:
          points.append([b, base if perturb is None else
                         point(layer.name, saved, np.ones_like(saved))])
          continue
        mask = np.asarray(project(g, saved, b, granularity), saved.dtype)
        points.append([b, point(layer.name, saved * mask, mask)])
    finally:
      kernel.assign(saved)
    curves[layer.name] = points
  return {"curves": curves, "evaluations": evaluations,
          "seconds": round(time.perf_counter() - start, 3)}
