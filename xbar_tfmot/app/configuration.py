"""The `xbar-prune` configuration: one frozen `RunConfig`, parsed once, at start.

Every field is declared once, in a section dataclass below: its type and default (the
dataclass field), what it means (the section's `Attributes`), its range (`_choice`,
`_positive`, `_non_negative` metadata) and, where the command line gives a string, the parser
that turns it into the value the phases read (`Chip.crossbar`, `Hardware.chip`, ...).
`defaults()` derives the ml_collections ConfigDict, the command-line surface
(`--config.section.field=value`), from these declarations; a config file in `configs/` returns
`defaults()` with its own values. `parse(config)` runs before any data is loaded or model
trained: unknown fields, wrong types, values out of range and combinations that cannot run are
`ConfigError`s naming the field and saying what is valid; the phases never re-check or re-parse.

The fields are grouped by what they are: `data`, `model`, `chip` (the crossbar), `allocation`
(the budget and how it is split), `schedule` (how masks evolve while training), `layer_by_layer`
(that procedure's stop rules), `train`, `hardware`, `export`, `report`. The names of the
release before (`crossbar.*`, `prune.*`, `train.prune_epochs`, `train.finetune_epochs`) still
work for one release: `RENAMED` maps them, and using one warns (`FutureWarning`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import warnings
from typing import Any, ClassVar

import ml_collections
from ml_collections import config_dict

from xbar_tfmot.app.datasets import DATASETS
from xbar_tfmot.app.training import OPTIMIZERS, OUTPUTS
from xbar_tfmot.app.zoo import BUILDERS
from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.policy import (COST_MODES, DEPRECATED_SCORES, LATENCY_REFUSED, MODES,
                                    OBJECTIVES, SCORES, canonical_score)
from xbar_tfmot.core.projection import GRANULARITIES
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models.introspection import FLAVOURS
from xbar_tfmot.pruning.api import PROJECTIONS, REGROWTHS
from xbar_tfmot.pruning.layer_by_layer import StopRules, invalid_rule
from xbar_tfmot.pruning.selection import CANDIDATES

EXPORT_FORMATS = ("saved_model", "tflite", "json", "tflite_int8")
PROCEDURES = ("joint", "layer_by_layer")
STRATEGIES = ("default", "mirrored", "multi_worker")
# Fields that do not change results: a rerun may change them without starting over.
COSMETIC = ("train.verbose", "report.plots", "report.tensorboard", "train.worker_timeout")


class ConfigError(XbarError, ValueError):
  """A config field is unknown, of the wrong type or out of range."""


def _choice(*valid: str) -> dict[str, Any]:
  return {"choices": valid}


_POSITIVE = {"positive": True}
_NON_NEGATIVE = {"non_negative": True}


def _f(default: Any, **rule: Any) -> Any:
  """A field with its default and range rule (`_choice(...)`, `**_POSITIVE`, ...)."""
  return dataclasses.field(default=default, metadata=rule)


def _derived() -> Any:
  """A value parsed from the fields in `__post_init__`; not a command-line field."""
  return dataclasses.field(init=False, repr=False, compare=False, default=None)


class _Section:
  """Checks every field's range rule on construction; errors name `config.SECTION.field`."""
  SECTION: ClassVar[str] = ""

  def __post_init__(self) -> None:
    _check_rules(self, f"config.{self.SECTION}.")
    self._parse()

  def _parse(self) -> None:
    """A section's own checks and parsed values."""

  def _set(self, name: str, value: Any) -> None:
    object.__setattr__(self, name, value)

  def _error(self, name: str, valid: str) -> ConfigError:
    return ConfigError(f"config.{self.SECTION}.{name}={getattr(self, name)!r}: {valid}")


def _check_rules(obj: Any, prefix: str) -> None:
  """Each plain field of `obj` against its range rule; an error names `prefix` + the field."""
  for f in _fields(type(obj)):
    value = getattr(obj, f.name)
    where = f"{prefix}{f.name}={value!r}"
    if "choices" in f.metadata and value not in f.metadata["choices"]:
      raise ConfigError(f"{where}: unknown; valid: {', '.join(f.metadata['choices'])}.")
    if f.metadata.get("positive") and not value > 0:
      raise ConfigError(f"{where}: valid: a number > 0.")
    if f.metadata.get("non_negative") and value < 0:
      raise ConfigError(f"{where}: valid: a number >= 0.")


def _fields(cls) -> list[dataclasses.Field]:
  return [f for f in dataclasses.fields(cls) if f.init]


@dataclasses.dataclass(frozen=True)
class Data(_Section):
  """The images.

  Attributes:
    name: fashion_mnist | cifar10 | digits | synthetic | npz | image_folder | none (no data:
      mapping only).
    path: the local files' folder ("" = the dataset's default place); the .npz file or the
      image folder.
    download: let Keras download when local files are missing.
    train_size: the first N training images; 0 = all.
    test_size: the first N test images; 0 = all.
  """
  SECTION: ClassVar[str] = "data"
  name: str = _f("fashion_mnist", **_choice(*DATASETS, "none"))
  path: str = ""
  download: bool = False
  train_size: int = _f(0, **_NON_NEGATIVE)
  test_size: int = _f(0, **_NON_NEGATIVE)

  def _parse(self) -> None:
    if self.name in ("digits", "synthetic") and self.path:
      raise self._error("path", f"{self.name} has no files; valid: ''.")
    if self.name == "npz":
      if not pathlib.Path(self.path).expanduser().is_file():
        raise self._error("path", "no such file; valid: the .npz file holding x_train, y_train, "
                                  "x_test, y_test (data.name='npz').")
    elif self.name == "image_folder" and not self.path:
      raise self._error("path", "valid: the folder of class subfolders "
                                "(data.name='image_folder').")
    elif self.path and not pathlib.Path(self.path).expanduser().is_dir():
      raise self._error("path", "no such folder; valid: the folder holding the dataset's files, "
                                "or '' for its default place.")


@dataclasses.dataclass(frozen=True)
class Model(_Section):
  """The network to prune.

  Attributes:
    name: a zoo builder (`xbar_tfmot/app/zoo.py`), used when `file` is "".
    width: the zoo model's width multiplier.
    file: a .keras/.h5 file or SavedModel folder to start from instead of the zoo.
    input_shape: "H,W,C", the zoo model's input when `data.name` is none.
    classes: the zoo model's outputs when `data.name` is none.
    custom_objects: module(s) defining `file`'s own layers, comma-separated.
    shape: `input_shape` parsed (None when "").
  """
  SECTION: ClassVar[str] = "model"
  name: str = _f("vgg8", **_choice(*sorted(BUILDERS)))
  width: float = _f(1.0, **_POSITIVE)
  file: str = ""
  input_shape: str = ""
  classes: int = _f(0, **_NON_NEGATIVE)
  custom_objects: str = ""
  shape: tuple[int, int, int] | None = _derived()

  def _parse(self) -> None:
    if self.file and not pathlib.Path(self.file).exists():
      raise self._error("file", "no such file or folder; valid: a .keras or .h5 file or a "
                                "SavedModel folder, or '' to build model.name.")
    if self.input_shape:
      try:
        shape = tuple(int(d) for d in self.input_shape.split(","))
      except ValueError:
        shape = ()
      if len(shape) != 3 or min(shape) < 1:
        raise self._error("input_shape", "valid: 'H,W,C' with positive integers, e.g. "
                                         "'224,224,3'.")
      self._set("shape", shape)


@dataclasses.dataclass(frozen=True)
class Chip(_Section):
  """The crossbar and the grain at which it is pruned.

  Attributes:
    spec: `ROWSxCOLS[,field=value]`, a spec preset name or a JSON file (`parse_spec`).
    granularity: column (single columns of a crossbar) | block (whole crossbars).
    crossbar: `spec` parsed.
  """
  SECTION: ClassVar[str] = "chip"
  spec: str = "128x128"
  granularity: str = _f("column", **_choice(*GRANULARITIES))
  crossbar: CrossbarSpec = _derived()

  def _parse(self) -> None:
    from xbar_tfmot.core.spec import parse_spec
    try:
      self._set("crossbar", parse_spec(self.spec))
    except (OSError, ValueError, TypeError) as e:
      raise self._error("spec", str(e)) from None


@dataclasses.dataclass(frozen=True)
class Allocation(_Section):
  """How many crossbars the pruned model keeps, and how they are split among its layers.

  Attributes:
    reduction: the fraction of the mapped layers' crossbars removed (0 < reduction < 1).
    mode: per_layer (each layer loses `reduction`) | global (one budget, split by size) |
      global_score (one budget, chunks ranked model-wide by `score`) | sensitivity
      (split by accuracy curves measured on held-out training images) | validated (each of
      `candidates` cut one-shot and scored on held-out training images; the best is trained:
      `xt.choose_allocation`).
    score: global_score's ranking: magnitude (sum of squared weights over the layer's) |
      saliency (|w dL/dw| on training batches, over the layer's) | relative_magnitude (sum of
      squared weights over the layer's mean unit) | fisher (w^2 mean(dL/dw^2) on training
      batches); "energy", magnitude's former name, warns.
    objective: what `reduction` removes a fraction of, model-wide: crossbars | energy (energy
      per inference on `hardware.preset` from the cost model, split by score per unit of
      energy; mode global_score, or validated with global_score candidates only) | latency
      (refused: pruning cannot lower the cost model's latency).
    candidates: validated: comma-separated `mode[:score]` names (`selection.CANDIDATES`).
    candidate_steps: validated: masked fine-tuning steps (batches of `train.batch_size`
      training images, Adam at `train.learning_rate`) each candidate takes after its cut,
      before it is scored (0: scored one-shot, as cut).
    leave_dense: layers kept whole: default (the first convolution) | "" (none) |
      comma-separated layer names.
    validation_images: training images held out for the methods' own choices (sensitivity,
      validated, layer_by_layer).
    reorder: search input-channel orders that keep more weight per crossbar before pruning.
    dense_layers: `leave_dense` as `CrossbarPolicy.leave_dense` reads it (None = default).
    candidate_names: `candidates` parsed.
  """
  SECTION: ClassVar[str] = "allocation"
  reduction: float = 0.7
  mode: str = _f("per_layer", **_choice(*MODES, "validated"))
  score: str = _f("magnitude", **_choice(*SCORES, *DEPRECATED_SCORES))
  objective: str = _f("crossbars", **_choice(*OBJECTIVES))
  leave_dense: str = "default"
  candidates: str = ",".join(CANDIDATES)
  candidate_steps: int = _f(32, **_NON_NEGATIVE)
  validation_images: int = _f(512, **_POSITIVE)
  reorder: bool = True
  dense_layers: tuple[str, ...] | None = _derived()
  candidate_names: tuple[str, ...] = _derived()

  def _parse(self) -> None:
    if not 0.0 < self.reduction < 1.0:
      raise self._error("reduction", "valid: 0 < reduction < 1 (the fraction of crossbars "
                                     "removed).")
    if self.objective == "latency":
      raise self._error("objective", LATENCY_REFUSED)
    if self.score in DEPRECATED_SCORES:
      warnings.warn(f"config.allocation.score={self.score!r} is deprecated; use "
                    f"{DEPRECATED_SCORES[self.score]!r} (the same score).", FutureWarning,
                    stacklevel=4)
      self._set("score", canonical_score(self.score))
    chosen = tuple(n.strip() for n in self.candidates.split(",") if n.strip())
    if not chosen or set(chosen) - set(CANDIDATES) or len(set(chosen)) < len(chosen):
      raise self._error("candidates", f"valid: distinct comma-separated names among "
                                      f"{', '.join(CANDIDATES)}.")
    self._set("candidate_names", chosen)
    names = self.leave_dense.strip()
    self._set("dense_layers", None if names == "default" else
              tuple(n.strip() for n in names.split(",") if n.strip()))


@dataclasses.dataclass(frozen=True)
class Schedule(_Section):
  """How the masks evolve while the model trains.

  Attributes:
    procedure: joint (every layer at once) | layer_by_layer (one layer at a time, by the
      stop rules of `layer_by_layer.*`).
    prune_epochs: epochs of LGD pruning (0: one-shot exact projection, no training).
    finetune_epochs: epochs with the masks frozen after pruning.
    ramp: the fraction of the pruning epochs over which the budget falls (0 < ramp <= 1).
    updates_per_epoch: mask updates per epoch while the budget falls.
    projection: rpp (relaxant probabilistic projection) | topk (exact projection).
    regrowth: reset | straight_through: how a pruned chunk may come back (`prune_crossbar`).
    temperature: RPP's temperature.
  """
  SECTION: ClassVar[str] = "schedule"
  procedure: str = _f("joint", **_choice(*PROCEDURES))
  prune_epochs: int = _f(2, **_NON_NEGATIVE)
  finetune_epochs: int = _f(1, **_NON_NEGATIVE)
  ramp: float = 0.75
  updates_per_epoch: int = _f(4, **_POSITIVE)
  projection: str = _f("rpp", **_choice(*PROJECTIONS))
  regrowth: str = _f("reset", **_choice(*REGROWTHS))
  temperature: float = _f(1.0, **_NON_NEGATIVE)

  def _parse(self) -> None:
    if not 0.0 < self.ramp <= 1.0:
      raise self._error("ramp", "valid: 0 < ramp <= 1.")


@dataclasses.dataclass(frozen=True)
class LayerByLayer(_Section):
  """The stop rules of `schedule.procedure = "layer_by_layer"` (`StopRules`).

  Attributes:
    max_accuracy_drop: validation accuracy a step may lose.
    max_reduction: a layer's largest reduction.
    crossbar_threshold: Tc: a layer stops at <= Tc crossbars.
    reduction_step: reduction added per step.
    step_epochs: LGD-RPP epochs per step.
    rules: the four rules as `StopRules`.
  """
  SECTION: ClassVar[str] = "layer_by_layer"
  max_accuracy_drop: float = 0.02
  max_reduction: float = 0.9
  crossbar_threshold: int = 1
  reduction_step: float = 0.1
  step_epochs: int = _f(1, **_POSITIVE)
  rules: StopRules = _derived()

  def _parse(self) -> None:
    fields = {"max_accuracy_drop": "max_accuracy_drop", "max_reduction": "max_reduction",
              "crossbar_threshold": "crossbar_threshold", "step": "reduction_step"}
    bad = invalid_rule({rule: getattr(self, name) for rule, name in fields.items()})
    if bad:
      raise self._error(fields[bad[0]], f"valid: {bad[1]}.")
    self._set("rules", StopRules(**{rule: getattr(self, name) for rule, name in fields.items()}))


@dataclasses.dataclass(frozen=True)
class Train(_Section):
  """Training (baseline, pruning and fine-tuning alike).

  Attributes:
    batch_size: the global batch, split over the replicas of `strategy`.
    learning_rate: baseline and pruning epochs.
    finetune_learning_rate: fine-tuning epochs.
    distillation_weight: > 0: pruning and fine-tuning learn from the dense model (<= 1).
    distillation_temperature: the distillation's softmax temperature.
    bn_recalibration_images: > 0: re-estimate BatchNorm statistics on this many training
      images before a phase saves and evaluates its model.
    strategy: default (one device) | mirrored (tf.distribute, one host) | multi_worker
      (tf_keras; workers from TF_CONFIG, docs/usage.md).
    devices: mirrored: comma-separated devices; "" = all GPUs, else the CPU.
    worker_timeout: multi_worker: seconds a collective waits for the others.
    optimizer: adam | adamw | sgd (momentum 0.9) | rmsprop.
    outputs: the loss: auto (a softmax last layer = probabilities) | logits | probabilities.
    baseline_epochs: epochs of the dense model before pruning.
    hardware_aware: pruning and fine-tuning see the chip of `hardware.preset`/`hardware.set`
      (programming noise, quantisation; `xt.HardwareAware`), in either procedure.
    hardware_aware_variation: > 0: train at this variation (of g_max) instead of the chip's.
    hardware_aware_stuck: the training chip has the spec's stuck cells too.
    verbose: Keras' fit verbosity (1: a progress bar on a terminal, a line per epoch else).
  """
  SECTION: ClassVar[str] = "train"
  batch_size: int = _f(128, **_POSITIVE)
  learning_rate: float = _f(1e-3, **_POSITIVE)
  finetune_learning_rate: float = _f(3e-4, **_POSITIVE)
  distillation_weight: float = 0.0
  distillation_temperature: float = _f(4.0, **_POSITIVE)
  bn_recalibration_images: int = _f(0, **_NON_NEGATIVE)
  strategy: str = _f("default", **_choice(*STRATEGIES))
  devices: str = ""
  worker_timeout: float = _f(600.0, **_POSITIVE)
  optimizer: str = _f("adam", **_choice(*OPTIMIZERS))
  outputs: str = _f("auto", **_choice(*OUTPUTS))
  baseline_epochs: int = _f(3, **_NON_NEGATIVE)
  hardware_aware: bool = False
  hardware_aware_variation: float = _f(0.0, **_NON_NEGATIVE)
  hardware_aware_stuck: bool = False
  verbose: int = _f(1, **_NON_NEGATIVE)

  def _parse(self) -> None:
    if not 0 <= self.distillation_weight <= 1:
      raise self._error("distillation_weight", "valid: 0 (off) <= weight <= 1.")


@dataclasses.dataclass(frozen=True)
class Hardware(_Section):
  """Energy, area and accuracy on non-ideal crossbars after export (docs/hardware.md).

  Attributes:
    enabled: run the hardware phase (accuracy on simulated chips); the report gives the chip's
      energy, area and latency either way (cost model only).
    preset: a hardware preset name or JSON file.
    set: overrides, e.g. "variation=0.05,adc_bits=6".
    instances: chip instances (seeds) for accuracy mean and spread.
    test_images: test images each chip classifies.
    calibration_images: training images that set the DAC/ADC ranges.
    sweep_instances: instances per condition of the one-factor-at-a-time sweep; 0 = no sweep.
    sweep_variations: variations (of g_max) swept, ADC at the preset's bits.
    sweep_adc_bits: ADC resolutions swept, no variation.
    sweep_stuck: fractions of stuck cells (half on, half off) swept, e.g. "0,0.01".
    sweep_times: seconds after programming swept (PCM-like drift), e.g. "1,3600,86400,3.15e7".
    time: seconds after programming at which the chips are read (0: no drift; sets the
      chip's `drift_time`).
    compensation: steps run on every programmed chip on the calibration images, e.g.
      "adc,column_gain,batchnorm" (xt.compensate_chip; "" for none).
    hardware_spec: `preset` with `set` and `time` applied, a `HardwareSpec` (the report's chip
      cost uses it even when the hardware phase is off).
    compensation_steps: `compensation` as a tuple of steps.
    sweep: `hardware_sweep.sweep`'s value lists ({} when the phase or the sweep is off).
  """
  SECTION: ClassVar[str] = "hardware"
  enabled: bool = False
  preset: str = "isaac_32nm"
  set: str = ""
  instances: int = _f(3, **_POSITIVE)
  test_images: int = _f(1000, **_POSITIVE)
  calibration_images: int = _f(256, **_POSITIVE)
  sweep_instances: int = _f(2, **_NON_NEGATIVE)
  sweep_variations: str = "0,0.05,0.1"
  sweep_adc_bits: str = "4,6,8"
  sweep_stuck: str = ""
  sweep_times: str = ""
  time: float = _f(0.0, **_NON_NEGATIVE)
  compensation: str = ""
  hardware_spec: Any = _derived()
  compensation_steps: tuple = _derived()
  sweep: dict = _derived()

  def _parse(self) -> None:
    from xbar_tfmot.core.hardware import check_compensation, parse_hardware, parse_override
    from xbar_tfmot.models.hardware_sweep import conditions, parse_values
    try:
      overrides = dict(parse_override(s) for s in self.set.split(",") if s.strip())
      if self.time:
        overrides["drift_time"] = float(self.time)
      self._set("hardware_spec", parse_hardware(self.preset, **overrides))
    except ValueError as e:
      raise ConfigError(f"config.hardware (preset={self.preset!r}, set={self.set!r}, "
                        f"time={self.time!r}): {e}") from None
    try:
      self._set("compensation_steps", check_compensation(self.compensation))
    except ValueError as e:
      raise self._error("compensation", str(e)) from None
    sweep = {}
    if self.enabled and self.sweep_instances:
      for name, kind in (("variations", float), ("adc_bits", int), ("stuck", float),
                         ("times", float)):
        field = f"sweep_{name}"
        try:
          sweep[name] = parse_values(getattr(self, field), f"config.hardware.{field}", kind)
          conditions(self.hardware_spec, **{name: sweep[name]})
        except ValueError as e:
          raise self._error(field, str(e)) from None
    self._set("sweep", sweep if any(sweep.values()) else {})


@dataclasses.dataclass(frozen=True)
class Export(_Section):
  """The exported files (`xt.export`).

  Attributes:
    enabled: run the export phase.
    formats: a comma-separated subset of saved_model, tflite, json, tflite_int8 (int8
      weights and activations, by post-training quantisation or, with
      `quantize_aware_epochs`, quantisation-aware training; its zeros checked against the
      mapping, its test accuracy reported beside the float file's).
    verify: check the export with `xbar-verify` (a failed check fails the run).
    representative_images: tflite_int8 by post-training quantisation: training images that
      calibrate it.
    quantize_aware_epochs: tflite_int8, tf_keras: > 0 fine-tunes the pruned model this many
      epochs with quantisation-aware training that keeps its zeros (`xt.quantize_aware`) on
      the training images, and converts the int8 file from it; 0: post-training quantisation.
    kinds: `formats` parsed.
  """
  SECTION: ClassVar[str] = "export"
  enabled: bool = True
  formats: str = "saved_model,tflite,json"
  verify: bool = True
  representative_images: int = _f(500, **_POSITIVE)
  quantize_aware_epochs: int = _f(0, **_NON_NEGATIVE)
  kinds: tuple[str, ...] = _derived()

  def _parse(self) -> None:
    kinds = tuple(f.strip() for f in self.formats.split(",") if f.strip())
    if set(kinds) - set(EXPORT_FORMATS) or not kinds:
      raise self._error("formats", f"valid: a comma-separated non-empty subset of "
                                   f"{', '.join(EXPORT_FORMATS)}.")
    for tflite in ("tflite", "tflite_int8"):
      if tflite in kinds and "saved_model" not in kinds:
        raise self._error("formats", f"{tflite} is converted from the SavedModel; add "
                                     f"saved_model.")
    if self.quantize_aware_epochs and "tflite_int8" not in kinds:
      raise self._error("quantize_aware_epochs", "quantisation-aware training makes the int8 "
                                                 "file, and export.formats has no tflite_int8; "
                                                 "valid: 0, or tflite_int8 in export.formats.")
    self._set("kinds", kinds)


@dataclasses.dataclass(frozen=True)
class Report(_Section):
  """The run's report (`report/`).

  Attributes:
    plots: draw the PNG plots.
    tensorboard: write TensorBoard logs under `logs/`.
  """
  SECTION: ClassVar[str] = "report"
  plots: bool = True
  tensorboard: bool = False


SECTIONS = {cls.SECTION: cls for cls in (Data, Model, Chip, Allocation, Schedule, LayerByLayer,
                                        Train, Hardware, Export, Report)}
# Old path -> new path; the old paths work (and warn) for one release.
RENAMED = {
    **{f"crossbar.{f}": f"chip.{f}" for f in ("spec", "granularity")},
    **{f"crossbar.{f}": f"allocation.{f}" for f in ("reduction", "mode", "score", "leave_dense",
                                                    "validation_images", "reorder")},
    **{f"crossbar.{f}": f"schedule.{f}" for f in ("projection", "regrowth", "temperature", "ramp",
                                                  "updates_per_epoch")},
    "prune.procedure": "schedule.procedure",
    "train.prune_epochs": "schedule.prune_epochs",
    "train.finetune_epochs": "schedule.finetune_epochs",
    **{f"prune.{f}": f"layer_by_layer.{f}" for f in ("max_accuracy_drop", "max_reduction",
                                                     "crossbar_threshold", "reduction_step",
                                                     "step_epochs")},
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A checked `xbar-prune` configuration (`parse`); the phases read only this.

  Attributes:
    name: the run's name (its workdir is `runs/<name>` unless `workdir` is set).
    workdir: the run folder ("" = runs/<name>).
    seed: every random choice of the run derives from it.
    flavour: tf_keras | keras3.
  """
  name: str = "run"
  workdir: str = ""
  seed: int = _f(0, **_NON_NEGATIVE)
  flavour: str = _f("tf_keras", **_choice(*FLAVOURS))
  data: Data = dataclasses.field(default_factory=Data)
  model: Model = dataclasses.field(default_factory=Model)
  chip: Chip = dataclasses.field(default_factory=Chip)
  allocation: Allocation = dataclasses.field(default_factory=Allocation)
  schedule: Schedule = dataclasses.field(default_factory=Schedule)
  layer_by_layer: LayerByLayer = dataclasses.field(default_factory=LayerByLayer)
  train: Train = dataclasses.field(default_factory=Train)
  hardware: Hardware = dataclasses.field(default_factory=Hardware)
  export: Export = dataclasses.field(default_factory=Export)
  report: Report = dataclasses.field(default_factory=Report)

  def __post_init__(self) -> None:
    _check_rules(self, "config.")  # the sections checked themselves; they carry no rule here
    _check_across(self)

  def flat(self) -> dict[str, Any]:
    """`{"train.batch_size": 128, ...}`: the command-line fields, as `config.json` holds them."""
    out = {}
    for f in _fields(RunConfig):
      value = getattr(self, f.name)
      if f.name in SECTIONS:
        out.update({f"{f.name}.{g.name}": getattr(value, g.name) for g in _fields(type(value))})
      else:
        out[f.name] = value
    return out


def _check_across(c: RunConfig) -> None:
  """The combinations of fields that cannot run."""
  no_data = c.data.name == "none"
  if c.export.enabled and "tflite_int8" in c.export.kinds and no_data:
    raise ConfigError("config.export.formats: tflite_int8 calibrates on training images; "
                      "valid: a data.name other than none, or no tflite_int8.")
  if c.export.quantize_aware_epochs and c.flavour == "keras3":
    raise ConfigError(f"config.export.quantize_aware_epochs={c.export.quantize_aware_epochs} "
                      f"with config.flavour='keras3': Keras 3 has no quantisation-aware training "
                      f"that keeps pruned zeros (TFMOT's pruning-preserving scheme wraps tf_keras "
                      f"models only; Keras 3's Model.quantize is post-training), so a Keras 3 "
                      f"model's int8 file is post-training quantised; valid: 0 (calibrated on "
                      f"export.representative_images training images), or flavour='tf_keras'.")
  if c.hardware.enabled and no_data:
    raise ConfigError("config.hardware.enabled: measuring accuracy needs data; valid: a "
                      "data.name other than none.")
  if c.train.strategy == "multi_worker" and c.flavour == "keras3":
    raise ConfigError("config.train.strategy='multi_worker' with config.flavour='keras3': Keras "
                      "3's TensorFlow trainer cannot fit under MultiWorkerMirroredStrategy (its "
                      "symbolic build reduces the input batch with strategy.reduce, which the "
                      "collective ops refuse; keras-team/keras#20585); valid: flavour='tf_keras', "
                      "or strategy='mirrored' on one host.")
  if c.allocation.mode == "global_score" and not c.schedule.prune_epochs:
    raise ConfigError("config.allocation.mode='global_score' re-splits the budget at the mask "
                      "updates of training; valid: schedule.prune_epochs >= 1 (or another mode).")
  if c.allocation.objective != "crossbars":
    _check_objective(c)
  if c.allocation.mode in ("sensitivity", "validated") and no_data:
    raise ConfigError(f"config.allocation.mode={c.allocation.mode!r} measures on held-out "
                      f"training images; valid: a data.name other than none.")
  if c.schedule.procedure == "layer_by_layer":
    if c.allocation.mode != "per_layer":
      raise ConfigError(f"config.allocation.mode={c.allocation.mode!r}: schedule.procedure="
                        f"'layer_by_layer' sets each layer's budget by its stop rules; valid: "
                        f"per_layer.")
    if no_data:
      raise ConfigError("config.schedule.procedure='layer_by_layer' measures accuracy on "
                        "held-out training images; valid: a data.name other than none.")
    if c.train.distillation_weight:
      raise ConfigError(f"config.train.distillation_weight={c.train.distillation_weight!r}: "
                        f"schedule.procedure='layer_by_layer' trains on the labels; valid: 0.")
  if no_data:
    if c.train.baseline_epochs or c.schedule.prune_epochs or c.schedule.finetune_epochs:
      raise ConfigError("config.data.name='none' (mapping only) needs train.baseline_epochs, "
                        "schedule.prune_epochs and schedule.finetune_epochs = 0.")
    if not c.model.file:
      if c.model.shape is None:
        raise ConfigError("config.model.input_shape='': valid: 'H,W,C' with positive integers, "
                          "e.g. '224,224,3' (data.name is none).")
      if c.model.classes < 2:
        raise ConfigError("config.model.classes: valid: >= 2 when data.name is none.")


def _check_objective(c: RunConfig) -> None:
  """An allocation by cost: a mode that splits by cost, and a chip that can hold the crossbar."""
  a = c.allocation
  modes = " or ".join(repr(m) for m in COST_MODES)
  if a.mode == "validated":
    others = [n for n in a.candidate_names if n.partition(":")[0] not in COST_MODES]
    if others:
      raise ConfigError(f"config.allocation.candidates: {', '.join(others)} cannot split by "
                        f"allocation.objective={a.objective!r}; valid: candidates of mode "
                        f"{modes} only (e.g. 'global_score:magnitude,global_score:fisher').")
  elif a.mode not in COST_MODES:
    raise ConfigError(f"config.allocation.mode={a.mode!r} with allocation.objective="
                      f"{a.objective!r}: valid: mode={modes}, or 'validated' with such "
                      f"candidates (per_layer cuts each layer by the same fraction in any unit).")
  hw = c.hardware.hardware_spec
  try:
    hw.cells(c.chip.crossbar)
  except ValueError as e:
    raise ConfigError(f"config.allocation.objective={a.objective!r} costs the crossbars on "
                      f"hardware.preset={c.hardware.preset!r}, which cannot hold chip.spec="
                      f"{c.chip.spec!r}: {e}") from None


def defaults() -> ml_collections.ConfigDict:
  """Every field with its default, and the old names (`RENAMED`) as empty placeholders."""
  c = ml_collections.ConfigDict()
  for f in _fields(RunConfig):
    if f.name in SECTIONS:
      section = ml_collections.ConfigDict()
      for g in _fields(SECTIONS[f.name]):
        section[g.name] = g.default
      c[f.name] = section
    else:
      c[f.name] = f.default
  kinds = {path: type(value) for path, value in flatten(c).items()}
  for old, new in RENAMED.items():
    section, name = old.split(".")
    if section not in c:
      c[section] = ml_collections.ConfigDict()
    c[section][name] = config_dict.placeholder(kinds[new])
  return c


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


def parse(config: ml_collections.ConfigDict | RunConfig) -> RunConfig:
  """The checked `RunConfig` of `config` (see the module docstring); a `RunConfig` is returned
  as it is. Raises `ConfigError` naming the first bad field."""
  if isinstance(config, RunConfig):
    return config
  expected, given = flatten(defaults()), _renamed(flatten(config))
  for path in given:
    if path not in expected:
      parent = path.rpartition(".")[0]
      valid = sorted(p for p in expected if p.rpartition(".")[0] == parent and p not in RENAMED)
      raise ConfigError(f"config.{path}: unknown field; valid fields here: {', '.join(valid)}.")
  values: dict[str, Any] = {}
  for path, default in expected.items():
    if path in RENAMED:
      continue
    if path not in given:
      raise ConfigError(f"config.{path}: missing; start the config from "
                        f"xbar_tfmot.app.configuration.defaults().")
    values[path] = value = given[path]
    kind = type(default)
    ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))
          or kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
      raise ConfigError(f"config.{path}={value!r}: wrong type {type(value).__name__}; valid: "
                        f"{kind.__name__}.")
  top = {k: v for k, v in values.items() if "." not in k}
  return RunConfig(**top, **{name: cls(**_section_values(values, name, cls))
                             for name, cls in SECTIONS.items()})


def _section_values(values: dict[str, Any], name: str, cls) -> dict[str, Any]:
  out = {}
  for f in _fields(cls):
    value = values[f"{name}.{f.name}"]
    out[f.name] = float(value) if isinstance(f.default, float) else value
  return out


def _renamed(given: dict[str, Any]) -> dict[str, Any]:
  """`given` with each old name's value moved to its new name, where it wins (an override on
  the command line under the old name still overrides the config file); each old name used
  warns. Unset placeholders are dropped."""
  out = {k: v for k, v in given.items() if k not in RENAMED}
  for old, new in RENAMED.items():
    value = given.get(old)
    if value is None:
      continue
    warnings.warn(f"config.{old} is deprecated; use config.{new} (the same field; this value "
                  f"replaces config.{new}={out.get(new)!r}). The old name will be removed in "
                  f"the next release.", FutureWarning, stacklevel=3)
    out[new] = value
  return out


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """Fields (flattened paths) whose values differ and matter for the results; a field that
  one side lacks (added since it was written) counts at its default."""
  base = {k: v for k, v in flatten(defaults()).items() if k not in RENAMED}
  old, new = {**base, **_canonical(old)}, {**base, **_canonical(new)}
  keys = set(old) | set(new)
  return sorted(k for k in keys if k not in COSMETIC and old.get(k) != new.get(k))


def _canonical(flat: dict[str, Any]) -> dict[str, Any]:
  """`flat` under the current names and values: a run folder saved by the release before
  (`crossbar.reduction`, `crossbar.score="energy"`) resumes under `allocation.reduction` and
  `"magnitude"`."""
  out = {RENAMED.get(k, k): v for k, v in flat.items() if v is not None}
  if isinstance(out.get("allocation.score"), str):
    out["allocation.score"] = canonical_score(out["allocation.score"])
  return out
