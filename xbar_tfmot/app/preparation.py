"""What a run checks before any training: its data, its model and its crossbar budgets.

Everything here raises `ConfigError` naming the field at fault, so that a run that cannot
finish fails in seconds, before the baseline trains.
"""

from __future__ import annotations

import pathlib

import numpy as np

from xbar_tfmot.app import datasets, zoo
from xbar_tfmot.app.configuration import ConfigError, RunConfig
from xbar_tfmot.app.run_context import RunData
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.export import model_io
from xbar_tfmot.models import introspection


def load_data(config: RunConfig) -> RunData | None:
  """The run's images (None for `data.name = "none"`): `data.train_size` training images less
  the `allocation.validation_images` held out when a method chooses on validation."""
  c = config.data
  if c.name == "none":
    return None
  try:
    (x, y), (xt, yt) = datasets.load_dataset(c.name, c.path or None, c.download,
                                             seed=config.seed)
  except FileNotFoundError as e:
    raise ConfigError(f"config.data.name={c.name!r}: {e} (or set config.data.download=True "
                      f"to let Keras download it)") from None
  except ValueError as e:
    raise ConfigError(f"config.data.path={c.path!r} (data.name={c.name!r}): {e}") from None
  if c.name in datasets.USER_DATA:  # a user's file may be sorted by class
    order = np.random.default_rng(config.seed).permutation(len(y))
    x, y = x[order], y[order]
  if c.train_size:
    x, y = x[:c.train_size], y[:c.train_size]
  validation = None
  if (config.allocation.mode in ("sensitivity", "validated")
      or config.schedule.procedure == "layer_by_layer"):
    held = config.allocation.validation_images
    if held >= len(x):
      raise ConfigError(f"config.allocation.validation_images={held}: valid: fewer than the "
                        f"{len(x)} training images.")
    validation = (x[-held:], y[-held:])
    x, y = x[:-held], y[:-held]
  if c.test_size:
    xt, yt = xt[:c.test_size], yt[:c.test_size]
  return RunData(train=(x, y), validation=validation, test=(xt, yt))


def initial_model(config: RunConfig, data: RunData | None, custom_objects: dict):
  """`model.file` loaded, or the zoo's `model.name` built for the data; it must have a mapped
  layer that fits `chip.spec`, and inputs and outputs that fit the data."""
  c = config
  if c.model.file:
    try:
      model = model_io.load_with(c.flavour, c.model.file, custom_objects, compile=True)
    except Exception as e:  # Keras raises many kinds for files it cannot read
      unknown = model_io.unknown_class(str(e))
      why = (f"it uses the class {unknown!r}; give the module defining it as "
             f"config.model.custom_objects" if unknown else str(e)[:model_io.ERROR_CHARS])
      raise ConfigError(f"config.model.file={c.model.file!r}: cannot load it as a "
                        f"{c.flavour} model (config.flavour): {why}") from None
    field = "config.model.file"
  else:
    if data is None:
      shape, classes = c.model.shape, c.model.classes
    else:
      x, y = data.train
      shape, classes = x.shape[1:], int(max(y.max(), 1)) + 1
    model = zoo.build_model(c.model.name, shape, classes, c.model.width, c.flavour, c.seed)
    field = "config.model.name"
  mapped = [l.name for l in introspection.iter_layers(model) if introspection.is_mapped(l)]
  if not mapped:
    raise ConfigError(f"{field}: the model {model.name!r} has no mappable layer (Conv1D, "
                      f"Conv2D or Dense); nothing to prune.")
  for name in mapped:
    try:
      introspection.geometry_of(introspection.unwrap(model.get_layer(name)), c.chip.crossbar)
    except ValueError as e:
      raise ConfigError(f"config.chip.spec={c.chip.spec!r}: layer {name}: {e}") from None
  if data is not None:
    x, y = data.train
    if tuple(model.input_shape[1:]) != tuple(x.shape[1:]):
      raise ConfigError(f"{field}: the model takes inputs {tuple(model.input_shape[1:])} but "
                        f"{c.data.name} images are {tuple(x.shape[1:])}.")
    if int(model.output_shape[-1]) <= int(y.max()):
      raise ConfigError(f"{field}: the model has {model.output_shape[-1]} outputs but "
                        f"{c.data.name} has labels up to {int(y.max())}.")
  return model


def check_quantize_aware(config: RunConfig, model) -> None:
  """`export.quantize_aware_epochs`: TFMOT wraps this model for quantisation-aware training now,
  before training, not after pruning (its Default8Bit scheme refuses some layer orders, e.g. a
  BatchNormalization after an activation). Training, reorder and pruning change no layer."""
  e = config.export
  if not (e.enabled and e.quantize_aware_epochs):
    return
  from xbar_tfmot.export import int8
  try:
    int8.quantize_aware(model)
  except int8.QuantizationError as err:
    raise ConfigError(f"config.export.quantize_aware_epochs={e.quantize_aware_epochs}: this "
                      f"model cannot be wrapped for quantisation-aware training: {err} Valid "
                      f"here: export.quantize_aware_epochs=0 (post-training int8).") from None


def check_budgets(config: RunConfig, model) -> None:
  """Every crossbar budget the prune phase will ask for, computed now, before any training.

  A budget is a function of the mapped layers' names, kinds and kernel shapes, the spec and
  the `allocation.*` fields only (`LayerGeometry`, `CrossbarPolicy.plan`,
  `plan.plan_model`; for `allocation.objective="energy"` also of the layers' output
  positions and the chip, `crossbar_costs`), never of the weights: training and reorder (a
  permutation) change no shape, and what is weight-dependent (`global_score`'s re-split at every update, `sensitivity`'s curves) only
  splits a model-wide total that `plan` has already checked. So the untrained model fails
  here exactly where the prune phase would fail after training. Raises `ConfigError` naming
  the field, and for `allocation.reduction` the range that is valid for this model.
  """
  from xbar_tfmot.pruning import plan as plan_lib
  a, spec = config.allocation, config.chip.crossbar
  leaves = list(introspection.iter_layers(model))
  geometries = [introspection.geometry_of(l, spec) for l in leaves if introspection.is_mapped(l)]
  try:
    CrossbarPolicy(leave_dense=a.dense_layers).plan(geometries, 0.5)
  except ValueError as e:
    raise ConfigError(f"config.allocation.leave_dense={a.leave_dense!r}: {e}") from None
  if config.schedule.procedure == "layer_by_layer":
    return  # its budgets come from its stop rules; allocation.reduction only guides reorder
  curves = None  # sensitivity: the measured curves split the total, they never change it
  if a.mode == "sensitivity":
    curves = {g.name: [[g.dense_crossbars, 0.0]] for g in geometries}
  # validated: its candidates share two kinds of budget, per layer and one model-wide pool;
  # the run fails here only if neither can be met (a candidate that cannot is skipped).
  modes = ("per_layer", "global_score") if a.mode == "validated" else (a.mode,)
  by_cost = {}
  if a.objective != "crossbars":  # a budget in pJ: the costs per crossbar are shapes only
    from xbar_tfmot.pruning.allocation import crossbar_costs
    modes = ("global_score",)
    by_cost = {"objective": a.objective, "layer_costs": crossbar_costs(
        model, spec, config.hardware.hardware_spec, a.objective)}
  policies = [CrossbarPolicy(leave_dense=a.dense_layers, mode=m, curves=curves,
                             score=a.score if m == a.mode else "magnitude", **by_cost)
              for m in modes]

  def problem(reduction: float) -> str | None:
    """Why the prune phase would refuse `reduction` (as it computes budgets), or None."""
    why = []
    for policy in policies:
      try:
        if config.schedule.prune_epochs == 0:  # one-shot projection
          policy.plan(geometries, reduction)
        else:  # prune_crossbar
          plan_lib.plan_model(leaves, spec, policy, reduction)
        return None
      except ValueError as e:
        why.append(str(e))
    return "; ".join(why)

  why = problem(a.reduction)
  if why is None:
    return
  valid = [k / 1000 for k in range(1, 1000) if problem(k / 1000) is None]
  where = (f"for this model ({sum(g.dense_crossbars for g in geometries)} crossbars dense on "
           f"{spec}, allocation.mode={a.mode!r}"
           + (f", allocation.objective={a.objective!r} on {config.hardware.preset}"
              if by_cost else "") + ")")
  if not valid:
    raise ConfigError(f"config.allocation.reduction={a.reduction!r}: no reduction can be met "
                      f"{where}; valid: smaller crossbars (config.chip.spec) or fewer "
                      f"layers left dense (config.allocation.leave_dense). Details: {why}")
  low, high = valid[0], valid[-1]  # an interval: fewer crossbars as the reduction grows
  if a.reduction > high:
    bound = f"reduction <= {high:g}" + (f" (and >= {low:g})" if low > 0.001 else "")
    side = "too high"
  else:
    bound = f"reduction >= {low:g}" + (f" (and <= {high:g})" if high < 0.999 else "")
    side = "too low"
  raise ConfigError(f"config.allocation.reduction={a.reduction!r}: {side} {where}; valid: "
                    f"{bound}. Details: {why}")
