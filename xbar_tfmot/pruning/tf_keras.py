"""tf_keras adapter: crossbar pruning on TFMOT 0.8.1's wrapper and `Pruning` object.

`CrossbarPrune` subclasses TFMOT's `PruneLowMagnitude`, so `UpdatePruningStep`,
`PruningSummaries` and `strip_pruning` treat it as a pruning wrapper; its `CrossbarPruning`
subclasses `pruning_impl.Pruning` and replaces TFMOT's private mask-update hook (see
`xbar_tfmot._compat`, which checks the version pin). TFMOT's wrapper computes the mask update
inside `tf.cond` at the schedule's update steps only, and multiplies the weights by the mask at
the start of each training forward pass, so the mask update follows the optimiser's step:
projected gradient descent. Walking, wrapping and stripping are `adapter.Adapter`'s. Importing
this module imports TFMOT, which sets `TF_USE_LEGACY_KERAS=1`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from xbar_tfmot import _compat
from xbar_tfmot.core import schedules as xschedules
from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.core.geometry import LayerGeometry
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning import adapter, allocation
from xbar_tfmot.pruning import callbacks as xcallbacks
from xbar_tfmot.pruning import distillation
from xbar_tfmot.pruning import hardware_aware as xhardware
from xbar_tfmot.pruning import plan

_tfmot = _compat.tfmot_sparsity()
keras = _tfmot.keras

# The schedules stay TFMOT-free (they also serve Keras 3); on this path they count as TFMOT
# pruning schedules, which is what `PruneLowMagnitude` expects of its `pruning_schedule`.
for _cls in (xschedules.CrossbarConstant, xschedules.CrossbarPolynomialDecay):
  _tfmot.pruning_schedule.PruningSchedule.register(_cls)


class CrossbarPruning(_tfmot.pruning_impl.Pruning):
  """TFMOT's `Pruning` with the crossbar projection as its mask update.

  The TFMOT threshold variable holds the layer's current crossbar budget, so TFMOT's
  `PruningSummaries` logs it as the layer's "threshold".
  """

  def __init__(self, training_step_fn, pruning_vars, pruning_schedule, geometry: LayerGeometry,
               granularity: str, final_budget: int, projection: str, regrowth: str,
               temperature: xschedules.CrossbarTemperatureDecay, layer_index: int, seed: int,
               allocation: dict | None = None):
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
    self.allocation = allocation
    self.install_into = None  # a layer whose kernel is replaced by the masked kernel in call
    self.chip_kernel = None  # hardware-aware training: (kernel, mask) -> the chip's kernel

  def budget(self, step) -> tf.Tensor:
    """Crossbar budget at `step`: from dense down to `final_budget` along the schedule."""
    _, schedule, state = _compat.tfmot_pruning_state(self)
    if self.allocation:  # set before this step by UpdateCrossbarPruning (0: not yet, dense)
      shared = tf.cast(state[0][2], tf.int32)
      return tf.where(shared >= 1, shared, self.geometry.dense_crossbars)
    return plan.budget_at(schedule, self.geometry.dense_crossbars,
                          self.final_budget, step)

  def update_mask(self, weights):
    """TFMOT's mask-update hook: `(threshold, mask)`, the threshold holding the budget; a
    wrapper at its dense budget keeps the mask it holds (`plan.holds_mask`)."""
    step_fn, _, state = _compat.tfmot_pruning_state(self)
    if plan.holds_mask(self.geometry, self.final_budget, self.allocation):
      return (tf.constant(self.geometry.dense_crossbars, weights.dtype),
              tf.convert_to_tensor(state[0][1]))
    step = step_fn()
    budget = self.budget(step)
    mask = plan.mask_at(self.geometry, weights, budget, self.granularity, self.projection,
                        self.temperature, self.seed, self.layer_index, step)
    return tf.cast(budget, weights.dtype), mask

  def frozen(self) -> tf.Tensor:
    """True from the schedule's `end_step` on (never for `end_step=-1`)."""
    step_fn, schedule, _ = _compat.tfmot_pruning_state(self)
    return plan.frozen(schedule, step_fn())

  def straight_through_kernel(self, weight, mask) -> tf.Tensor:
    """`weight * mask` forward; until the mask freezes the gradient reaches every weight."""
    return plan.straight_through_kernel(weight, mask, self.frozen())

  def weight_mask_op(self):
    if self.regrowth == "reset":
      op = super().weight_mask_op()
    else:
      op = self._zero_when_frozen()
    if self.install_into is not None:
      weight, mask, _ = _compat.tfmot_pruning_state(self)[2][0]
      if self.regrowth == "reset":
        kernel = tf.convert_to_tensor(weight) * tf.cast(mask, weight.dtype)
      else:
        kernel = self.straight_through_kernel(weight, mask)
      if self.chip_kernel is not None:
        kernel = self.chip_kernel(kernel, mask)
      _compat.set_layer_attribute(self.install_into,
                                  introspection.kernel_attribute(self.install_into), kernel)
    return op

  def _zero_when_frozen(self):
    """Straight-through: the weights keep their values until the mask freezes, then are zeroed."""

    def zero(distribution):
      def assign_all():
        return tf.group([
            distribution.extended.update(w, lambda v, m: v.assign(v * m), args=(mask,))
            for w, mask, _ in _compat.tfmot_pruning_state(self)[2]])
      return tf.cond(self.frozen(), assign_all, tf.no_op)

    context = tf.distribute.get_replica_context()
    if context is not None:
      return context.merge_call(zero)
    return zero(tf.distribute.get_strategy())


_compat.override_tfmot_mask_hook(CrossbarPruning, CrossbarPruning.update_mask)


class CrossbarPrune(adapter.CrossbarWrapperMixin, _tfmot.pruning_wrapper.PruneLowMagnitude):
  """A crossbar-pruning wrapper around one Conv2D, Conv1D or Dense layer, or the pointwise
  kernel of a SeparableConv2D (TFMOT's registry prunes `pointwise_kernel` there) (tf_keras)."""

  _serialize_schedule = staticmethod(xschedules.serialize)

  @staticmethod
  def _deserialize_schedule(value):
    return xschedules.deserialize(value) if isinstance(value, dict) else value

  def __init__(self, layer, spec=None, granularity: str = "crossbar", pruning_schedule=None,
               projection: str = "rpp", regrowth: str = "reset", temperature=None,
               final_budget: int | None = None, target_reduction: float | None = None,
               layer_index: int = 0, seed: int = 0, allocation: dict | None = None,
               hardware_aware=None, **kwargs):
    for unused in ("block_size", "block_pooling_type", "sparsity_m_by_n"):
      kwargs.pop(unused, None)
    plan.check_wrappable("CrossbarPrune", layer, final_budget, target_reduction)
    schedule = self._deserialize_schedule(pruning_schedule) or xschedules.CrossbarConstant(0.5)
    super().__init__(layer, pruning_schedule=schedule, **kwargs)
    self._init_fields(layer, spec, granularity, schedule, projection, regrowth, temperature,
                      final_budget, target_reduction, layer_index, seed, allocation,
                      hardware_aware)

  def build(self, input_shape):
    super().build(input_shape)
    self._inner_input_shape = tf.TensorShape(input_shape).as_list()
    self.geometry = introspection.geometry_of(self.layer, self.spec)
    budget = plan.final_budget_of(self.geometry, self.final_budget, self.target_reduction)
    self.final_budget = budget
    step_fn, _, _ = _compat.tfmot_pruning_state(self.pruning_obj)
    self.pruning_obj = CrossbarPruning(
        training_step_fn=step_fn, pruning_vars=self.pruning_vars,
        pruning_schedule=self.pruning_schedule, geometry=self.geometry,
        granularity=self.granularity, final_budget=budget, projection=self.projection,
        regrowth=self.regrowth, temperature=self.temperature, layer_index=self.layer_index,
        seed=self.seed, allocation=self.allocation)

  def call(self, inputs, training=None, **kwargs):
    if training is None:
      training = keras.backend.learning_phase()
    hardware = self.hardware_aware is not None and xhardware.is_training(training) is not False
    if self.regrowth == "reset" and not hardware:
      return super().call(inputs, training=training, **kwargs)
    kernel = self._kernel()
    self.pruning_obj.install_into = self.layer
    if hardware:
      self.pruning_obj.chip_kernel = lambda k, mask: self.training_kernel(
          k, mask, training, self.pruning_step)
    try:
      return super().call(inputs, training=training, **kwargs)
    finally:
      self.pruning_obj.install_into = None
      self.pruning_obj.chip_kernel = None
      _compat.set_layer_attribute(self.layer, introspection.kernel_attribute(self.layer), kernel)

  def _kernel(self):
    return introspection.mapped_kernel(self.layer)

  @property
  def mask(self) -> tf.Variable:
    return self.pruning_vars[0][1]

  def current_budget(self) -> int:
    """The crossbar budget of the last mask update (TFMOT's "threshold" variable)."""
    return int(self.pruning_vars[0][2].numpy())

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    for unused in ("block_size", "block_pooling_type"):
      config.pop(unused, None)
    config.update(self.crossbar_config())
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["layer"] = keras.layers.deserialize(config.pop("layer"))
    return cls(**config)


def _is_graph_model(model) -> bool:
  return isinstance(model, keras.Sequential) or _compat.tf_keras_is_graph_network(model)


ADAPTER = adapter.Adapter(
    keras=keras, wrapper=CrossbarPrune, is_graph_model=_is_graph_model,
    scope_objects={"CrossbarPrune": CrossbarPrune,
                   "PruneLowMagnitude": _tfmot.pruning_wrapper.PruneLowMagnitude,
                   "DistillationLoss": distillation.DistillationLoss,
                   "distillation_accuracy": distillation.distillation_accuracy},
    foreign_wrappers=(_tfmot.pruning_wrapper.PruneLowMagnitude,), copy_input_layers=True)


class UpdateCrossbarPruning(_tfmot.pruning_callbacks.UpdatePruningStep):
  """TFMOT's `UpdatePruningStep` that also checks the model holds crossbar wrappers.

  TFMOT's own `UpdatePruningStep` works unchanged with crossbar wrappers, except under a
  `global_score` policy: only this callback splits its model-wide budget; without it the
  layers stay dense and `strip_crossbar_pruning` raises. This one also fails early, naming the
  fix, when the model being fit was never passed to `prune_crossbar`.
  """

  def __init__(self, allocation_data=None):
    super().__init__()
    self.allocation_data = allocation_data  # batches for the gradient scores (GRADIENT_SCORES)

  def on_train_begin(self, logs=None):
    if not ADAPTER.crossbar_wrappers(self.model):
      raise PruningConfigError(
          "UpdateCrossbarPruning: the model has no crossbar-pruned layer; fit the model "
          "returned by xbar_tfmot.prune_crossbar.")
    super().on_train_begin(logs)
    self._wrappers = ADAPTER.crossbar_wrappers(self.model)
    allocation.check_fit(self.model, self._wrappers, self.allocation_data)

  def on_train_batch_begin(self, batch, logs=None):
    allocation.before_batch(self.model, self._wrappers, self.allocation_data)


class CrossbarPruningSummaries(xcallbacks.SummariesMixin, keras.callbacks.Callback):
  __doc__ = xcallbacks.SummariesMixin.__doc__
