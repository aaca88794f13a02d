"""Training callbacks for crossbar pruning: `UpdateCrossbarPruning`, `CrossbarPruningSummaries`.

A Keras callback must subclass its flavour's `Callback`, and the tf_keras ones build on TFMOT,
which must not be imported with `xbar_tfmot`. So the public names here are dispatchers. With
`flavour=`, calling one builds that flavour's callback at once. Without it (the usual case),
it builds a callback that takes the flavour from the model Keras gives it in `set_model` and
delegates to that flavour's implementation, so one callback object never depends on which
models were built earlier in the process. `isinstance` against the public names holds for
every flavour's implementation. The flavour-neutral counting and writing that the summaries
do live here too.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Mapping

import numpy as np

from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning import adapter


class _FlavourDispatch(type):
  """Metaclass: `Cls(..., flavour=...)` builds the flavour's implementation of `Cls`."""

  def __call__(cls, *args, flavour: str | None = None, **kwargs):
    if flavour is None:
      return _FromModel(cls.__name__, args, kwargs)
    if flavour not in adapter.FLAVOUR_MODULES:
      raise PruningConfigError(f"{cls.__name__}: flavour={flavour!r} is not supported; valid: "
                               f"{', '.join(adapter.FLAVOUR_MODULES)}.")
    return getattr(_module(flavour), cls.__name__)(*args, **kwargs)

  def __instancecheck__(cls, obj):
    if isinstance(obj, _FromModel):
      return obj.kind == cls.__name__
    return any(isinstance(obj, getattr(sys.modules[m], cls.__name__))
               for m in adapter.FLAVOUR_MODULES.values() if m in sys.modules)


def _module(flavour: str):
  adapter.adapter_for(flavour)  # imports the flavour's module
  return sys.modules[adapter.FLAVOUR_MODULES[flavour]]


class _FromModel:
  """A callback whose flavour is that of the model it is set on; delegates everything to the
  flavour's implementation, built in `set_model` (Keras calls it before any other hook)."""

  def __init__(self, kind: str, args: tuple, kwargs: dict):
    self.kind, self._args, self._kwargs = kind, args, kwargs
    self.implementation = None  # the flavour's callback, once set on a model
    self._params = None
    if kind == "CrossbarPruningSummaries":
      SummariesMixin.check_arguments(*args, **kwargs)

  def set_model(self, model) -> None:
    flavour = introspection.flavour(model)
    if self.implementation is None or introspection.flavour(self.implementation) != flavour:
      self.implementation = getattr(_module(flavour), self.kind)(*self._args, **self._kwargs)
      if self._params is not None:
        self.implementation.set_params(self._params)
    self.implementation.set_model(model)

  def set_params(self, params) -> None:
    self._params = params
    if self.implementation is not None:
      self.implementation.set_params(params)

  def __getattr__(self, name):
    impl = self.__dict__.get("implementation")
    if impl is None:
      if name.startswith("on_"):
        return lambda *args, **kwargs: None
      raise AttributeError(name)
    return getattr(impl, name)


class UpdateCrossbarPruning(metaclass=_FlavourDispatch):
  """Advances the pruning step every batch; required in `fit` (like TFMOT's `UpdatePruningStep`).

  `UpdateCrossbarPruning(flavour=None)`. On tf_keras it is TFMOT's `UpdatePruningStep` (which
  also works unchanged) plus a check that the model holds crossbar wrappers; on Keras 3 a
  `keras.callbacks.Callback` doing the same for the Keras 3 wrappers. Without `flavour`, the
  flavour is the fitted model's.
  """


class CrossbarPruningSummaries(metaclass=_FlavourDispatch):
  """Writes per-layer and total crossbar counts and kept-energy ratios to TensorBoard.

  `CrossbarPruningSummaries(log_dir, update_freq="epoch", flavour=None)`; see `SummariesMixin`
  for the scalar names. Without `flavour`, the flavour is the fitted model's.
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

  Each flavour's class combines this with its Keras's `Callback`.
  """

  def __init__(self, log_dir: str, update_freq: str | int = "epoch"):
    super().__init__()
    self.check_arguments(log_dir, update_freq)
    self.log_dir = log_dir
    self.update_freq = update_freq
    self._writer = None

  @staticmethod
  def check_arguments(log_dir: str, update_freq: str | int = "epoch") -> None:
    if not isinstance(log_dir, str) or not log_dir:
      raise PruningConfigError(
          f"CrossbarPruningSummaries: log_dir={log_dir!r}; valid: a non-empty path.")
    if update_freq != "epoch" and (isinstance(update_freq, bool) or
                                   not isinstance(update_freq, int) or update_freq < 1):
      raise PruningConfigError(
          f"CrossbarPruningSummaries: update_freq={update_freq!r}; valid: 'epoch' or an integer "
          f">= 1 (batches).")

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
    flavour_adapter = adapter.adapter_for(introspection.flavour(self.model))
    wrappers = flavour_adapter.crossbar_wrappers(self.model)
    granularity = wrappers[0].granularity if wrappers else "crossbar"
    entries = [LayerState(w.geometry, np.asarray(w._kernel()), np.asarray(w.mask),
                          w.current_budget()) for w in wrappers]
    wrapped_inner = {id(w.layer) for w in wrappers}
    spec = wrappers[0].spec if wrappers else None
    for layer in flavour_adapter.walk(self.model):
      if (spec is not None and introspection.is_mapped(layer) and id(layer) not in wrapped_inner
          and layer.built):
        g = introspection.geometry_of(layer, spec)
        kernel = np.asarray(introspection.mapped_kernel(layer))
        entries.append(LayerState(g, kernel, np.ones_like(kernel), g.dense_crossbars))
    scalars = crossbar_scalars(entries, granularity)
    optimizer = getattr(self.model, "optimizer", None)
    step = int(np.asarray(optimizer.iterations)) if optimizer is not None else 0
    with self._writer.as_default():
      for name, value in scalars.items():
        tf.summary.scalar(name, value, step=step)
    self._writer.flush()


def fixed_masks(model, masks: Mapping[str, np.ndarray]) -> list:
  """Callbacks (none, or one) that keep the mapped kernels of `masks`' layers multiplied by
  their 0/1 masks while `model` trains: at the start and after every batch, so a weight the
  optimizer regrows never reaches the next forward pass. Layers are found by name, wrapped or
  not; the callback is of the model's flavour."""
  if not masks:
    return []
  import tensorflow as tf
  keras = introspection.keras_module(introspection.flavour(model))
  kernels = introspection.mapped_kernels(model, masks, "fixed_masks")
  pairs = [(kernels[n], tf.constant(mask, kernels[n].dtype)) for n, mask in masks.items()]

  @tf.function
  def apply():
    for kernel, mask in pairs:
      kernel.assign(tf.convert_to_tensor(kernel) * mask)

  class FixedMasks(keras.callbacks.Callback):

    def on_train_begin(self, logs=None):
      apply()

    def on_train_batch_end(self, batch, logs=None):
      apply()

  return [FixedMasks()]
