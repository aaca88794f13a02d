"""`RunContext`: what every phase of a run reads and shares, and the run folder's helpers.

A phase (`app/phases.py`) is a function of a `RunContext`: the parsed configuration, the data
(`RunData`), the run folder and its `state.json`, and the helpers that load, save, compile, fit
and evaluate models the same way in every phase.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

from xbar_tfmot.app import distribution, training
from xbar_tfmot.app.configuration import ConfigError, RunConfig
from xbar_tfmot.export import model_io
from xbar_tfmot.models import introspection

# The phases in order; a phase's index seeds its epochs (`training.epoch_seed`).
PHASES = ("baseline", "reorder", "prune", "export", "hardware", "report")


@dataclasses.dataclass(frozen=True)
class RunData:
  """The run's images and labels: `train`, `validation` (held out of the training images for
  the methods' own choices, or None) and `test` (only reported), each `(x, y)`."""
  train: tuple[np.ndarray, np.ndarray]
  validation: tuple[np.ndarray, np.ndarray] | None
  test: tuple[np.ndarray, np.ndarray]


def _isatty(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no such method, or a closed stream
    return False


class RunContext:
  """One run's shared state; the phases read it and record their results in `state`."""

  def __init__(self, config: RunConfig, log: Callable[[str], None], workdir: pathlib.Path):
    self.config = config
    self.log = log
    self.workdir = workdir  # this process's own (a worker's scratch copy under multi_worker)
    self.shared_workdir = workdir  # the chief's
    self.task = distribution.LOCAL
    self.keras = introspection.keras_module(config.flavour)
    self.state: dict[str, Any] = {"phases": {}}
    self.data: RunData | None = None
    self.fresh_model = None  # the untrained (or loaded) model of `prepare`
    self.metrics: dict[str, Any] = {}  # the report phase's
    self._pruned = self._dense = None
    try:
      self.custom_objects = model_io.load_custom_objects(config.model.custom_objects)
    except ValueError as e:
      raise ConfigError(f"config.model.custom_objects={config.model.custom_objects!r}: "
                        f"{e}") from None

  @property
  def spec(self):
    return self.config.chip.crossbar

  def path(self, name: str) -> pathlib.Path:
    """`checkpoints/<name>` of this process's run folder."""
    return self.workdir / "checkpoints" / name

  def done(self, phase: str) -> dict[str, Any] | None:
    return self.state["phases"].get(phase)

  def record(self, phase: str, result: dict[str, Any], started: float) -> None:
    """Writes `result` (with its seconds) to `state.json`: the phase is done."""
    result["seconds"] = round(time.perf_counter() - started, 1)
    self.state["phases"][phase] = result
    training.write_json(self.workdir / "state.json", self.state)

  def load(self, path: pathlib.Path):
    return model_io.load_with(self.config.flavour, str(path), self.custom_objects, compile=True)

  def save(self, model, path: pathlib.Path) -> None:
    training.save_model(model, path)

  def prune_input(self) -> pathlib.Path:
    """The model the prune phase starts from: the reordered one, or the baseline."""
    if self.done("reorder").get("applied"):
      return self.path("reordered.keras")
    return self.path("baseline.keras")

  def dense(self):
    """`(dense model, its mapping)`: the prune input, loaded and mapped once per process, for
    the comparisons of the hardware phase and the report."""
    if self._dense is None:
      from xbar_tfmot.models.model_mapping import build_mapping
      model = self.load(self.prune_input())
      self._dense = model, build_mapping(model, self.spec, self.config.chip.granularity)
    return self._dense

  def pruned(self):
    """`(pruned model, its mapping)`: loaded and built once per process, validated once (as
    it is built), and handed to export, hardware and report alike."""
    if self._pruned is None:
      from xbar_tfmot.models.model_mapping import build_mapping
      model = self.load(self.path("pruned.keras"))
      self._pruned = model, build_mapping(model, self.spec, self.config.chip.granularity)
    return self._pruned

  def recalibrated(self, model):
    """`model` with its BatchNorm statistics re-estimated on `train.bn_recalibration_images`
    training images (never test images), when that is set."""
    images = self.config.train.bn_recalibration_images
    if images and self.data is not None:
      from xbar_tfmot.models.batchnorm import recalibrate_batchnorm
      recalibrate_batchnorm(model, self.data.train[0][:images], batch_size=500)
    return model

  def compile(self, model, learning_rate: float, distill: bool = False) -> None:
    t = self.config.train
    distillation = (t.distillation_temperature, t.distillation_weight) if distill else None
    training.compile_classifier(model, self.keras, learning_rate, t.optimizer, t.outputs,
                                distillation)

  def evaluate(self, model) -> float:
    """Test accuracy (reported only; no method reads it)."""
    x, y = self.data.test
    return training.accuracy(model, x, y, batch_size=512)

  def fit(self, model, phase: str, epochs: int, learning_rate: Callable[[int], float],
          callbacks: list, on_epoch: Callable[[int], None] = lambda e: None,
          targets: tuple | None = None):
    """Trains `epochs` epochs with a checkpoint after each in `checkpoints/<phase>/`;
    continues from the last one. `targets`: `(train, test)` labels to fit on instead of the
    data's (distillation)."""
    (x, y), (xt, yt) = self.data.train, self.data.test
    if targets is not None:
      y, yt = targets

    def resumed(start: int) -> None:
      self.log(f"[{phase}] resuming after epoch {start} of {epochs} from {self.path(phase)}")

    return training.fit_epochs(
        model, x, y, self.keras, epochs=epochs, batch_size=self.config.train.batch_size,
        seed=self.config.seed, phase=PHASES.index(phase),
        run_folder=training.RunFolder(self.path(phase), self.load),
        learning_rate=learning_rate, callbacks=callbacks, validation_data=(xt, yt),
        verbose=self.keras_verbose(), on_epoch=on_epoch, on_resume=resumed)

  def keras_verbose(self) -> int:
    """`train.verbose` for Keras' `fit`, except that a progress bar (1) becomes one line per
    epoch (2) when standard output is not a terminal: a log file or CI would otherwise get a
    `\\r` update for every batch."""
    verbose = self.config.train.verbose
    if verbose == 1 and not _isatty(sys.stdout):
      return 2
    return verbose

  def tensorboard(self, phase: str) -> list:
    if not self.config.report.tensorboard:
      return []
    return [self.keras.callbacks.TensorBoard(str(self.workdir / "logs" / phase))]
