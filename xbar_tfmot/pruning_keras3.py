"""Keras 3 adapter: crossbar pruning for `import keras` models (TensorFlow backend).

`CrossbarPrune` is a `keras.layers.Wrapper` with the semantics of the tf_keras wrapper (itself
TFMOT's `PruneLowMagnitude`): a mask, a budget and a step counter as non-trainable weights; in
each training call the step advances (`UpdateCrossbarPruning` must set it to 0 first, as TFMOT's
`UpdatePruningStep` does), the mask is recomputed at the schedule's update steps by the shared
core (`pruning_core.mask_at`), and the kernel is set to kernel times mask (`reset`), or the
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

from xbar_tfmot import callbacks as xcallbacks
from xbar_tfmot import layers as xlayers
from xbar_tfmot import pruning_core as core
from xbar_tfmot import schedules as xschedules
from xbar_tfmot.policy import CrossbarPolicy
from xbar_tfmot.spec import CrossbarSpec

PACKAGE = "xbar_tfmot"

for _cls in xschedules.SCHEDULES.values():
  keras.saving.register_keras_serializable(package=PACKAGE)(_cls)


def _schedule(value: Any):
  """A schedule from itself, Keras 3's serialised form, or `schedules.serialize`'s form."""
  if not isinstance(value, dict):
    return value
  if "registered_name" in value or "module" in value:
    return keras.saving.deserialize_keras_object(value)
  return xschedules.deserialize(value)


def _check_backend() -> None:
  if keras.backend.backend() != "tensorflow":
    raise ValueError(
        f"prune_crossbar: Keras 3 backend {keras.backend.backend()!r} is not supported; valid: "
        f"'tensorflow' (set KERAS_BACKEND=tensorflow). The projection is TensorFlow code.")


@keras.saving.register_keras_serializable(package=PACKAGE)
class CrossbarPrune(keras.layers.Wrapper):
  """A crossbar-pruning wrapper around one Conv2D, Conv1D or Dense layer (Keras 3)."""

  def __init__(self, layer, spec: CrossbarSpec | dict | None = None, granularity: str = "crossbar",
               pruning_schedule=None, projection: str = "rpp", regrowth: str = "reset",
               temperature=None, final_budget: int | None = None,
               target_reduction: float | None = None, layer_index: int = 0, seed: int = 0,
               **kwargs):
    core.check_wrappable("CrossbarPrune", layer, final_budget, target_reduction)
    kwargs.setdefault("name", f"crossbar_prune_{layer.name}")
    super().__init__(layer, **kwargs)
    if spec is None:
      raise ValueError(f"CrossbarPrune({layer.name!r}): spec is required (a CrossbarSpec).")
    self.spec = CrossbarSpec.from_dict(spec) if isinstance(spec, dict) else spec
    self.granularity = granularity
    self.pruning_schedule = _schedule(pruning_schedule) or xschedules.CrossbarConstant(0.5)
    self.projection = projection
    self.regrowth = regrowth
    self.temperature = _schedule(temperature) or xschedules.CrossbarTemperatureDecay(0.0)
    self.final_budget = final_budget
    self.target_reduction = target_reduction
    self.layer_index = layer_index
    self.seed = seed
    self.geometry = None
    xcallbacks.note_flavour("keras3")

  def build(self, input_shape=None):
    super().build(input_shape)
    self._inner_input_shape = tuple(input_shape)
    self.geometry = xlayers.geometry_of(self.layer, self.spec)
    self.final_budget = core.final_budget_of(self.geometry, self.final_budget,
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

  def _kernel(self):
    """The wrapped layer's kernel variable."""
    kernel = getattr(self.layer, "_kernel", None)
    return self.layer.kernel if kernel is None else kernel

  def frozen(self, step=None) -> tf.Tensor:
    return core.frozen(self.pruning_schedule, self.pruning_step.value if step is None else step)

  def _update(self):
    """One training step's bookkeeping: step + 1, mask update when due, reset's zeroing."""
    self.pruning_step.assign(self.pruning_step.value + 1)
    step = tf.convert_to_tensor(self.pruning_step.value)
    check = tf.debugging.assert_greater_equal(step, tf.constant(1, tf.int64),
                                              message=core.CALLBACK_MISSING)
    kernel = self._kernel()
    with tf.control_dependencies([check]):

      def update():
        budget = core.budget_at(self.pruning_schedule, self.geometry.dense_crossbars,
                                self.final_budget, step)
        value = tf.convert_to_tensor(kernel.value)
        self.mask.assign(core.mask_at(
            self.geometry, value, budget, self.granularity, self.projection, self.temperature,
            self.seed, self.layer_index, step))
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
      if self.regrowth == "reset":
        return self.layer.call(inputs)  # the kernel variable itself is masked now
      effective = core.straight_through_kernel(kernel.value, self.mask.value, self.frozen(step))
    else:
      effective = tf.convert_to_tensor(kernel.value) * tf.convert_to_tensor(self.mask.value)
    object.__setattr__(self.layer, "_kernel", effective)
    try:
      return self.layer.call(inputs)
    finally:
      object.__setattr__(self.layer, "_kernel", kernel)

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)

  def apply_mask(self) -> None:
    """Kernel times mask (`reset`; `straight_through` once frozen), as at the end of an epoch."""
    if self.regrowth == "reset" or bool(self.frozen()):
      kernel = self._kernel()
      kernel.assign(np.asarray(kernel) * np.asarray(self.mask))

  def masked_kernel(self) -> np.ndarray:
    return np.asarray(self._kernel()) * np.asarray(self.mask)

  def current_budget(self) -> int:
    """The crossbar budget of the last mask update."""
    return int(np.asarray(self.budget))

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        "spec": self.spec.to_dict(),
        "granularity": self.granularity,
        "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
        "projection": self.projection,
        "regrowth": self.regrowth,
        "temperature": keras.saving.serialize_keras_object(self.temperature),
        "final_budget": self.final_budget,
        "target_reduction": self.target_reduction,
        "layer_index": self.layer_index,
        "seed": self.seed,
    })
    return config

  def stripped_layer(self):
    """A fresh copy of the wrapped layer whose kernel is the masked kernel."""
    inner = self.layer
    fresh = inner.__class__.from_config(inner.get_config())
    fresh.build(self._inner_input_shape)
    kernel, mask = self._kernel(), np.asarray(self.mask)
    fresh.set_weights([np.asarray(w) * mask if w is kernel else np.asarray(w)
                       for w in inner.weights])
    return fresh


def _graph_model(model) -> bool:
  """Sequential or functional (subclasses of them included), as opposed to subclassed."""
  return isinstance(model, keras.Sequential) or any(
      c.__name__ == "Functional" and c.__module__.startswith("keras.")
      for c in type(model).__mro__)


def _walk(model):
  """Leaf layers in model order; raises for nested subclassed models."""
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      if not _graph_model(layer):
        raise ValueError(
            f"prune_crossbar: nested model {layer.name!r} is subclassed; subclassed models are "
            f"not supported (only Sequential and functional models).")
      yield from _walk(layer)
    else:
      yield layer


def prune(to_prune, *, spec: CrossbarSpec, granularity: str, schedule, projection: str,
          regrowth: str, policy: CrossbarPolicy, seed: int, temperature):
  """Keras 3 implementation of `xbar_tfmot.prune_crossbar` (arguments checked there)."""
  _check_backend()
  common = dict(spec=spec, granularity=granularity, pruning_schedule=schedule,
                projection=projection, regrowth=regrowth, temperature=temperature, seed=seed)
  reduction = schedule.final_reduction
  if isinstance(to_prune, (list, tuple)):
    return _prune_list(list(to_prune), common, policy, reduction)
  if isinstance(to_prune, keras.Model):
    if not _graph_model(to_prune):
      raise ValueError(core.SUBCLASSED.format(type(to_prune).__name__))
    plan = core.plan_model(list(_walk(to_prune)), spec, policy, reduction)

    def clone(layer):
      if isinstance(layer, keras.Model):
        return keras.models.clone_model(layer, clone_function=clone)
      if id(layer) in plan:
        return CrossbarPrune(layer, **plan[id(layer)], **common)
      return layer

    return keras.models.clone_model(to_prune, clone_function=clone)
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
      out.append(layer)
    else:
      out.append(layer if args is None else CrossbarPrune(layer, **args, **common))
  return out


def strip(model):
  """Keras 3 implementation of `xbar_tfmot.strip_crossbar_pruning`."""
  if isinstance(model, CrossbarPrune):
    return model.stripped_layer()
  if not isinstance(model, keras.Model):
    raise ValueError(
        f"strip_crossbar_pruning: expected a keras Model or a CrossbarPrune layer, got "
        f"{type(model).__name__}.")

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, clone_function=clone)
    if isinstance(layer, CrossbarPrune):
      return layer.stripped_layer()
    return layer

  return keras.models.clone_model(model, clone_function=clone)


def scope():
  """A custom-object scope with the wrapper and schedules; not needed, since they are
  registered, but harmless (for code written for the tf_keras path)."""
  objects = {"CrossbarPrune": CrossbarPrune, **xschedules.SCHEDULES}
  return keras.saving.custom_object_scope(objects)


def crossbar_wrappers(model) -> list[CrossbarPrune]:
  """The crossbar wrappers of a model, nested models included, in model order."""
  out = []
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      out += crossbar_wrappers(layer)
    elif isinstance(layer, CrossbarPrune):
      out.append(layer)
  return out


class UpdateCrossbarPruning(keras.callbacks.Callback):
  """Sets the wrappers' step to 0 before the first training step and re-masks the kernels at
  the end of each epoch (what TFMOT's `UpdatePruningStep` does on tf_keras); the wrappers
  advance the step in each training call."""

  def __init__(self):
    super().__init__()
    self._wrappers: list[CrossbarPrune] = []

  def on_train_begin(self, logs=None):
    self._wrappers = crossbar_wrappers(self.model)
    if not self._wrappers:
      raise ValueError(
          "UpdateCrossbarPruning: the model has no crossbar-pruned layer; fit the model "
          "returned by xbar_tfmot.prune_crossbar.")
    for w in self._wrappers:
      if int(np.asarray(w.pruning_step)) == -1:
        w.pruning_step.assign(0)

  def on_epoch_end(self, epoch, logs=None):
    for w in self._wrappers:
      w.apply_mask()


class CrossbarPruningSummaries(xcallbacks.SummariesMixin, keras.callbacks.Callback):
  __doc__ = xcallbacks.SummariesMixin.__doc__

  def _wrappers(self):
    return crossbar_wrappers(self.model)

  def _leaves(self):
    return _walk(self.model)
