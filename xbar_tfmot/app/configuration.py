"""The `xbar-prune` configuration: defaults, the field schema and its checks.

A config file in `configs/` defines `get_config()` returning `defaults()` with its own values
(the ml_collections idiom of TF/JAX research code); `--config.field=value` overrides any
field. `check(config)` runs before any data is loaded or model trained: unknown fields, wrong
types and values out of range are errors that name the field and say what is valid.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Any

import ml_collections

from xbar_tfmot.app.datasets import DATASETS
from xbar_tfmot.app.training import OPTIMIZERS, OUTPUTS
from xbar_tfmot.app.zoo import BUILDERS
from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.policy import DEPRECATED_SCORES, MODES, SCORES, canonical_score
from xbar_tfmot.core.projection import GRANULARITIES
from xbar_tfmot.models.introspection import FLAVOURS
from xbar_tfmot.pruning.api import PROJECTIONS, REGROWTHS
from xbar_tfmot.pruning.layer_by_layer import invalid_rule

EXPORT_FORMATS = ("saved_model", "tflite", "json")
PROCEDURES = ("joint", "layer_by_layer")
# Fields that do not change results: a rerun may change them without starting over.
COSMETIC = ("train.verbose", "report.plots", "report.tensorboard", "train.worker_timeout")


def defaults() -> ml_collections.ConfigDict:
  """Every field with its default (the values of the default config where it has none)."""
  c = ml_collections.ConfigDict()
  c.name = "run"
  c.workdir = ""  # "" = runs/<name>
  c.seed = 0
  c.flavour = "tf_keras"

  c.data = ml_collections.ConfigDict()
  c.data.name = "fashion_mnist"  # fashion_mnist | cifar10 | digits | synthetic | npz |
  #                                 image_folder | none
  c.data.path = ""  # local files' folder ("" = default place); the .npz file or image folder
  c.data.download = False  # let Keras download when local files are missing
  c.data.train_size = 0  # first N training images; 0 = all
  c.data.test_size = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "vgg8"  # a zoo builder
  c.model.width = 1.0
  c.model.file = ""  # a .keras/.h5/SavedModel to start from instead of the zoo
  c.model.input_shape = ""  # "H,W,C" when data.name is none
  c.model.classes = 0  # when data.name is none
  c.model.custom_objects = ""  # module(s) defining model.file's own layers, comma-separated

  c.crossbar = ml_collections.ConfigDict()
  c.crossbar.spec = "128x128"  # ROWSxCOLS[,field=value] or a preset JSON file
  c.crossbar.granularity = "column"
  c.crossbar.reduction = 0.7
  c.crossbar.projection = "rpp"
  c.crossbar.regrowth = "reset"
  c.crossbar.temperature = 1.0
  c.crossbar.reorder = True
  c.crossbar.leave_dense = "default"  # default (first conv) | "" (none) | comma-separated names
  c.crossbar.mode = "per_layer"  # per_layer | global | global_score | sensitivity
  # global_score: magnitude (sum of squared weights) | saliency (|w dL/dw| on training batches);
  # "energy", the former name of magnitude, still works and warns
  c.crossbar.score = "magnitude"
  c.crossbar.validation_images = 512  # sensitivity, layer_by_layer: training images held out
  c.crossbar.ramp = 0.75  # fraction of the pruning epochs over which the budget falls
  c.crossbar.updates_per_epoch = 4

  c.prune = ml_collections.ConfigDict()
  c.prune.procedure = "joint"  # joint (every layer at once) | layer_by_layer (one at a time)
  c.prune.max_accuracy_drop = 0.02  # layer_by_layer: validation accuracy a step may lose
  c.prune.max_reduction = 0.9  # layer_by_layer: a layer's largest reduction
  c.prune.crossbar_threshold = 1  # layer_by_layer: Tc, a layer stops at <= Tc crossbars
  c.prune.reduction_step = 0.1  # layer_by_layer: reduction added per step
  c.prune.step_epochs = 1  # layer_by_layer: LGD-RPP epochs per step

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.learning_rate = 1e-3
  c.train.finetune_learning_rate = 3e-4
  c.train.distillation_weight = 0.0  # >0: pruning and fine-tuning learn from the dense model
  c.train.distillation_temperature = 4.0
  c.train.bn_recalibration_images = 0  # >0: re-estimate BatchNorm statistics on this many
  #                                       training images before saving and evaluating a phase
  c.train.strategy = "default"  # default (one device) | mirrored (tf.distribute, one host) |
  #                              multi_worker (tf_keras; workers from TF_CONFIG, docs/usage.md)
  c.train.devices = ""  # mirrored: comma-separated devices; "" = all GPUs, else the CPU
  c.train.worker_timeout = 600.0  # multi_worker: seconds a collective waits for the others
  c.train.optimizer = "adam"  # adam | adamw | sgd (momentum 0.9) | rmsprop
  c.train.outputs = "auto"  # the loss: auto (softmax last layer = probabilities) | logits |
  #                           probabilities
  c.train.baseline_epochs = 3
  c.train.prune_epochs = 2
  c.train.finetune_epochs = 1
  c.train.verbose = 1

  c.hardware = ml_collections.ConfigDict()
  c.hardware.enabled = False  # energy/area and accuracy on non-ideal crossbars after export
  c.hardware.preset = "isaac_32nm"  # a hardware preset name or JSON file (docs/hardware.md)
  c.hardware.set = ""  # overrides, e.g. "variation=0.05,adc_bits=6"
  c.hardware.instances = 3  # chip instances (seeds) for accuracy mean and spread
  c.hardware.test_images = 1000
  c.hardware.calibration_images = 256  # training images that set the DAC/ADC ranges
  c.hardware.sweep_instances = 2  # accuracy sweep, one factor at a time; 0 = no sweep
  c.hardware.sweep_variations = "0,0.05,0.1"  # of g_max, ADC at the preset's bits
  c.hardware.sweep_adc_bits = "4,6,8"  # no variation
  c.hardware.sweep_stuck = ""  # fractions of stuck cells (half on, half off), e.g. "0,0.01"

  c.export = ml_collections.ConfigDict()
  c.export.enabled = True
  c.export.formats = "saved_model,tflite,json"
  c.export.verify = True

  c.report = ml_collections.ConfigDict()
  c.report.plots = True
  c.report.tensorboard = False
  return c


_CHOICES = {
    "flavour": FLAVOURS,
    "data.name": DATASETS + ("none",),
    "model.name": tuple(sorted(BUILDERS)),
    "crossbar.granularity": GRANULARITIES,
    "crossbar.projection": PROJECTIONS,
    "crossbar.regrowth": REGROWTHS,
    "crossbar.mode": MODES,
    "crossbar.score": SCORES + tuple(DEPRECATED_SCORES),
    "prune.procedure": PROCEDURES,
    "train.optimizer": OPTIMIZERS,
    "train.strategy": ("default", "mirrored", "multi_worker"),
    "train.outputs": OUTPUTS,
}
_POSITIVE = ("model.width", "train.batch_size", "train.learning_rate",
             "train.finetune_learning_rate", "crossbar.updates_per_epoch",
             "crossbar.validation_images", "train.distillation_temperature",
             "hardware.instances", "hardware.test_images", "hardware.calibration_images",
             "train.worker_timeout",
             "prune.step_epochs")  # prune.crossbar_threshold: checked by _check_prune
_NON_NEGATIVE = ("seed", "data.train_size", "data.test_size", "model.classes",
                 "train.bn_recalibration_images",
                 "train.baseline_epochs", "train.prune_epochs", "train.finetune_epochs",
                 "train.verbose", "crossbar.temperature", "hardware.sweep_instances")


class ConfigError(XbarError, ValueError):
  """A config field is unknown, of the wrong type or out of range."""


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """`{"train.batch_size": 128, ...}` of a ConfigDict or nested dict."""
  items = config.items() if hasattr(config, "items") else ()
  out = {}
  for key, value in items:
    path = f"{prefix}{key}"
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(flatten(value, f"{path}."))
    else:
      out[path] = value
  return out


def check(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` naming the first bad field of `config` (see the module docstring)."""
  expected, given = flatten(defaults()), flatten(config)
  for path in given:
    if path not in expected:
      parent = path.rpartition(".")[0]
      valid = sorted(p for p in expected if p.rpartition(".")[0] == parent)
      raise ConfigError(f"config.{path}: unknown field; valid fields here: {', '.join(valid)}.")
  for path, default in expected.items():
    if path not in given:
      raise ConfigError(f"config.{path}: missing; start the config from "
                        f"xbar_tfmot.app.configuration.defaults().")
    value = given[path]
    kind = type(default)
    ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))
          or kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
      raise ConfigError(f"config.{path}={value!r}: wrong type {type(value).__name__}; valid: "
                        f"{kind.__name__}.")
  c = given
  for path, valid in _CHOICES.items():
    if c[path] not in valid:
      raise ConfigError(f"config.{path}={c[path]!r}: unknown; valid: {', '.join(valid)}.")
  if c["crossbar.score"] in DEPRECATED_SCORES:
    warnings.warn(f"config.crossbar.score={c['crossbar.score']!r} is deprecated; use "
                  f"{DEPRECATED_SCORES[c['crossbar.score']]!r} (the same score).",
                  DeprecationWarning, stacklevel=2)
  for path in _POSITIVE:
    if not c[path] > 0:
      raise ConfigError(f"config.{path}={c[path]!r}: valid: a number > 0.")
  for path in _NON_NEGATIVE:
    if c[path] < 0:
      raise ConfigError(f"config.{path}={c[path]!r}: valid: a number >= 0.")
  if not 0.0 < c["crossbar.reduction"] < 1.0:
    raise ConfigError(f"config.crossbar.reduction={c['crossbar.reduction']!r}: valid: "
                      f"0 < reduction < 1 (the fraction of crossbars removed).")
  if not 0.0 < c["crossbar.ramp"] <= 1.0:
    raise ConfigError(f"config.crossbar.ramp={c['crossbar.ramp']!r}: valid: 0 < ramp <= 1.")
  formats = export_formats(config)
  bad = sorted(set(formats) - set(EXPORT_FORMATS))
  if bad or not formats:
    raise ConfigError(f"config.export.formats={c['export.formats']!r}: valid: a comma-separated "
                      f"non-empty subset of {', '.join(EXPORT_FORMATS)}.")
  if "tflite" in formats and "saved_model" not in formats:
    raise ConfigError("config.export.formats: tflite is converted from the SavedModel; add "
                      "saved_model.")
  if c["hardware.enabled"]:
    if c["data.name"] == "none":
      raise ConfigError("config.hardware.enabled: measuring accuracy needs data; valid: a "
                        "data.name other than none.")
    hardware_spec(config)
    hardware_sweep(config)
  if c["train.strategy"] == "multi_worker" and c["flavour"] == "keras3":
    raise ConfigError("config.train.strategy='multi_worker' with config.flavour='keras3': Keras "
                      "3's TensorFlow trainer cannot fit under MultiWorkerMirroredStrategy (its "
                      "symbolic build reduces the input batch with strategy.reduce, which the "
                      "collective ops refuse; keras-team/keras#20585); valid: flavour='tf_keras', "
                      "or strategy='mirrored' on one host.")
  if not 0 <= c["train.distillation_weight"] <= 1:
    raise ConfigError(f"config.train.distillation_weight={c['train.distillation_weight']!r}: "
                      f"valid: 0 (off) <= weight <= 1.")
  if c["crossbar.mode"] == "global_score" and not c["train.prune_epochs"]:
    raise ConfigError("config.crossbar.mode='global_score' re-splits the budget at the mask "
                      "updates of training; valid: train.prune_epochs >= 1 (or another mode).")
  if c["crossbar.mode"] == "sensitivity" and c["data.name"] == "none":
    raise ConfigError("config.crossbar.mode='sensitivity' measures its curves on held-out "
                      "training images; valid: a data.name other than none.")
  _check_prune(c)
  if c["data.name"] == "none":
    if c["train.baseline_epochs"] or c["train.prune_epochs"] or c["train.finetune_epochs"]:
      raise ConfigError("config.data.name='none' (mapping only) needs train.baseline_epochs, "
                        "train.prune_epochs and train.finetune_epochs = 0.")
    if not c["model.file"]:
      input_shape(config)
      if c["model.classes"] < 2:
        raise ConfigError("config.model.classes: valid: >= 2 when data.name is none.")
  elif c["data.name"] in ("digits", "synthetic") and c["data.path"]:
    raise ConfigError(f"config.data.path: {c['data.name']} has no files; leave it empty.")
  if c["model.file"] and not pathlib.Path(c["model.file"]).exists():
    raise ConfigError(f"config.model.file={c['model.file']!r}: no such file or folder; valid: a "
                      f".keras or .h5 file or a SavedModel folder, or '' to build model.name.")
  if c["data.name"] == "npz":
    if not pathlib.Path(c["data.path"]).expanduser().is_file():
      raise ConfigError(f"config.data.path={c['data.path']!r}: no such file; valid: the .npz "
                        f"file holding x_train, y_train, x_test, y_test (data.name='npz').")
  elif c["data.name"] == "image_folder" and not c["data.path"]:
    raise ConfigError("config.data.path='': valid: the folder of class subfolders "
                      "(data.name='image_folder').")
  elif c["data.path"] and not pathlib.Path(c["data.path"]).expanduser().is_dir():
    raise ConfigError(f"config.data.path={c['data.path']!r}: no such folder; valid: the folder "
                      f"holding the dataset's files, or '' for its default place.")


def _check_prune(c: dict[str, Any]) -> None:
  """The `prune.*` fields (the layer-by-layer procedure's stop rules and grid)."""
  fields = {"max_accuracy_drop": "prune.max_accuracy_drop", "max_reduction": "prune.max_reduction",
            "crossbar_threshold": "prune.crossbar_threshold", "step": "prune.reduction_step"}
  bad = invalid_rule({rule: c[path] for rule, path in fields.items()})
  if bad:
    path = fields[bad[0]]
    raise ConfigError(f"config.{path}={c[path]!r}: valid: {bad[1]}.")
  if c["prune.procedure"] != "layer_by_layer":
    return
  if c["crossbar.mode"] != "per_layer":
    raise ConfigError(f"config.crossbar.mode={c['crossbar.mode']!r}: prune.procedure="
                      f"'layer_by_layer' sets each layer's budget by its stop rules; valid: "
                      f"per_layer.")
  if c["data.name"] == "none":
    raise ConfigError("config.prune.procedure='layer_by_layer' measures accuracy on held-out "
                      "training images; valid: a data.name other than none.")
  if c["train.distillation_weight"]:
    raise ConfigError(f"config.train.distillation_weight={c['train.distillation_weight']!r}: "
                      f"prune.procedure='layer_by_layer' trains on the labels; valid: 0.")


def hardware_spec(config: ml_collections.ConfigDict):
  """The `HardwareSpec` of `hardware.preset` with the `hardware.set` overrides."""
  from xbar_tfmot.core.hardware import parse_hardware, parse_override
  h = config.hardware
  try:
    overrides = dict(parse_override(s) for s in h.set.split(",") if s.strip())
    return parse_hardware(h.preset, **overrides)
  except ValueError as e:
    raise ConfigError(f"config.hardware (preset={h.preset!r}, set={h.set!r}): {e}") from None


def hardware_sweep(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """`hardware_sweep.sweep`'s value lists of `hardware.sweep_*` ({} when the sweep is off);
  a bad list or value is a `ConfigError` naming its field."""
  from xbar_tfmot.models.hardware_sweep import conditions, parse_values
  h = config.hardware
  if not h.sweep_instances:
    return {}
  out = {}
  for name, kind in (("variations", float), ("adc_bits", int), ("stuck", float)):
    field = f"config.hardware.sweep_{name}"
    try:
      out[name] = parse_values(getattr(h, f"sweep_{name}"), field, kind)
      conditions(hardware_spec(config), **{name: out[name]})
    except ValueError as e:
      raise ConfigError(f"{field}={getattr(h, f'sweep_{name}')!r}: {e}") from None
  return out if any(out.values()) else {}


def export_formats(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(f.strip() for f in config.export.formats.split(",") if f.strip())


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """`model.input_shape` ("H,W,C") as integers."""
  try:
    shape = tuple(int(d) for d in config.model.input_shape.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) < 1:
    raise ConfigError(f"config.model.input_shape={config.model.input_shape!r}: valid: 'H,W,C' "
                      f"with positive integers, e.g. '224,224,3'.")
  return shape


def leave_dense(config: ml_collections.ConfigDict) -> Any:
  """The `CrossbarPolicy.leave_dense` value of `crossbar.leave_dense`."""
  value = config.crossbar.leave_dense.strip()
  if value == "default":
    return None
  return tuple(v.strip() for v in value.split(",") if v.strip())


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """Fields (flattened paths) whose values differ and matter for the results."""
  keys = set(old) | set(new)
  old, new = _canonical(old), _canonical(new)
  return sorted(k for k in keys if k not in COSMETIC and old.get(k) != new.get(k))


def _canonical(flat: dict[str, Any]) -> dict[str, Any]:
  """`flat` with deprecated values under their new names (a run saved with
  `crossbar.score="energy"` resumes under `"magnitude"`)."""
  if isinstance(flat.get("crossbar.score"), str):
    return {**flat, "crossbar.score": canonical_score(flat["crossbar.score"])}
  return flat
