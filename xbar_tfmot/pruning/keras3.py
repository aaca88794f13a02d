"""Keras 3 adapter: crossbar pruning for `import keras` models (TensorFlow backend).

`CrossbarPrune` is a `keras.layers.Wrapper` with the semantics of the tf_keras wrapper (itself
TFMOT's `PruneLowMagnitude`): a mask, a budget and a step counter as non-trainable weights; in
each training call the step advances (`UpdateCrossbarPruning` must set it to 0 first, as TFMOT's
`UpdatePruningStep` does), the mask is recomputed at the schedule's update steps by the shared
plan (`plan.mask_at`), and the kernel is set to kernel times mask (`reset`), or the
layer computes with `kernel * mask` and a straight-through gradient (`straight_through`), until
the mask freezes at `end_step`. The mask update follows the optimiser's step of the previous
batch: projected gradient descent, as on tf_keras.

Wrappers and schedules are registered Keras serialisables (package `xbar_tfmot`), so a pruned
model saved as `.keras` reloads with `keras.saving.load_model` once `xbar_tfmot` is imported,
without a scope. Nothing here imports TFMOT or tf_keras, so `tf.keras` is left alone.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from xbar_tfmot import _compat
from xbar_tfmot.core import schedules as xschedules
from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning import adapter, allocation
from xbar_tfmot.pruning import callbacks as xcallbacks
from xbar_tfmot.pruning import distillation
from xbar_tfmot.pruning import plan

PACKAGE = "xbar_tfmot"

for _cls in xschedules.SCHEDULES.values():
  keras.saving.register_keras_serializable(package=PACKAGE)(_cls)
for _obj in (distillation.DistillationLoss, distillation.distillation_accuracy):
  keras.saving.register_keras_serializable(package=PACKAGE)(_obj)


def _schedule(value: Any):
  """A schedule from itself, Keras 3's serialised form, or `schedules.serialize`'s form."""
  if not isinstance(value, dict):
    return value
  if "registered_name" in value or "module" in value:
    return keras.saving.deserialize_keras_object(value)
  return xschedules.deserialize(value)


def _check_backend() -> None:
  if keras.backend.backend() != "tensorflow":
    raise PruningConfigError(
        f"prune_crossbar: Keras 3 backend {keras.backend.backend()!r} is not supported; valid: "
        f"'tensorflow' (set KERAS_BACKEND=tensorflow). The projection is TensorFlow code.")


@keras.saving.register_keras_serializable(package=PACKAGE)
class CrossbarPrune(adapter.CrossbarWrapperMixin, keras.layers.Wrapper):
  """A crossbar-pruning wrapper around one Conv2D, Conv1D or Dense layer, or the pointwise
  kernel of a SeparableConv2D (Keras 3)."""

  _serialize_schedule = staticmethod(keras.saving.serialize_keras_object)
  _deserialize_schedule = staticmethod(_schedule)

  def __init__(self, layer, spec=None, granularity: str = "crossbar", pruning_schedule=None,
               projection: str = "rpp", regrowth: str = "reset", temperature=None,
               final_budget: int | None = None, target_reduction: float | None = None,
               layer_index: int = 0, seed: int = 0, allocation: dict | None = None,
               hardware_aware=None, **kwargs):
    plan.check_wrappable("CrossbarPrune", layer, final_budget, target_reduction)
    kwargs.setdefault("name", f"crossbar_prune_{layer.name}")
    super().__init__(layer, **kwargs)
    self._init_fields(layer, spec, granularity, pruning_schedule, projection, regrowth,
                      temperature, final_budget, target_reduction, layer_index, seed,
                      allocation, hardware_aware)

  def build(self, input_shape=None):
    super().build(input_shape)
    self._inner_input_shape = tuple(input_shape)
    self.geometry = introspection.geometry_of(self.layer, self.spec)
    self.final_budget = plan.final_budget_of(self.geometry, self.final_budget,
                                             self.target_reduction)
    kernel = self._kernel()
    dense = self.geometry.dense_crossbars
    self.mask = self.add_weight(name="mask", shape=tuple(kernel.shape), dtype=kernel.dtype,
                                initializer="ones", trainable=False)
    self.budget = self.add_weight(name="budget", shape=(), dtype="int32", trainable=False,
                                  initializer=keras.initializers.Constant(dense))
    self.pruning_step = self.add_weight(name="pruning_step", shape=(), dtype="int64",
                                        trainable=False,
                                        initializer=keras.initializers.Constant(-1))

  def _kernel_attribute(self) -> str:
    """The attribute of the wrapped layer's mapped kernel variable (Keras 3 Conv and Dense
    keep it in `_kernel`, behind their `kernel` property)."""
    attribute = introspection.kernel_attribute(self.layer)
    return "_kernel" if attribute == "kernel" and hasattr(self.layer, "_kernel") else attribute

  def _kernel(self):
    """The wrapped layer's mapped kernel variable."""
    return getattr(self.layer, self._kernel_attribute())

  def frozen(self, step=None) -> tf.Tensor:
    return plan.frozen(self.pruning_schedule, self.pruning_step.value if step is None else step)

  def _update(self):
    """One training step's bookkeeping: step + 1, mask update when due (none for a wrapper
    at its dense budget: `plan.holds_mask`), reset's zeroing."""
    self.pruning_step.assign(self.pruning_step.value + 1)
    step = tf.convert_to_tensor(self.pruning_step.value)
    check = tf.debugging.assert_greater_equal(step, tf.constant(1, tf.int64),
                                              message=plan.CALLBACK_MISSING)
    kernel = self._kernel()
    with tf.control_dependencies([check]):

      def update():
        if self.allocation:  # set before this step by UpdateCrossbarPruning
          budget = tf.convert_to_tensor(self.budget.value)
        else:
          budget = plan.budget_at(self.pruning_schedule, self.geometry.dense_crossbars,
                                  self.final_budget, step)
        if not plan.holds_mask(self.geometry, self.final_budget, self.allocation):
          value = tf.convert_to_tensor(kernel.value)
          self.mask.assign(plan.mask_at(
              self.geometry, value, budget, self.granularity, self.projection,
              self.temperature, self.seed, self.layer_index, step))
        self.budget.assign(budget)
        return tf.constant(True)

      tf.cond(self.pruning_schedule.should_update(step), update, lambda: tf.constant(False))
    if self.regrowth == "reset":
      kernel.assign(kernel.value * self.mask.value)
    else:
      def zero():
        kernel.assign(kernel.value * self.mask.value)
        return tf.constant(True)
      tf.cond(self.frozen(step), zero, lambda: tf.constant(False))
    return step

  def call(self, inputs, training=None):
    kernel = self._kernel()
    if training:
      step = self._update()
      if self.regrowth == "reset" and self.hardware_aware is None:
        return self.layer.call(inputs)  # the kernel variable itself is masked now
      if self.regrowth == "reset":
        effective = tf.convert_to_tensor(kernel.value) * tf.convert_to_tensor(self.mask.value)
      else:
        effective = plan.straight_through_kernel(kernel.value, self.mask.value,
                                                 self.frozen(step))
      effective = self.training_kernel(effective, self.mask.value, True, step)
    else:
      effective = tf.convert_to_tensor(kernel.value) * tf.convert_to_tensor(self.mask.value)
    attribute = self._kernel_attribute()
    _compat.set_layer_attribute(self.layer, attribute, effective)
    try:
      return self.layer.call(inputs)
    finally:
      _compat.set_layer_attribute(self.layer, attribute, kernel)

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)

  def apply_mask(self) -> None:
    """Kernel times mask (`reset`; `straight_through` once frozen), as at the end of an epoch."""
    if self.regrowth == "reset" or bool(self.frozen()):
      kernel = self._kernel()
      kernel.assign(np.asarray(kernel) * np.asarray(self.mask))

  def current_budget(self) -> int:
    """The crossbar budget of the last mask update."""
    return int(np.asarray(self.budget))

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(self.crossbar_config())
    return config


ADAPTER = adapter.Adapter(
    keras=keras, wrapper=CrossbarPrune, is_graph_model=lambda model: isinstance(
        model, keras.Sequential) or _compat.keras3_is_functional(model),
    scope_objects={"CrossbarPrune": CrossbarPrune, **xschedules.SCHEDULES},
    check=_check_backend)


class UpdateCrossbarPruning(keras.callbacks.Callback):
  """Sets the wrappers' step to 0 before the first training step and re-masks the kernels at
  the end of each epoch (what TFMOT's `UpdatePruningStep` does on tf_keras); the wrappers
  advance the step in each training call."""

  def __init__(self, allocation_data=None):
    super().__init__()
    self._wrappers: list[CrossbarPrune] = []
    self.allocation_data = allocation_data  # batches for the gradient scores (GRADIENT_SCORES)

  def on_train_begin(self, logs=None):
    self._wrappers = ADAPTER.crossbar_wrappers(self.model)
    if not self._wrappers:
      raise PruningConfigError(
          "UpdateCrossbarPruning: the model has no crossbar-pruned layer; fit the model "
          "returned by xbar_tfmot.prune_crossbar.")
    for w in self._wrappers:
      if int(np.asarray(w.pruning_step)) == -1:
        w.pruning_step.assign(0)
    allocation.check_fit(self.model, self._wrappers, self.allocation_data)

  def on_train_batch_begin(self, batch, logs=None):
    allocation.before_batch(self.model, self._wrappers, self.allocation_data)

  def on_epoch_end(self, epoch, logs=None):
    for w in self._wrappers:
      w.apply_mask()


class CrossbarPruningSummaries(xcallbacks.SummariesMixin, keras.callbacks.Callback):
  __doc__ = xcallbacks.SummariesMixin.__doc__
