"""Training callbacks for crossbar pruning: `UpdateCrossbarPruning`, `CrossbarPruningSummaries`.

A Keras callback must subclass its flavour's `Callback`, and the tf_keras ones build on TFMOT,
which must not be imported with `xbar_tfmot`. So the public names here are dispatchers:
calling one builds the flavour's callback (loading the tf_keras adapter on first use), and
`isinstance` against it holds for every flavour's implementation. Without `flavour=`, the
flavour is that of the crossbar wrapper built last in this process (by `prune_crossbar` or
by loading a pruned model), else `tf_keras` if `tf_keras` was imported, else `keras3`. The
flavour-neutral counting and writing that the summaries do live here too.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys

import numpy as np

from xbar_tfmot.geometry import LayerGeometry

_ADAPTERS = {"tf_keras": "xbar_tfmot.pruning_tf_keras", "keras3": "xbar_tfmot.pruning_keras3"}

_last_flavour: list[str] = []  # the flavour of the crossbar wrapper built last


def note_flavour(flavour: str) -> None:
  """Called by the adapters' wrappers: the default flavour of the callbacks follows it."""
  _last_flavour[:] = [flavour]


def default_flavour() -> str:
  if _last_flavour:
    return _last_flavour[0]
  return "tf_keras" if "tf_keras" in sys.modules else "keras3"


class _FlavourDispatch(type):
  """Metaclass: `Cls(..., flavour=...)` builds the flavour's implementation of `Cls`."""

  def __call__(cls, *args, flavour: str | None = None, **kwargs):
    flavour = default_flavour() if flavour is None else flavour
    if flavour not in _ADAPTERS:
      raise ValueError(f"{cls.__name__}: flavour={flavour!r} is not supported; valid: "
                       f"{', '.join(_ADAPTERS)}.")
    return getattr(importlib.import_module(_ADAPTERS[flavour]), cls.__name__)(*args, **kwargs)

  def __instancecheck__(cls, obj):
    return any(isinstance(obj, getattr(sys.modules[m], cls.__name__))
               for m in _ADAPTERS.values() if m in sys.modules)


class UpdateCrossbarPruning(metaclass=_FlavourDispatch):
  """Advances the pruning step every batch; required in `fit` (like TFMOT's `UpdatePruningStep`).

  `UpdateCrossbarPruning(flavour=None)`. On tf_keras it is TFMOT's `UpdatePruningStep` (which
  also works unchanged) plus a check that the model holds crossbar wrappers; on Keras 3 a
  `keras.callbacks.Callback` doing the same for the Keras 3 wrappers.
  """


class CrossbarPruningSummaries(metaclass=_FlavourDispatch):
  """Writes per-layer and total crossbar counts and kept-energy ratios to TensorBoard.

  `CrossbarPruningSummaries(log_dir, update_freq="epoch", flavour=None)`; see `SummariesMixin`
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


class SummariesMixin:
  """What `CrossbarPruningSummaries` does, for either flavour's `Callback` base.

  Scalars (at the optimiser's iteration, every epoch, or every `update_freq` batches):
  `crossbars/<layer>` and `crossbars/total` (counted from the masked kernels' zeros at the
  model's granularity; the total covers every mapped layer, dense-left ones included),
  `dense_crossbars/total`, `crossbar_budget/<layer>` (the budget of the last mask update) and
  `kept_energy/<layer>`, `kept_energy/total`: energy of the masked kernel over the energy of
  the kernel as trained. With `straight_through` this tells how much the pruned weights
  still carry; with `reset` the pruned weights are zero, so it stays near 1.

  The adapter supplies `_wrappers()` (crossbar wrappers of `self.model`, each with `layer`,
  `mask`, `geometry`, `spec`, `granularity` and `current_budget()`) and `_leaves()`.
  """

  def __init__(self, log_dir: str, update_freq: str | int = "epoch"):
    super().__init__()
    if not isinstance(log_dir, str) or not log_dir:
      raise ValueError(f"CrossbarPruningSummaries: log_dir={log_dir!r}; valid: a non-empty path.")
    if update_freq != "epoch" and (isinstance(update_freq, bool) or
                                   not isinstance(update_freq, int) or update_freq < 1):
      raise ValueError(
          f"CrossbarPruningSummaries: update_freq={update_freq!r}; valid: 'epoch' or an integer "
          f">= 1 (batches).")
    self.log_dir = log_dir
    self.update_freq = update_freq
    self._writer = None

  def on_train_begin(self, logs=None):
    import tensorflow as tf
    self._writer = tf.summary.create_file_writer(self.log_dir)

  def on_train_batch_end(self, batch, logs=None):
    if self.update_freq != "epoch" and (batch + 1) % self.update_freq == 0:
      self._write()

  def on_epoch_end(self, epoch, logs=None):
    if self.update_freq == "epoch":
      self._write()

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()

  def _write(self):
    import tensorflow as tf
    from xbar_tfmot import layers as xlayers
    wrappers = self._wrappers()
    granularity = wrappers[0].granularity if wrappers else "crossbar"
    entries = [LayerState(w.geometry, np.asarray(w.layer.kernel), np.asarray(w.mask),
                          w.current_budget()) for w in wrappers]
    wrapped_inner = {id(w.layer) for w in wrappers}
    spec = wrappers[0].spec if wrappers else None
    for layer in self._leaves():
      if (spec is not None and xlayers.is_mapped(layer) and id(layer) not in wrapped_inner
          and layer.built):
        g = xlayers.geometry_of(layer, spec)
        kernel = np.asarray(layer.kernel)
        entries.append(LayerState(g, kernel, np.ones_like(kernel), g.dense_crossbars))
    scalars = crossbar_scalars(entries, granularity)
    optimizer = getattr(self.model, "optimizer", None)
    step = int(np.asarray(optimizer.iterations)) if optimizer is not None else 0
    with self._writer.as_default():
      for name, value in scalars.items():
        tf.summary.scalar(name, value, step=step)
    self._writer.flush()
