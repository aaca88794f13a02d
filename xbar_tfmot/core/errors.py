"""The errors xbar_tfmot raises on bad input: one base, `XbarError`, and this list of every
subclass (the one place the hierarchy is documented; tests/test_errors.py fails when a subclass
is defined anywhere in the package without being listed here).

Each subclass also derives from the built-in type the error has always been (`ValueError`,
`TypeError`, `KeyError`, `RuntimeError`), so existing `except ValueError` code keeps working;
`except xt.XbarError` catches them all.

Library (`import xbar_tfmot as xt`):

- `SpecError` (`ValueError`, core/errors.py): a `CrossbarSpec` field, its short form
  `ROWSxCOLS[,field=value...]`, or a crossbar preset (name or file) is invalid.
- `HardwareError` (`ValueError`, core/hardware.py): a `HardwareSpec` field, chip preset or
  override is invalid, or does not fit the mapping it is used with.
- `GeometryError` (`ValueError`, core/errors.py): the crossbar maths of one layer
  (`LayerGeometry`, `crossbar_budget`, `project`, `pack_layer`) got a kernel shape, budget,
  reduction, permutation, granularity or weights it cannot use.
- `ScheduleError` (`ValueError`, core/errors.py): a pruning or temperature schedule
  (`CrossbarConstant`, `CrossbarPolynomialDecay`, `CrossbarTemperatureDecay`) or its
  serialised form is invalid.
- `PolicyError` (`ValueError`, core/errors.py): a `CrossbarPolicy` is invalid, or cannot be
  met on a model's layers (a target or `leave_dense` name matching no layer, an infeasible
  model-wide budget, missing curves).
- `MappingError` (`ValueError`, core/mapping.py): a mapping document is malformed or does not
  match a model; `path` names the field.
- `UnknownLayerError` (`KeyError`, core/errors.py): a layer name is not in a crossbar mapping
  (`CrossbarMapping.layer`).
- `DuplicateKeyError` (`ValueError`, core/strict_json.py): a JSON file the library reads
  (mapping, presets, overrides) repeats a key in one object.
- `ModelError` (`ValueError`, core/errors.py): a model, layer or model file cannot be read,
  mapped or rewritten as asked (a layer that does not map, a name that is not a mapped layer,
  an unsupported data format or flavour, a file that does not load), or an argument of a
  model-level call (`recalibrate_batchnorm`, `reorder_model`, `build_mapping`) is invalid.
- `NotKerasObjectError` (`TypeError`, core/errors.py): an object is neither a tf_keras nor a
  Keras 3 object.
- `DigitalPartError` (`ValueError`, models/crossbar_model.py): a layer computed crossbar by
  crossbar has a digital part (bias, activation, ...) the replacing layer omits.
- `ReplicaBatchError` (`ValueError`, models/replicas.py): the data or batch size cannot give
  every replica an equal, non-empty batch.
- `PruningConfigError` (`ValueError`, core/errors.py): an argument of the pruning API
  (`prune_crossbar`, `strip_crossbar_pruning`, `crossbar_pruning_scope`,
  `UpdateCrossbarPruning`, `CrossbarPruningSummaries`, `DistillationLoss`, `teacher_targets`,
  `sensitivity_curves`) is invalid, or the call does not fit the model (a subclassed model,
  unbuilt layers, a target at which no layer loses a crossbar, a missing callback).
- `LayerByLayerError` (`ValueError`, pruning/layer_by_layer.py): a `StopRules` rule or an
  argument of `prune_layer_by_layer` is out of range.
- `ExportError` (`RuntimeError`, export/exporter.py): an export step failed; the message
  names the step, and nothing was left at the target.
- `VerificationError` (`ValueError`, export/verification.py): an export folder whose artefacts
  cannot be compared (their signatures do not fit the model).
- `NeuroSimError` (`ValueError`, export/neurosim.py): the NeuroSim files (layer table,
  weight and input files) cannot be written for this model.
- `QuantizationError` (`ValueError`, export/int8.py): an argument of the int8 export
  (`representative_data`, `quantized_model`) is invalid or missing, or TFMOT's
  quantisation-aware training cannot be applied to the model (`quantize_aware`).

Application (`xbar-prune`, `xbar_tfmot.app`):

- `ConfigError` (`ValueError`, app/configuration.py): a config field is unknown, of the wrong
  type or out of range; the message names the field.
- `TrainingDiverged` (`RuntimeError`, app/training.py): the loss became NaN or infinite.
- `WorkdirBusy` (`RuntimeError`, app/workdir_lock.py): another run holds the work folder.
- `WorkerLost` (`RuntimeError`, app/distribution.py): a collective across the workers failed
  (a worker died, hung or cannot be reached).
"""


class XbarError(Exception):
  """Base of every error xbar_tfmot raises on bad input; the subclasses are listed in this
  module's docstring, each also deriving from its built-in type (`ValueError`, ...)."""


class SpecError(XbarError, ValueError):
  """A `CrossbarSpec` field, its short form or a crossbar preset is invalid."""


class GeometryError(XbarError, ValueError):
  """One layer's crossbar maths got a kernel, budget, permutation or granularity it cannot use."""


class ScheduleError(XbarError, ValueError):
  """A pruning or temperature schedule, or its serialised form, is invalid."""


class PolicyError(XbarError, ValueError):
  """A `CrossbarPolicy` is invalid, or cannot be met on a model's layers."""


class UnknownLayerError(XbarError, KeyError):
  """A layer name is not in a crossbar mapping."""


class ModelError(XbarError, ValueError):
  """A model, layer or model file cannot be read, mapped or rewritten as asked."""


class NotKerasObjectError(XbarError, TypeError):
  """An object is neither a tf_keras nor a Keras 3 object."""


class PruningConfigError(XbarError, ValueError):
  """An argument of the pruning API is invalid, or the call does not fit the model."""
