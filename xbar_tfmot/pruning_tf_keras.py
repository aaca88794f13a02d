"""tf_keras adapter: crossbar pruning on TFMOT 0.8.1's wrapper and `Pruning` object.

`CrossbarPrune` subclasses TFMOT's `PruneLowMagnitude`, so `UpdatePruningStep`,
`PruningSummaries` and `strip_pruning` treat it as a pruning wrapper; its `CrossbarPruning`
subclasses `pruning_impl.Pruning` and overrides `_maybe_update_block_mask(weights)` (private
in TFMOT, hence the version pin checked on import and in the tests). TFMOT's wrapper computes
the mask update inside `tf.cond` at the schedule's update steps only, and multiplies the
weights by the mask at the start of each training forward pass, so the mask update follows
the optimiser's step: projected gradient descent. Importing this module imports TFMOT,
which sets `TF_USE_LEGACY_KERAS=1`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.keras.compat import keras
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_callbacks
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_impl
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from xbar_tfmot import callbacks as xcallbacks
from xbar_tfmot import layers as xlayers
from xbar_tfmot import pruning_core as core
from xbar_tfmot import schedules as xschedules
from xbar_tfmot.geometry import LayerGeometry
from xbar_tfmot.policy import CrossbarPolicy
from xbar_tfmot.projection import project  # noqa: F401  (re-exported for the tests)
from xbar_tfmot.spec import CrossbarSpec

TFMOT_VERSION = "0.8.1"

if tfmot.__version__ != TFMOT_VERSION or not callable(
    getattr(pruning_impl.Pruning, "_maybe_update_block_mask", None)):
  raise ImportError(
      f"xbar_tfmot's tf_keras path overrides the private Pruning._maybe_update_block_mask of "
      f"tensorflow-model-optimization {TFMOT_VERSION}; found {tfmot.__version__}. Install "
      f"tensorflow-model-optimization=={TFMOT_VERSION}.")

# The schedules stay TFMOT-free (they also serve Keras 3); on this path they count as TFMOT
# pruning schedules, which is what `PruneLowMagnitude` expects of its `pruning_schedule`.
for _cls in (xschedules.CrossbarConstant, xschedules.CrossbarPolynomialDecay):
  pruning_schedule.PruningSchedule.register(_cls)


class CrossbarPruning(pruning_impl.Pruning):
  """TFMOT's `Pruning` with the crossbar projection as its mask update.

  The TFMOT threshold variable holds the layer's current crossbar budget, so TFMOT's
  `PruningSummaries` logs it as the layer's "threshold".
  """

  def __init__(self, training_step_fn, pruning_vars, pruning_schedule, geometry: LayerGeometry,
               granularity: str, final_budget: int, projection: str, regrowth: str,
               temperature: xschedules.CrossbarTemperatureDecay, layer_index: int, seed: int):
    super().__init__(training_step_fn=training_step_fn, pruning_vars=pruning_vars,
                     pruning_schedule=pruning_schedule, block_size=(1, 1),
                     block_pooling_type="AVG")
    self.geometry = geometry
    self.granularity = granularity
    self.final_budget = final_budget
    self.projection = projection
    self.regrowth = regrowth
    self.temperature = temperature
    self.layer_index = layer_index
    self.seed = seed
    self.install_into = None  # a layer whose kernel is replaced by the masked kernel in call

  def budget(self, step) -> tf.Tensor:
    """Crossbar budget at `step`: from dense down to `final_budget` along the schedule."""
    return core.budget_at(self._pruning_schedule, self.geometry.dense_crossbars,
                          self.final_budget, step)

  def _maybe_update_block_mask(self, weights):
    step = self._step_fn()
    budget = self.budget(step)
    mask = core.mask_at(self.geometry, weights, budget, self.granularity, self.projection,
                        self.temperature, self.seed, self.layer_index, step)
    return tf.cast(budget, weights.dtype), mask

  def frozen(self) -> tf.Tensor:
    """True from the schedule's `end_step` on (never for `end_step=-1`)."""
    return core.frozen(self._pruning_schedule, self._step_fn())

  def straight_through_kernel(self, weight, mask) -> tf.Tensor:
    """`weight * mask` forward; until the mask freezes the gradient reaches every weight."""
    return core.straight_through_kernel(weight, mask, self.frozen())

  def weight_mask_op(self):
    if self.regrowth == "reset":
      op = super().weight_mask_op()
    else:
      op = self._zero_when_frozen()
    if self.install_into is not None:
      weight, mask, _ = self._pruning_vars[0]
      object.__setattr__(self.install_into, "kernel", self.straight_through_kernel(weight, mask))
    return op

  def _zero_when_frozen(self):
    """Straight-through: the weights keep their values until the mask freezes, then are zeroed."""

    def zero(distribution):
      def assign_all():
        return tf.group([
            distribution.extended.update(w, lambda v, m: v.assign(v * m), args=(mask,))
            for w, mask, _ in self._pruning_vars])
      return tf.cond(self.frozen(), assign_all, tf.no_op)

    context = tf.distribute.get_replica_context()
    if context is not None:
      return context.merge_call(zero)
    return zero(tf.distribute.get_strategy())


class CrossbarPrune(pruning_wrapper.PruneLowMagnitude):
  """A crossbar-pruning wrapper around one Conv2D, Conv1D or Dense layer (tf_keras)."""

  def __init__(self, layer, spec: CrossbarSpec | dict | None = None, granularity: str = "crossbar",
               pruning_schedule=None, projection: str = "rpp", regrowth: str = "reset",
               temperature=None, final_budget: int | None = None,
               target_reduction: float | None = None, layer_index: int = 0, seed: int = 0,
               **kwargs):
    for unused in ("block_size", "block_pooling_type", "sparsity_m_by_n"):
      kwargs.pop(unused, None)
    core.check_wrappable("CrossbarPrune", layer, final_budget, target_reduction)
    schedule = pruning_schedule or xschedules.CrossbarConstant(0.5)
    if isinstance(schedule, dict):
      schedule = xschedules.deserialize(schedule)
    if isinstance(temperature, dict):
      temperature = xschedules.deserialize(temperature)
    super().__init__(layer, pruning_schedule=schedule, **kwargs)
    self.spec = CrossbarSpec.from_dict(spec) if isinstance(spec, dict) else spec
    self.granularity = granularity
    self.projection = projection
    self.regrowth = regrowth
    self.temperature = temperature or xschedules.CrossbarTemperatureDecay(0.0)
    self.final_budget = final_budget
    self.target_reduction = target_reduction
    self.layer_index = layer_index
    self.seed = seed
    self.geometry = None
    xcallbacks.note_flavour("tf_keras")

  def build(self, input_shape):
    super().build(input_shape)
    self._inner_input_shape = tf.TensorShape(input_shape).as_list()
    self.geometry = xlayers.geometry_of(self.layer, self.spec)
    budget = core.final_budget_of(self.geometry, self.final_budget, self.target_reduction)
    self.final_budget = budget
    self.pruning_obj = CrossbarPruning(
        training_step_fn=self.pruning_obj._step_fn, pruning_vars=self.pruning_vars,
        pruning_schedule=self.pruning_schedule, geometry=self.geometry,
        granularity=self.granularity, final_budget=budget, projection=self.projection,
        regrowth=self.regrowth, temperature=self.temperature, layer_index=self.layer_index,
        seed=self.seed)

  def call(self, inputs, training=None, **kwargs):
    if self.regrowth == "reset":
      return super().call(inputs, training=training, **kwargs)
    kernel = self.layer.kernel
    self.pruning_obj.install_into = self.layer
    try:
      return super().call(inputs, training=training, **kwargs)
    finally:
      self.pruning_obj.install_into = None
      object.__setattr__(self.layer, "kernel", kernel)

  @property
  def mask(self) -> tf.Variable:
    return self.pruning_vars[0][1]

  def masked_kernel(self) -> np.ndarray:
    return self.layer.kernel.numpy() * self.mask.numpy()

  def current_budget(self) -> int:
    """The crossbar budget of the last mask update (TFMOT's "threshold" variable)."""
    return int(self.pruning_vars[0][2].numpy())

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    for unused in ("block_size", "block_pooling_type"):
      config.pop(unused, None)
    config.update({
        "spec": self.spec.to_dict(),
        "granularity": self.granularity,
        "pruning_schedule": xschedules.serialize(self.pruning_schedule),
        "projection": self.projection,
        "regrowth": self.regrowth,
        "temperature": xschedules.serialize(self.temperature),
        "final_budget": self.final_budget,
        "target_reduction": self.target_reduction,
        "layer_index": self.layer_index,
        "seed": self.seed,
    })
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["layer"] = keras.layers.deserialize(config.pop("layer"))
    return cls(**config)

  def stripped_layer(self):
    """A fresh copy of the wrapped layer whose kernel is the masked kernel."""
    inner = self.layer
    fresh = inner.__class__.from_config(inner.get_config())
    fresh.build(self._inner_input_shape)
    fresh.set_weights([
        w.numpy() * self.mask.numpy() if w is inner.kernel else w.numpy() for w in inner.weights])
    if hasattr(self, "_batch_input_shape"):
      fresh._batch_input_shape = self._batch_input_shape
    return fresh


def _subclassed(model) -> bool:
  return not (isinstance(model, keras.Sequential) or model._is_graph_network)


def _walk(model):
  """Leaf layers in model order; raises for nested subclassed models."""
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      if _subclassed(layer):
        raise ValueError(
            f"prune_crossbar: nested model {layer.name!r} is subclassed; subclassed models are "
            f"not supported (only Sequential and functional models).")
      yield from _walk(layer)
    else:
      yield layer


def prune(to_prune, *, spec: CrossbarSpec, granularity: str, schedule, projection: str,
          regrowth: str, policy: CrossbarPolicy, seed: int, temperature):
  """tf_keras implementation of `xbar_tfmot.prune_crossbar` (arguments checked there)."""
  common = dict(spec=spec, granularity=granularity, pruning_schedule=schedule,
                projection=projection, regrowth=regrowth, temperature=temperature, seed=seed)
  reduction = schedule.final_reduction

  if isinstance(to_prune, (list, tuple)):
    return _prune_list(list(to_prune), common, policy, reduction)
  if isinstance(to_prune, keras.Model):
    if _subclassed(to_prune):
      raise ValueError(core.SUBCLASSED.format(type(to_prune).__name__))
    return _prune_model(to_prune, common, policy, reduction)
  if isinstance(to_prune, keras.layers.Layer):
    return _prune_list([to_prune], common, policy, reduction)[0]
  raise ValueError(
      f"prune_crossbar can only prune a Sequential or functional keras model, a keras layer, or "
      f"a list of keras layers; got {type(to_prune).__name__}.")


def _prune_list(items, common, policy, reduction):
  plan = core.plan_list(items, common["spec"], policy, reduction)
  out = []
  for layer, args in zip(items, plan):
    if isinstance(layer, keras.layers.InputLayer):
      out.append(layer.__class__.from_config(layer.get_config()))
    else:
      out.append(layer if args is None else CrossbarPrune(layer, **args, **common))
  return out


def _prune_model(model, common, policy, reduction):
  plan = core.plan_model(list(_walk(model)), common["spec"], policy, reduction)

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, input_tensors=None, clone_function=clone)
    if id(layer) in plan:
      return CrossbarPrune(layer, **plan[id(layer)], **common)
    return layer

  return keras.models.clone_model(model, input_tensors=None, clone_function=clone)


def strip(model):
  """tf_keras implementation of `xbar_tfmot.strip_crossbar_pruning`."""
  if isinstance(model, CrossbarPrune):
    return model.stripped_layer()
  if not isinstance(model, keras.Model):
    raise ValueError(
        f"strip_crossbar_pruning: expected a keras Model or a CrossbarPrune layer, got "
        f"{type(model).__name__}.")

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, input_tensors=None, clone_function=clone)
    if isinstance(layer, CrossbarPrune):
      return layer.stripped_layer()
    if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
      return layer.layer
    return layer

  return keras.models.clone_model(model, input_tensors=None, clone_function=clone)


def scope():
  """Custom objects for loading pruned tf_keras models."""
  return keras.utils.custom_object_scope({
      "CrossbarPrune": CrossbarPrune,
      "PruneLowMagnitude": pruning_wrapper.PruneLowMagnitude,
  })


def crossbar_wrappers(model) -> list[CrossbarPrune]:
  """The crossbar wrappers of a model, nested models included, in model order."""
  out = []
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      out += crossbar_wrappers(layer)
    elif isinstance(layer, CrossbarPrune):
      out.append(layer)
  return out


class UpdateCrossbarPruning(pruning_callbacks.UpdatePruningStep):
  """TFMOT's `UpdatePruningStep` that also checks the model holds crossbar wrappers.

  TFMOT's own `UpdatePruningStep` works unchanged with crossbar wrappers; this one fails
  early, naming the fix, when the model being fit was never passed to `prune_crossbar`.
  """

  def on_train_begin(self, logs=None):
    if not crossbar_wrappers(self.model):
      raise ValueError(
          "UpdateCrossbarPruning: the model has no crossbar-pruned layer; fit the model "
          "returned by xbar_tfmot.prune_crossbar.")
    super().on_train_begin(logs)


class CrossbarPruningSummaries(xcallbacks.SummariesMixin, keras.callbacks.Callback):
  __doc__ = xcallbacks.SummariesMixin.__doc__

  def _wrappers(self):
    return crossbar_wrappers(self.model)

  def _leaves(self):
    return _walk(self.model)
