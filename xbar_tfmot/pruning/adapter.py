"""One implementation of what both Keras flavours' pruning adapters do alike.

A flavour adapter (`tf_keras`, `keras3`) defines only its wrapper class (base class and mask
hooks) and its callbacks, and describes itself with an `Adapter`: its Keras module, its
wrapper, how it tells graph models from subclassed ones. Walking, wrapping, stripping,
listing wrappers and the loading scope are here, once. So are the wrapper's constructor
fields, `get_config` fields and stripped layer (`CrossbarWrapperMixin`).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np

from xbar_tfmot.core import schedules as xschedules
from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.pruning import allocation
from xbar_tfmot.pruning import hardware_aware as xhardware
from xbar_tfmot.pruning import plan

FLAVOUR_MODULES = {"tf_keras": "xbar_tfmot.pruning.tf_keras",
                   "keras3": "xbar_tfmot.pruning.keras3"}


def adapter_for(flavour: str) -> "Adapter":
  """The adapter of a flavour, importing its module on first use (TFMOT only for tf_keras)."""
  if flavour not in FLAVOUR_MODULES:
    raise PruningConfigError(
        f"flavour={flavour!r} is not supported; valid: {', '.join(FLAVOUR_MODULES)}.")
  return importlib.import_module(FLAVOUR_MODULES[flavour]).ADAPTER


class CrossbarWrapperMixin:
  """Fields, config and stripping shared by both flavours' `CrossbarPrune` wrappers.

  The wrapper class supplies `_kernel()` (the wrapped layer's kernel variable), `mask`, and
  `_serialize_schedule` / `_deserialize_schedule` for its Keras's serialisation.
  """

  CONFIG_FIELDS = ("granularity", "projection", "regrowth", "final_budget", "target_reduction",
                   "layer_index", "seed", "allocation", "hardware_aware")

  def _init_fields(self, layer, spec, granularity: str, pruning_schedule, projection: str,
                   regrowth: str, temperature, final_budget, target_reduction, layer_index: int,
                   seed: int, allocation: dict | None = None, hardware_aware=None) -> None:
    if spec is None:
      raise PruningConfigError(f"CrossbarPrune({layer.name!r}): spec is required (a CrossbarSpec).")
    self.spec = CrossbarSpec.from_dict(spec) if isinstance(spec, dict) else spec
    self.granularity = granularity
    self.pruning_schedule = (self._deserialize_schedule(pruning_schedule)
                             or xschedules.CrossbarConstant(0.5))
    self.projection = projection
    self.regrowth = regrowth
    self.temperature = (self._deserialize_schedule(temperature)
                        or xschedules.CrossbarTemperatureDecay(0.0))
    self.final_budget = final_budget
    self.target_reduction = target_reduction
    self.layer_index = layer_index
    self.seed = seed
    # Shared-budget modes (`plan.allocation_of`): the budget of each mask update is set from
    # outside (UpdateCrossbarPruning, pruning/allocation.py) instead of `budget_at`.
    self.allocation = None if allocation is None else dict(allocation)
    # Hardware-aware training (pruning/hardware_aware.py): the chip's kernel in training calls.
    self.hardware_aware = xhardware.coerce(hardware_aware)
    if self.hardware_aware is not None:
      self.hardware_aware.hardware.cells(self.spec)  # HardwareError now if they disagree
    self.geometry = None

  def crossbar_config(self) -> dict[str, Any]:
    """The wrapper's own `get_config` fields (the base class adds the wrapped layer)."""
    config = {name: getattr(self, name) for name in self.CONFIG_FIELDS}
    config["spec"] = self.spec.to_dict()
    config["pruning_schedule"] = self._serialize_schedule(self.pruning_schedule)
    config["temperature"] = self._serialize_schedule(self.temperature)
    if self.hardware_aware is not None:
      config["hardware_aware"] = self.hardware_aware.to_dict()
    return config

  def training_kernel(self, kernel, mask, training, step):
    """`kernel` (masked) as this training call computes with it: the chip's, drawn for
    `step`, under hardware-aware training; else `kernel`."""
    return xhardware.training_kernel(kernel, mask, training, self.hardware_aware, self.spec,
                                     self.seed, self.layer_index, step)

  def masked_kernel(self) -> np.ndarray:
    return np.asarray(self._kernel()) * np.asarray(self.mask)

  def stripped_layer(self):
    """A fresh copy of the wrapped layer whose kernel is the masked kernel."""
    inner = self.layer
    fresh = inner.__class__.from_config(inner.get_config())
    fresh.build(self._inner_input_shape)
    kernel, mask = self._kernel(), np.asarray(self.mask)
    fresh.set_weights([np.asarray(w) * mask if w is kernel else np.asarray(w)
                       for w in inner.weights])
    if hasattr(self, "_batch_input_shape"):  # tf_keras keeps a Sequential's input shape here
      fresh._batch_input_shape = self._batch_input_shape
    return fresh


@dataclasses.dataclass(frozen=True)
class Adapter:
  """One Keras flavour: its module, wrapper class and the few ways it differs.

  Attributes:
    keras: the flavour's Keras module (`tf_keras` through TFMOT, or `keras`).
    wrapper: its `CrossbarPrune` class.
    is_graph_model: True for Sequential and functional models (not subclassed ones).
    scope_objects: custom objects for loading pruned models.
    foreign_wrappers: other pruning wrappers that `strip` unwraps (TFMOT's on tf_keras).
    copy_input_layers: re-create `InputLayer`s of a pruned layer list (tf_keras cannot share).
    check: raises if the flavour cannot prune now (e.g. a Keras 3 backend other than TF).
  """

  keras: Any
  wrapper: type
  is_graph_model: Callable[[Any], bool]
  scope_objects: dict[str, Any]
  foreign_wrappers: tuple[type, ...] = ()
  copy_input_layers: bool = False
  check: Callable[[], None] = lambda: None

  def walk(self, model):
    """Leaf layers in model order; raises for nested subclassed models."""
    for layer in model.layers:
      if isinstance(layer, self.keras.Model):
        if not self.is_graph_model(layer):
          raise PruningConfigError(
              f"prune_crossbar: nested model {layer.name!r} is subclassed; subclassed models "
              f"are not supported (only Sequential and functional models).")
        yield from self.walk(layer)
      else:
        yield layer

  def prune(self, to_prune, *, spec: CrossbarSpec, granularity: str, schedule,
            projection: str, regrowth: str, policy: CrossbarPolicy, seed: int, temperature,
            hardware_aware=None):
    """`xbar_tfmot.prune_crossbar` for this flavour (arguments checked there)."""
    self.check()
    common = dict(spec=spec, granularity=granularity, pruning_schedule=schedule,
                  projection=projection, regrowth=regrowth, temperature=temperature, seed=seed,
                  hardware_aware=hardware_aware)
    wrap_all = hardware_aware is not None  # layers left dense are wrapped too (full mask)
    reduction = schedule.final_reduction
    keras = self.keras
    if isinstance(to_prune, (list, tuple)):
      return self._prune_list(list(to_prune), common, policy, reduction, wrap_all)
    if isinstance(to_prune, keras.Model):
      if not self.is_graph_model(to_prune):
        raise PruningConfigError(plan.SUBCLASSED.format(type(to_prune).__name__))
      plans = plan.plan_model(list(self.walk(to_prune)), spec, policy, reduction, wrap_all)

      def wrap(layer):
        return self.wrapper(layer, **plans[id(layer)], **common) if id(layer) in plans else layer

      return self._clone(to_prune, wrap)
    if isinstance(to_prune, keras.layers.Layer):
      return self._prune_list([to_prune], common, policy, reduction, wrap_all)[0]
    raise PruningConfigError(
        f"prune_crossbar can only prune a Sequential or functional keras model, a keras layer, "
        f"or a list of keras layers; got {type(to_prune).__name__}.")

  def _prune_list(self, items, common, policy, reduction, wrap_all=False):
    plans = plan.plan_list(items, common["spec"], policy, reduction, wrap_all)
    out = []
    for layer, args in zip(items, plans):
      if isinstance(layer, self.keras.layers.InputLayer) and self.copy_input_layers:
        out.append(layer.__class__.from_config(layer.get_config()))
      else:
        out.append(layer if args is None else self.wrapper(layer, **args, **common))
    return out

  def _clone(self, model, leaf_fn):
    """`model` cloned with `leaf_fn` applied to every leaf layer, nested models recursed."""

    def clone(layer):
      if isinstance(layer, self.keras.Model):
        return self.keras.models.clone_model(layer, clone_function=clone)
      return leaf_fn(layer)

    return self.keras.models.clone_model(model, clone_function=clone)

  def strip(self, model):
    """`xbar_tfmot.strip_crossbar_pruning` for this flavour."""
    if isinstance(model, self.wrapper):
      return model.stripped_layer()
    if not isinstance(model, self.keras.Model):
      raise PruningConfigError(
          f"strip_crossbar_pruning: expected a keras Model or a CrossbarPrune layer, got "
          f"{type(model).__name__}.")

    allocation.check_pools_met(self.crossbar_wrappers(model))

    def unwrap(layer):
      if isinstance(layer, self.wrapper):
        return layer.stripped_layer()
      if isinstance(layer, self.foreign_wrappers):
        return layer.layer
      return layer

    return self._clone(model, unwrap)

  def scope(self):
    """A custom-object scope in which pruned models of this flavour load."""
    return self.keras.utils.custom_object_scope(self.scope_objects)

  def crossbar_wrappers(self, model) -> list:
    """The crossbar wrappers of a model, nested models included, in model order."""
    out = []
    for layer in model.layers:
      if isinstance(layer, self.keras.Model):
        out += self.crossbar_wrappers(layer)
      elif isinstance(layer, self.wrapper):
        out.append(layer)
    return out
