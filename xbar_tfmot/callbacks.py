"""Training callbacks for crossbar pruning: `UpdateCrossbarPruning`, `CrossbarPruningSummaries`.

A Keras callback must subclass its flavour's `Callback`, and the tf_keras ones build on TFMOT,
which must not be imported with `xbar_tfmot`. So the public names here are dispatchers:
calling one builds the flavour's callback (loading the tf_keras adapter on first use), and
`isinstance` against it holds for every flavour's implementation. The flavour-neutral counting
that the summaries write lives here too.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys

import numpy as np

from xbar_tfmot.geometry import LayerGeometry

_ADAPTERS = {"tf_keras": "xbar_tfmot.pruning_tf_keras"}


class _FlavourDispatch(type):
  """Metaclass: `Cls(..., flavour=...)` builds the flavour's implementation of `Cls`."""

  def __call__(cls, *args, flavour: str = "tf_keras", **kwargs):
    if flavour not in _ADAPTERS:
      raise ValueError(f"{cls.__name__}: flavour={flavour!r} is not supported; valid: "
                       f"{', '.join(_ADAPTERS)}.")
    return getattr(importlib.import_module(_ADAPTERS[flavour]), cls.__name__)(*args, **kwargs)

  def __instancecheck__(cls, obj):
    return any(isinstance(obj, getattr(sys.modules[m], cls.__name__))
               for m in _ADAPTERS.values() if m in sys.modules)


class UpdateCrossbarPruning(metaclass=_FlavourDispatch):
  """Advances the pruning step every batch; required in `fit` (like TFMOT's `UpdatePruningStep`).

  On tf_keras it is TFMOT's `UpdatePruningStep` (which also works unchanged) plus a check that
  the model holds crossbar wrappers.
  """


class CrossbarPruningSummaries(metaclass=_FlavourDispatch):
  """Writes per-layer and total crossbar counts and kept-energy ratios to TensorBoard.

  `CrossbarPruningSummaries(log_dir, update_freq="epoch")`; see the tf_keras implementation
  for the scalar names.
  """


@dataclasses.dataclass
class LayerState:
  """One mapped layer at a moment of training: its kernel as trained and its mask."""

  geometry: LayerGeometry
  kernel: np.ndarray
  mask: np.ndarray
  budget: int


def crossbar_scalars(entries: list[LayerState], granularity: str) -> dict[str, float]:
  """Scalars for TensorBoard: crossbars per layer and in total, budgets, kept energy."""
  out: dict[str, float] = {}
  total = dense = 0
  kept = energy = 0.0
  for e in entries:
    masked = e.kernel * e.mask
    counts = e.geometry.counts(masked)
    crossbars = counts.packed if granularity == "column" else counts.blocks
    layer_energy = float(np.sum(np.square(e.kernel, dtype=np.float64)))
    layer_kept = float(np.sum(np.square(masked, dtype=np.float64)))
    name = e.geometry.name
    out[f"crossbars/{name}"] = crossbars
    out[f"crossbar_budget/{name}"] = e.budget
    out[f"kept_energy/{name}"] = layer_kept / layer_energy if layer_energy else 1.0
    total += crossbars
    dense += counts.dense
    kept += layer_kept
    energy += layer_energy
  out["crossbars/total"] = total
  out["dense_crossbars/total"] = dense
  out["kept_energy/total"] = kept / energy if energy else 1.0
  return out
