"""The `xbar-prune` pipeline: baseline, reorder, LGD-RPP pruning, fine-tuning, export, report.

Every phase writes its outputs under the run's workdir and records itself in `state.json`
when done; training checkpoints the model (optimizer included) after every epoch. Rerunning
the same command skips finished phases and continues an interrupted one from its last epoch.
Each epoch starts from `keras.utils.set_random_seed(f(seed, phase, epoch))` and RPP draws
from stateless seeds of (seed, layer, step), so a resumed run prunes as a straight one.

Workdir layout: `config.json` (the flattened config; a rerun with different results-relevant
fields is refused), `state.json`, `checkpoints/` (`baseline.keras`, `reordered.keras`,
`pruned.keras`, and `<phase>/model.keras` + `progress.json` during training;
`prune/layer_by_layer_<k>.keras` + `layer_by_layer.json` after the k-th layer of the
layer-by-layer procedure, which a rerun continues from), `export/`
(`xt.export`), `report/` (`report.md`, `metrics.json`, `mapping.json`, PNG plots), `logs/`
(TensorBoard, when asked).
"""

from __future__ import annotations

import math
import os
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

from xbar_tfmot.app import configuration, datasets, distribution, run_report, training, zoo
from xbar_tfmot.app.configuration import ConfigError
from xbar_tfmot.app.workdir_lock import WorkdirBusy, WorkdirLock
from xbar_tfmot.core import spec as spec_lib
from xbar_tfmot.core.policy import CrossbarPolicy
from xbar_tfmot.core.schedules import CrossbarPolynomialDecay, ramp_steps
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.export import model_io
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning import one_shot

PHASES = ("baseline", "reorder", "prune", "export", "hardware", "report")


def parse_spec(text: str) -> CrossbarSpec:
  """`crossbar.spec` (see `spec.parse_spec`); a bad value is a `ConfigError` naming the field."""
  try:
    return spec_lib.parse_spec(text)
  except (OSError, ValueError, TypeError) as e:
    raise ConfigError(f"config.crossbar.spec={text!r}: {e}") from None


_write_json, _read_json = training.write_json, training.read_json


def _isatty(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no such method, or a closed stream
    return False


def _summary_item(key: str, value: Any) -> str:
  """One `key value` of a phase's done line: durations as `301.8 s`, other floats to 4 places."""
  if key == "seconds":
    return f"{key} {training.format_seconds(value)}"
  return f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"


class Pipeline:
  """One run of a checked config; `run()` does (or finishes) every phase."""

  def __init__(self, config, log: Callable[[str], None] = print):
    configuration.check(config)
    self.config = config
    self.log = log
    self.workdir = pathlib.Path(config.workdir or os.path.join("runs", config.name))
    self.shared_workdir = self.workdir  # the chief's; `workdir` is a worker's own (`run()`)
    self.task = distribution.LOCAL  # this process among the workers (`run()` reads TF_CONFIG)
    self.strategy = None  # the tf.distribute strategy of the training phases (`_run()`)
    self.spec = parse_spec(config.crossbar.spec)
    self.K = introspection.keras_module(config.flavour)
    self.state: dict[str, Any] = {"phases": {}}
    self.data = None
    self.validation = None  # held-out training images for the methods' own choices
    self._pruned_cache = None  # `_pruned()`
    try:
      self.custom_objects = model_io.load_custom_objects(config.model.custom_objects)
    except ValueError as e:
      raise ConfigError(f"config.model.custom_objects={config.model.custom_objects!r}: "
                        f"{e}") from None

  # --- set-up, all before any training -----------------------------------------------------

  def prepare(self) -> None:
    """Loads the data, checks the model, then claims the workdir: config errors surface here."""
    self.data = self._load_data()
    self._fresh_model = self._initial_model()
    self._check_budgets(self._fresh_model)
    flat = configuration.flatten(self.config)
    shared = self.shared_workdir
    config_file = shared / "config.json"
    if config_file.exists():
      old = _read_json(config_file)
      changed = configuration.differences(old, flat)
      if changed:
        raise ConfigError(
            f"{shared} holds a run with a different config ({', '.join(changed)}); rerun "
            f"with the same config to resume it, or give another config.workdir.")
    if not self.task.chief:  # resume from the chief's files, write to the scratch copy
      distribution.reset_scratch(shared, self.workdir)
    (self.workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
    _write_json(self.workdir / "config.json", flat)
    state_file = self.workdir / "state.json"
    if state_file.exists():
      self.state = _read_json(state_file)
    distribution.barrier(self.strategy, self.task)  # every worker starts from the same state

  def _load_data(self):
    c = self.config.data
    if c.name == "none":
      return None
    try:
      (x, y), (xt, yt) = datasets.load_dataset(c.name, c.path or None, c.download,
                                               seed=self.config.seed)
    except FileNotFoundError as e:
      raise ConfigError(f"config.data.name={c.name!r}: {e} (or set config.data.download=True "
                        f"to let Keras download it)") from None
    except ValueError as e:
      raise ConfigError(f"config.data.path={c.path!r} (data.name={c.name!r}): {e}") from None
    if c.name in datasets.USER_DATA:  # a user's file may be sorted by class
      order = np.random.default_rng(self.config.seed).permutation(len(y))
      x, y = x[order], y[order]
    if c.train_size:
      x, y = x[:c.train_size], y[:c.train_size]
    if (self.config.crossbar.mode == "sensitivity"
        or self.config.prune.procedure == "layer_by_layer"):  # carved from the training images
      held = self.config.crossbar.validation_images
      if held >= len(x):
        raise ConfigError(f"config.crossbar.validation_images={held}: valid: fewer than the "
                          f"{len(x)} training images.")
      self.validation = (x[-held:], y[-held:])
      x, y = x[:-held], y[:-held]
    if c.test_size:
      xt, yt = xt[:c.test_size], yt[:c.test_size]
    return (x, y), (xt, yt)

  def _initial_model(self):
    c = self.config
    if c.model.file:
      try:
        model = self._load(pathlib.Path(c.model.file))
      except Exception as e:  # Keras raises many kinds for files it cannot read
        unknown = model_io.unknown_class(str(e))
        why = (f"it uses the class {unknown!r}; give the module defining it as "
               f"config.model.custom_objects" if unknown else str(e)[:model_io.ERROR_CHARS])
        raise ConfigError(f"config.model.file={c.model.file!r}: cannot load it as a "
                          f"{c.flavour} model (config.flavour): {why}") from None
      field = "config.model.file"
    else:
      if self.data is None:
        shape, classes = configuration.input_shape(c), c.model.classes
      else:
        (x, y), _ = self.data
        shape, classes = x.shape[1:], int(max(y.max(), 1)) + 1
      model = zoo.build_model(c.model.name, shape, classes, c.model.width, c.flavour, c.seed)
      field = "config.model.name"
    mapped = [l.name for l in introspection.iter_layers(model) if introspection.is_mapped(l)]
    if not mapped:
      raise ConfigError(f"{field}: the model {model.name!r} has no mappable layer (Conv1D, "
                        f"Conv2D or Dense); nothing to prune.")
    for name in mapped:
      try:
        introspection.geometry_of(introspection.unwrap(model.get_layer(name)), self.spec)
      except ValueError as e:
        raise ConfigError(f"config.crossbar.spec={self.config.crossbar.spec!r}: layer {name}: "
                          f"{e}") from None
    if self.data is not None:
      (x, y), _ = self.data
      if tuple(model.input_shape[1:]) != tuple(x.shape[1:]):
        raise ConfigError(f"{field}: the model takes inputs {tuple(model.input_shape[1:])} but "
                          f"{c.data.name} images are {tuple(x.shape[1:])}.")
      if int(model.output_shape[-1]) <= int(y.max()):
        raise ConfigError(f"{field}: the model has {model.output_shape[-1]} outputs but "
                          f"{c.data.name} has labels up to {int(y.max())}.")
    return model

  def _check_budgets(self, model) -> None:
    """Every crossbar budget the prune phase will ask for, computed now, before any training.

    A budget is a function of the mapped layers' names, kinds and kernel shapes, the spec and
    the `crossbar.*` fields only (`LayerGeometry`, `CrossbarPolicy.plan`, `plan.plan_model`),
    never of the weights: training and reorder (a permutation) change no shape, and what is
    weight-dependent (`global_score`'s re-split at every update, `sensitivity`'s curves) only
    splits a model-wide total that `plan` has already checked. So the untrained model fails
    here exactly where the prune phase would fail after training. Raises `ConfigError` naming
    the field, and for `crossbar.reduction` the range that is valid for this model.
    """
    from xbar_tfmot.pruning import plan as plan_lib
    c = self.config.crossbar
    leaves = list(introspection.iter_layers(model))
    geometries = [introspection.geometry_of(l, self.spec) for l in leaves
                  if introspection.is_mapped(l)]
    dense = configuration.leave_dense(self.config)
    try:
      CrossbarPolicy(leave_dense=dense).plan(geometries, 0.5)
    except ValueError as e:
      raise ConfigError(f"config.crossbar.leave_dense={c.leave_dense!r}: {e}") from None
    if self.config.prune.procedure == "layer_by_layer":
      return  # its budgets come from its stop rules; crossbar.reduction only guides reorder
    curves = None  # sensitivity: the measured curves split the total, they never change it
    if c.mode == "sensitivity":
      curves = {g.name: [[g.dense_crossbars, 0.0]] for g in geometries}
    policy = CrossbarPolicy(leave_dense=dense, mode=c.mode, score=c.score, curves=curves)

    def problem(reduction: float) -> str | None:
      """Why the prune phase would refuse `reduction` (as it computes budgets), or None."""
      try:
        if self.config.train.prune_epochs == 0:  # one-shot projection
          policy.plan(geometries, reduction)
        else:  # prune_crossbar
          plan_lib.plan_model(leaves, self.spec, policy, reduction)
      except ValueError as e:
        return str(e)
      return None

    why = problem(c.reduction)
    if why is None:
      return
    valid = [k / 1000 for k in range(1, 1000) if problem(k / 1000) is None]
    where = (f"for this model ({sum(g.dense_crossbars for g in geometries)} crossbars dense on "
             f"{self.spec}, crossbar.mode={c.mode!r})")
    if not valid:
      raise ConfigError(f"config.crossbar.reduction={c.reduction!r}: no reduction can be met "
                        f"{where}; valid: smaller crossbars (config.crossbar.spec) or fewer "
                        f"layers left dense (config.crossbar.leave_dense). Details: {why}")
    low, high = valid[0], valid[-1]  # an interval: fewer crossbars as the reduction grows
    if c.reduction > high:
      bound = f"reduction <= {high:g}" + (f" (and >= {low:g})" if low > 0.001 else "")
      side = "too high"
    else:
      bound = f"reduction >= {low:g}" + (f" (and <= {high:g})" if high < 0.999 else "")
      side = "too low"
    raise ConfigError(f"config.crossbar.reduction={c.reduction!r}: {side} {where}; valid: "
                      f"{bound}. Details: {why}")

  # --- helpers -----------------------------------------------------------------------------

  def _path(self, name: str) -> pathlib.Path:
    return self.workdir / "checkpoints" / name

  def _done(self, phase: str) -> dict[str, Any] | None:
    return self.state["phases"].get(phase)

  def _record(self, phase: str, result: dict[str, Any], started: float) -> None:
    result["seconds"] = round(time.perf_counter() - started, 1)
    self.state["phases"][phase] = result
    _write_json(self.workdir / "state.json", self.state)

  def _finish(self, phase: str, result: dict[str, Any], started: float) -> None:
    self._record(phase, result, started)
    summary = ", ".join(_summary_item(k, v) for k, v in result.items()
                        if not isinstance(v, (dict, list)))
    self.log(f"[{phase}] done: {summary}")

  def _skip(self, phase: str, result: dict[str, Any], started: float, switch: str) -> None:
    """Records a phase that a config switch turned off (a rerun skips it as done) and says
    so: `[hardware] skipped (hardware.enabled=False)`."""
    self._record(phase, result, started)
    self.log(f"[{phase}] skipped ({switch})")

  def _pruned(self):
    """`(pruned model, its mapping)`: loaded and built once per process, validated once (as
    it is built), and handed to export, hardware and report alike."""
    if self._pruned_cache is None:
      from xbar_tfmot.models.model_mapping import build_mapping
      model = self._load(self._path("pruned.keras"))
      self._pruned_cache = model, build_mapping(model, self.spec, self.config.crossbar.granularity)
    return self._pruned_cache

  def _save(self, model, path: pathlib.Path) -> None:
    training.save_model(model, path)

  def _recalibrated(self, model):
    """`model` with its BatchNorm statistics re-estimated on `train.bn_recalibration_images`
    training images (never test images), when that is set; saved and evaluated as such."""
    images = self.config.train.bn_recalibration_images
    if images and self.data is not None:
      from xbar_tfmot.models.batchnorm import recalibrate_batchnorm
      recalibrate_batchnorm(model, self.data[0][0][:images], batch_size=500)
    return model

  def _load(self, path: pathlib.Path):
    return model_io.load_with(self.config.flavour, str(path), self.custom_objects, compile=True)

  def _compile(self, model, learning_rate: float, distill: bool = False) -> None:
    c = self.config.train
    distillation = (c.distillation_temperature, c.distillation_weight) if distill else None
    training.compile_classifier(model, self.K, learning_rate, c.optimizer, c.outputs,
                                distillation)

  def _evaluate(self, model) -> float:
    _, (xt, yt) = self.data
    return training.accuracy(model, xt, yt, batch_size=512)

  def _fit(self, model, phase: str, epochs: int, learning_rate: Callable[[int], float],
           callbacks: list, on_epoch: Callable[[int], None] = lambda e: None,
           targets: tuple | None = None):
    """Trains `epochs` epochs with a checkpoint after each; continues from the last one.
    `targets`: `(train, test)` labels to fit on instead of the data's (distillation)."""
    (x, y), (xt, yt) = self.data
    if targets is not None:
      y, yt = targets

    def resumed(start: int) -> None:
      self.log(f"[{phase}] resuming after epoch {start} of {epochs} from {self._path(phase)}")

    return training.fit_epochs(
        model, x, y, self.K, epochs=epochs, batch_size=self.config.train.batch_size,
        seed=self.config.seed, phase=PHASES.index(phase),
        run_folder=training.RunFolder(self._path(phase), self._load),
        learning_rate=learning_rate, callbacks=callbacks, validation_data=(xt, yt),
        verbose=self._keras_verbose(), on_epoch=on_epoch, on_resume=resumed)

  def _keras_verbose(self) -> int:
    """`train.verbose` for Keras' `fit`, except that a progress bar (1) becomes one line per
    epoch (2) when standard output is not a terminal: a log file or CI would otherwise get a
    `\\r` update for every batch."""
    verbose = self.config.train.verbose
    if verbose == 1 and not _isatty(sys.stdout):
      return 2
    return verbose

  def _tensorboard(self, phase: str) -> list:
    if not self.config.report.tensorboard:
      return []
    return [self.K.callbacks.TensorBoard(str(self.workdir / "logs" / phase))]

  # --- phases ------------------------------------------------------------------------------

  def baseline(self) -> None:
    if self._done("baseline"):
      return
    started, c = time.perf_counter(), self.config
    model, history = self._fresh_model, {}
    epochs = c.train.baseline_epochs
    self.log(f"[baseline] {model.name}: {model.count_params():,} parameters, "
             f"{epochs} epochs" + (f" from {c.model.file}" if c.model.file else ""))
    if epochs:
      self._compile(model, c.train.learning_rate)
      model, history = self._fit(model, "baseline", epochs, lambda e: c.train.learning_rate,
                                 self._tensorboard("baseline"))
    self._save(self._recalibrated(model), self._path("baseline.keras"))
    result = {"history": history}
    if self.data is not None:
      result["accuracy"] = self._evaluate(model)
    self._finish("baseline", result, started)

  def reorder(self) -> None:
    if self._done("reorder"):
      return
    started, c = time.perf_counter(), self.config
    if not c.crossbar.reorder:
      self._skip("reorder", {"applied": False}, started, "crossbar.reorder=False")
      return
    from xbar_tfmot.models.reorder import reorder_model
    self.log(f"[reorder] searching input-channel orders for {c.crossbar.granularity} grain at "
             f"reduction {c.crossbar.reduction}")
    model = self._load(self._path("baseline.keras"))
    reordered, result = reorder_model(model, self.spec, c.crossbar.reduction,
                                      c.crossbar.granularity, seed=c.seed)
    self._save(reordered, self._path("reordered.keras"))
    out = {"applied": True, "kept_before": result.kept_before, "kept_after": result.kept_after,
           "skipped": result.skipped}
    if self.data is not None:
      out["accuracy"] = self._evaluate(reordered)
    self._finish("reorder", out, started)

  def _prune_input(self) -> pathlib.Path:
    reordered = self._path("reordered.keras")
    return reordered if self._done("reorder").get("applied") else self._path("baseline.keras")

  def _policy(self, model=None) -> CrossbarPolicy:
    """The configured policy; `sensitivity` measures its curves on `model` (the prune input)
    over the validation images held out of training (`crossbar.validation_images`)."""
    c = self.config.crossbar
    curves = None
    if c.mode == "sensitivity":
      from xbar_tfmot.pruning.sensitivity import sensitivity_curves
      self._compile(model, self.config.train.learning_rate)
      measured = sensitivity_curves(model, self.spec, self.validation, c.granularity)
      self.log(f"[prune] sensitivity curves: {measured['evaluations']} evaluations on "
               f"{len(self.validation[1])} held-out training images, "
               f"{training.format_seconds(measured['seconds'])}")
      curves = measured["curves"]
    return CrossbarPolicy(leave_dense=configuration.leave_dense(self.config), mode=c.mode,
                          score=c.score, curves=curves)

  def prune(self) -> None:
    if self._done("prune"):
      return
    started, c = time.perf_counter(), self.config
    model = self._load(self._prune_input())
    x = self.data[0][0] if self.data is not None else None
    extra: dict[str, Any] = {}
    if c.prune.procedure == "layer_by_layer":
      stripped, outcomes = self._prune_layer_by_layer(model, len(x))
      history = {}
      extra = {"layer_by_layer": outcomes, "validation_images": len(self.validation[1])}
    elif c.train.prune_epochs == 0:
      self.log(f"[prune] one-shot exact projection to reduction {c.crossbar.reduction}")
      stripped, history = self._one_shot(model), {}
    else:
      stripped, history = self._prune_training(model, len(x))
    self._save(self._recalibrated(stripped), self._path("pruned.keras"))
    result = {"history": history, **extra}
    if self.data is not None:
      result["accuracy"] = self._evaluate(stripped)
    self._finish("prune", result, started)

  def _prune_layer_by_layer(self, model, n_train: int):
    """`prune.procedure = "layer_by_layer"`: `(stripped model, per-layer outcome dicts)`; the
    stop rule's accuracy is measured on `self.validation` (held out of the training images)."""
    from xbar_tfmot.pruning.layer_by_layer import (LayerByLayerError, StopRules, outcome_rows,
                                                   prune_layer_by_layer)
    c, t, p = self.config, self.config.train, self.config.prune
    (x, y), _ = self.data
    xv, yv = self.validation
    rules = StopRules(max_accuracy_drop=p.max_accuracy_drop, max_reduction=p.max_reduction,
                      crossbar_threshold=p.crossbar_threshold, step=p.reduction_step)
    self.log(f"[prune] layer by layer, LGD-{c.crossbar.projection.upper()} "
             f"{c.crossbar.granularity} grain on {self.spec}: reduction steps of "
             f"{p.reduction_step} up to {p.max_reduction}, {p.step_epochs} epochs a step, "
             f"{t.finetune_epochs} fine-tuning epochs a layer; a step may lose "
             f"{p.max_accuracy_drop} accuracy on {len(yv)} held-out training images")

    def train(m, epochs: int, *, callbacks, seed: int, finetune: bool) -> None:
      self._compile(m, t.finetune_learning_rate if finetune else t.learning_rate)
      training.fit_seeded(m, x, y, self.K, epochs, t.batch_size, seed, callbacks)

    folder = self._path("prune")
    progress_file = folder / "layer_by_layer.json"  # the commit point of a layer's checkpoint
    resume = _read_json(progress_file) if progress_file.exists() else None
    if resume is not None:
      saved = folder / str(resume.pop("model", ""))
      if not saved.is_file():
        raise LayerByLayerError(f"{progress_file} names no saved model ({saved.name!r} is "
                                f"missing); delete it to start the layer-by-layer phase over.")
      model = self._load(saved)

    def checkpoint(m, progress: dict[str, Any]) -> None:
      folder.mkdir(exist_ok=True)
      name = f"layer_by_layer_{len(progress['outcomes'])}.keras"
      self._save(m, folder / name)
      _write_json(progress_file, {**progress, "model": name})
      for old in folder.glob("layer_by_layer_*.keras"):
        if old.name != name:
          old.unlink()

    pruned, outcomes = prune_layer_by_layer(
        model, self.spec, granularity=c.crossbar.granularity, rules=rules, train=train,
        validate=lambda m: training.accuracy(m, xv, yv, batch_size=512),
        steps_per_epoch=math.ceil(n_train / t.batch_size), step_epochs=p.step_epochs,
        finetune_epochs=t.finetune_epochs, leave_dense=configuration.leave_dense(c),
        ramp=c.crossbar.ramp, updates_per_epoch=c.crossbar.updates_per_epoch,
        projection=c.crossbar.projection, regrowth=c.crossbar.regrowth,
        temperature=c.crossbar.temperature, seed=c.seed, log=self.log,
        checkpoint=checkpoint, resume=resume)
    return pruned, outcome_rows(outcomes)

  def _one_shot(self, model):
    c = self.config
    one_shot.apply_masks(model, one_shot.one_shot_masks(
        model, self.spec, self._policy(model), c.crossbar.reduction, c.crossbar.granularity))
    return model

  def _prune_training(self, model, n_train: int):
    from xbar_tfmot.pruning.api import prune_crossbar, strip_crossbar_pruning
    from xbar_tfmot.pruning.callbacks import CrossbarPruningSummaries, UpdateCrossbarPruning
    c, t = self.config, self.config.train
    steps_per_epoch = math.ceil(n_train / t.batch_size)
    end_step, frequency = ramp_steps(t.prune_epochs, steps_per_epoch, c.crossbar.ramp,
                                     c.crossbar.updates_per_epoch)
    schedule = CrossbarPolynomialDecay(c.crossbar.reduction, begin_step=0, end_step=end_step,
                                       frequency=frequency)
    epochs = t.prune_epochs + t.finetune_epochs
    self.log(f"[prune] LGD-{c.crossbar.projection.upper()} {c.crossbar.granularity} grain to "
             f"reduction {c.crossbar.reduction} on {self.spec}: budget falls over {end_step} "
             f"steps, masks every {frequency} steps, {t.prune_epochs} pruning + "
             f"{t.finetune_epochs} fine-tuning epochs")
    pruned = prune_crossbar(model, self.spec, granularity=c.crossbar.granularity,
                            schedule=schedule, projection=c.crossbar.projection,
                            regrowth=c.crossbar.regrowth, policy=self._policy(model), seed=c.seed,
                            temperature=c.crossbar.temperature)
    targets = None
    if t.distillation_weight:
      from xbar_tfmot.pruning.distillation import teacher_targets
      teacher = self._load(self._prune_input())  # a copy: the pruned model shares its layers
      probabilities = (training.outputs_probabilities(teacher) if t.outputs == "auto"
                       else t.outputs == "probabilities")
      (x, y), (xt, yt) = self.data
      targets = tuple(teacher_targets(teacher, a, b, from_logits=not probabilities)
                      for a, b in ((x, y), (xt, yt)))
      self.log(f"[prune] distillation from the dense model: weight {t.distillation_weight}, "
               f"temperature {t.distillation_temperature}")
    self._compile(pruned, t.learning_rate, distill=targets is not None)
    saliency = None
    if c.crossbar.mode == "global_score" and c.crossbar.score == "saliency":
      (x, y), _ = self.data
      y = y if targets is None else targets[0]  # what the compiled loss reads
      saliency = [(x[i:i + t.batch_size], y[i:i + t.batch_size])
                  for i in range(0, min(len(x), 4 * t.batch_size), t.batch_size)]
    callbacks = [UpdateCrossbarPruning(allocation_data=saliency), *self._tensorboard("prune")]
    if c.report.tensorboard:
      callbacks.append(CrossbarPruningSummaries(str(self.workdir / "logs" / "prune")))

    def on_epoch(epoch: int) -> None:
      if epoch == t.prune_epochs:
        self.log(f"[finetune] masks frozen; {t.finetune_epochs} epochs at learning rate "
                 f"{t.finetune_learning_rate}")

    pruned, history = self._fit(
        pruned, "prune", epochs,
        lambda e: t.learning_rate if e < t.prune_epochs else t.finetune_learning_rate,
        callbacks, on_epoch, targets)
    history["phase_boundary"] = [t.prune_epochs]
    return strip_crossbar_pruning(pruned), history

  def export(self) -> None:
    if self._done("export"):
      return
    started, c = time.perf_counter(), self.config
    if not c.export.enabled:
      self._skip("export", {"enabled": False}, started, "export.enabled=False")
      return
    from xbar_tfmot.export.exporter import export
    from xbar_tfmot.export.verification import verify
    formats = configuration.export_formats(c)
    self.log(f"[export] {', '.join(formats)} to {self.workdir / 'export'}")
    model, mapping = self._pruned()
    export(model, self.workdir / "export", self.spec, c.crossbar.granularity, formats,
           overwrite=True, custom_objects=self.custom_objects, mapping=mapping)
    result: dict[str, Any] = {"enabled": True, "formats": list(formats)}
    if c.export.verify:
      check = verify(str(self.workdir / "export"), custom_objects=self.custom_objects)
      result.update(verified=check.ok, differences=check.differences)
      self.log(check.format())
      if not check.ok:
        raise RuntimeError(f"[export] xbar-verify failed for {self.workdir / 'export'}:\n"
                           f"{check.format()}")
    self._finish("export", result, started)

  def hardware(self) -> None:
    """Energy, area and accuracy on non-ideal crossbars (`hardware.*`), dense and pruned."""
    if self._done("hardware"):
      return
    started, c = time.perf_counter(), self.config
    if not c.hardware.enabled:
      self._skip("hardware", {"enabled": False}, started, "hardware.enabled=False")
      return
    from xbar_tfmot.models import hardware_sweep
    from xbar_tfmot.models import analog_model
    from xbar_tfmot.models.model_mapping import build_mapping
    hw = configuration.hardware_spec(c)
    (x_train, _), (x, y) = self.data
    x, y = x[:c.hardware.test_images], y[:c.hardware.test_images]
    seeds = range(c.seed, c.seed + c.hardware.instances)
    self.log(f"[hardware] {hw.name}: {c.hardware.instances} chip instances on {len(x)} test "
             f"images")
    result: dict[str, Any] = {"enabled": True, "hardware": hw.to_dict(),
                              "instances": c.hardware.instances, "images": int(len(x))}
    sweep = configuration.hardware_sweep(c)
    if sweep:
      result["sweep_instances"] = c.hardware.sweep_instances
      self.log(f"[hardware] sweep: {sum(len(v) for v in sweep.values())} conditions x "
               f"{c.hardware.sweep_instances} instances per model")
    progress_file = self._path("hardware_sweep.json")  # measured sweep cells, for a resume
    progress = _read_json(progress_file) if progress_file.exists() else {}
    dense = self._load(self._prune_input())
    for label, (model, mapping) in (
        ("dense", (dense, build_mapping(dense, self.spec, c.crossbar.granularity))),
        ("pruned", self._pruned())):
      calibration = x_train[:c.hardware.calibration_images]
      accuracies = analog_model.analog_accuracy(model, mapping, hw, x, y, seeds, calibration)
      result[label] = {**hardware_sweep.cost_summary(model, mapping, hw),
                       "float_accuracy": training.accuracy(model, x, y),
                       "accuracy_mean": float(np.mean(accuracies)),
                       "accuracy_std": float(np.std(accuracies))}
      if sweep:
        cells = progress.setdefault(label, {})

        def save(key: str, accs: list[float], cells=cells) -> None:
          cells[key] = accs
          _write_json(progress_file, progress)

        result[label]["sweep"] = hardware_sweep.sweep(
            model, mapping, hw, x, y, calibration, c.hardware.sweep_instances, seed=c.seed,
            cache=cells, on_result=save, **sweep)
    self._finish("hardware", result, started)
    progress_file.unlink(missing_ok=True)

  def report(self) -> dict[str, Any]:
    started = time.perf_counter()
    dense = self._load(self._prune_input())
    pruned, mapping = self._pruned()
    metrics = run_report.write(self.workdir / "report", self.config, self.spec, dense, pruned,
                               self.state, self.config.report.plots, mapping)
    self._finish("report", {"crossbars": metrics["crossbars"]["pruned"],
                            "reduction": metrics["crossbars"]["reduction"]}, started)
    return metrics

  def run(self) -> dict[str, Any]:
    """Every phase in order, holding the workdir; returns the metrics of `report/metrics.json`
    (under `multi_worker`, `{}` on the workers other than the chief)."""
    self.task = distribution.task_of(self.config.train)
    self.workdir = distribution.own_workdir(self.shared_workdir, self.task)
    with WorkdirLock(self.workdir):
      return self._run()

  def _strategy(self):
    """`train.strategy`: TensorFlow's default strategy, `MirroredStrategy` over `train.devices`,
    or `MultiWorkerMirroredStrategy` over the workers of `TF_CONFIG`, for the phases that build
    and train models (export and report run on one device, on the chief). `train.batch_size`
    is the global batch (split over the replicas); the learning rate is not scaled."""
    return distribution.make_strategy(self.config.train)

  def _run(self) -> dict[str, Any]:
    self.strategy = self._strategy()
    timeout = self.config.train.worker_timeout
    with distribution.collectives(self.task, self.shared_workdir, timeout):
      with self.strategy.scope():
        self.prepare()
        self.log(f"[run] {self.config.name}: workdir {self.workdir}, {self.config.flavour}, "
                 f"{self.spec}" + (f", {self.task.name} of {self.task.workers} workers"
                                   if self.task.workers > 1 else ""))
        self.baseline()
        self.reorder()
        self.prune()
    if not self.task.chief:
      self.log(f"[run] {self.task.name}: training done; the chief exports and reports in "
               f"{self.shared_workdir}")
      distribution.remove_scratch(self.workdir)
      return {}
    self.export()
    self.hardware()
    metrics = self.report()
    self.log(f"[run] report: {self.workdir / 'report' / 'report.md'}")
    return metrics


def run(config, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Checks `config`, then runs (or resumes) the pipeline; returns the metrics."""
  return Pipeline(config, log).run()


def main(argv: list[str] | None = None) -> None:
  """`xbar-prune --config configs/NAME.py [--config.field=value ...] [--tf-log]`."""
  from absl import app, flags, logging
  from ml_collections import config_flags

  if "tf_log" not in flags.FLAGS:
    flags.DEFINE_bool("tf_log", False, "show TensorFlow's C++ log lines (or set XBAR_TF_LOG=1)")

  config_flag = config_flags.DEFINE_config_file(
      "config", None, "a config file from configs/ (its get_config()); override fields with "
      "--config.field=value", lock_config=True)

  def _main(args: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(args) > 1:
      raise app.UsageError(f"unexpected arguments {args[1:]}; use --config.field=value.")
    if config_flag.value is None:
      raise app.UsageError("--config is required, e.g. --config configs/fashion_mnist_vgg8.py.")
    try:
      run(config_flag.value)
    except ConfigError as e:
      print(f"xbar-prune: config error: {e}", file=sys.stderr)
      sys.exit(2)
    except WorkdirBusy as e:
      print(f"xbar-prune: {e}", file=sys.stderr)
      sys.exit(3)
    except training.TrainingDiverged as e:
      print(f"xbar-prune: {e}", file=sys.stderr)
      sys.exit(4)
    except distribution.WorkerLost as e:
      print(f"xbar-prune: {e}", file=sys.stderr)
      sys.exit(5)

  flags.FLAGS.unparse_flags()
  app.run(_main, argv=argv or sys.argv)
