"""Training shared by the `xbar-prune` pipeline and `tools/bench_quality.py`.

One place for what both do around `model.fit`: compiling a classifier, training one epoch at a
time with a checkpoint after each and resuming from the last one (the pipeline), training in
one seeded call (the benchmark, whose resume unit is a finished cell), re-estimating
BatchNorm statistics, measuring test accuracy, and atomic writes of JSON files and models into a
run folder. The one-shot projection of trained kernels is a library procedure
(`xbar_tfmot.pruning.one_shot`, `xt.one_shot_masks` / `xt.apply_masks`).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from xbar_tfmot import _compat
from xbar_tfmot.core import strict_json
from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.models import replicas

# --- run folder ------------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
  """`json.dumps(default=...)` for numpy scalars and arrays and tuples."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (tuple, np.ndarray)):
    return list(value) if isinstance(value, tuple) else value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: pathlib.Path, data: Any, sort_keys: bool = True, indent: int = 1) -> None:
  """Writes `data` to `path` atomically (a killed process leaves the old file or the new)."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(data, indent=indent, sort_keys=sort_keys, default=jsonable) + "\n",
                 encoding="utf-8")
  os.replace(tmp, path)


def read_json(path: pathlib.Path) -> Any:
  """A JSON file the pipeline wrote (state, config, progress); a key written twice by hand is
  an error naming the key and the file, not a silent last-wins."""
  return strict_json.loads(path.read_text(encoding="utf-8"), source=str(path))


def save_model(model, path: pathlib.Path) -> None:
  """`model.save(path)` atomically."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".tmp.{path.name}")
  model.save(tmp)
  os.replace(tmp, path)


def format_seconds(seconds: float) -> str:
  """`301.8 s`: how durations are printed."""
  return f"{seconds:.1f} s"


# --- compiling and training ------------------------------------------------------------------

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
OUTPUTS = ("auto", "logits", "probabilities")


def outputs_probabilities(model) -> bool:
  """True when the model's last layer ends in a softmax (a `Softmax` layer, or an activation
  named softmax), as Keras Applications and most trained classifiers do; else logits."""
  layer = model.layers[-1]
  while hasattr(layer, "layers") and layer.layers:  # a nested model's own last layer
    layer = layer.layers[-1]
  if type(layer).__name__ == "Softmax":
    return True
  activation = getattr(layer, "activation", None)
  return getattr(activation, "__name__", str(activation)) == "softmax"


def compile_classifier(model, keras, learning_rate, optimizer: str = "adam",
                       outputs: str = "auto", distillation: tuple[float, float] | None = None
                       ) -> None:
  """`optimizer` (a float learning rate or a schedule) on sparse cross-entropy, with accuracy.

  The loss follows the model: from probabilities when it ends in a softmax, else from logits
  (`outputs="auto"`); `outputs="logits"` or `"probabilities"` overrides the detection.
  `distillation=(temperature, weight)` trains against packed teacher targets instead
  (`xbar_tfmot.DistillationLoss`; fit on `teacher_targets(...)`).
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer={optimizer!r} is unknown; valid: {', '.join(OPTIMIZERS)}.")
  if outputs not in OUTPUTS:
    raise ValueError(f"outputs={outputs!r} is unknown; valid: {', '.join(OUTPUTS)}.")
  probabilities = outputs_probabilities(model) if outputs == "auto" else outputs == "probabilities"
  make = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
          "sgd": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
          "rmsprop": keras.optimizers.RMSprop}[optimizer]
  if distillation:
    from xbar_tfmot.pruning.distillation import DistillationLoss, distillation_accuracy
    loss = DistillationLoss(*distillation, from_logits=not probabilities)
    metrics = [distillation_accuracy]
  else:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    metrics = ["accuracy"]
  # Weighted, so that the padding `input_pipeline` adds under a strategy (weight 0) is not
  # counted; without sample weights they are the plain metrics, under the same names.
  model.compile(optimizer=make(learning_rate), loss=loss, weighted_metrics=metrics)


def epoch_seed(seed: int, phase: int, epoch: int) -> int:
  """The seed every epoch of a checkpointed run starts from (a resumed epoch replays it)."""
  return (seed * 7919 + phase * 1009 + epoch) % 2**31


INPUTS = ("tf_data", "numpy")


def _check_input(input: str) -> None:
  if input not in INPUTS:
    raise ValueError(f"input={input!r} is unknown; valid: {', '.join(INPUTS)}.")


def fit_seeded(model, x, y, keras, epochs: int, batch_size: int, seed: int,
               callbacks: Iterable = (), input: str = "tf_data") -> None:
  """All `epochs` in one `fit` call after `keras.utils.set_random_seed(seed)`, silent; the
  layers' random streams (dropout) restart from `seed` too, so a reloaded model trains alike.

  `input="tf_data"` reads `datasets.input_pipeline` (a new seeded order every epoch);
  `"numpy"` hands the arrays to Keras (its own shuffle), as before the tf.data pipeline.
  """
  _check_input(input)
  keras.utils.set_random_seed(seed)
  if epochs <= 0:
    return
  _compat.restart_random_layers(model, seed)
  if input == "numpy":
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=list(callbacks))
    return
  from xbar_tfmot.app.datasets import input_pipeline
  model.fit(input_pipeline(x, y, batch_size, seed, reshuffle_each_iteration=True,
                           replicas=replicas.replicas_of(model)),
            epochs=epochs, verbose=0, callbacks=list(callbacks))


class RunFolder:
  """A training folder: `model.keras` and `progress.json` (`{epoch, history}`) after each epoch.

  `load(path)` reads a model saved here (the pipeline loads inside its pruning scope).
  """

  def __init__(self, folder: pathlib.Path, load: Callable[[pathlib.Path], Any]):
    self.folder = pathlib.Path(folder)
    self.load = load
    self.progress_file = self.folder / "progress.json"
    self.model_file = self.folder / "model.keras"

  def resume(self):
    """`(epochs done, history, model)`; `(0, {}, None)` when nothing was checkpointed."""
    if not self.progress_file.exists():
      return 0, {}, None
    progress = read_json(self.progress_file)
    return progress["epoch"], progress["history"], self.load(self.model_file)

  def checkpoint(self, model, epochs_done: int, history: dict[str, list[float]]) -> None:
    self.folder.mkdir(parents=True, exist_ok=True)
    save_model(model, self.model_file)
    write_json(self.progress_file, {"epoch": epochs_done, "history": history})


class TrainingDiverged(XbarError, RuntimeError):
  """The loss became NaN or infinite; the last checkpoint is left as it was."""


def _divergence_watch(keras):
  class _StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` at the first batch whose loss is NaN or infinite, remembering it."""

    def __init__(self):
      super().__init__()
      self.bad_batch = None

    def on_train_batch_end(self, batch, logs=None):
      loss = (logs or {}).get("loss")
      if loss is not None and not np.isfinite(float(loss)):
        self.bad_batch = batch
        self.model.stop_training = True

  return _StopOnNonFiniteLoss()


def _one_epoch_callback(keras):
  class _StopAfterOneEpoch(keras.callbacks.Callback):
    """Lets `fit(epochs=total, initial_epoch=e)` run epoch `e` only, so Keras prints
    `Epoch e+1/total`."""

    def on_epoch_end(self, epoch, logs=None):
      self.model.stop_training = True

  return _StopAfterOneEpoch()


def fit_epochs(model, x, y, keras, *, epochs: int, batch_size: int, seed: int, phase: int,
               run_folder: RunFolder, learning_rate: Callable[[int], float],
               callbacks: Sequence = (), validation_data=None, verbose: int = 0,
               on_epoch: Callable[[int], None] = lambda e: None,
               on_resume: Callable[[int], None] = lambda e: None, input: str = "tf_data"):
  """Trains `epochs` epochs one at a time with a checkpoint after each; continues after the
  last checkpoint of `run_folder`. Epoch `e` starts from `epoch_seed(seed, phase, e)` at
  learning rate `learning_rate(e)`, reading `datasets.input_pipeline` shuffled with that seed
  (`input="numpy"`: the arrays, shuffled by Keras). Returns `(model, history)`, one value per
  epoch."""
  _check_input(input)
  from xbar_tfmot.app.datasets import input_pipeline
  start, history, resumed = run_folder.resume()
  if resumed is not None:
    model = resumed
    on_resume(start)
  count = replicas.replicas_of(model)
  if validation_data is not None and input == "tf_data":
    validation_data = input_pipeline(*validation_data, batch_size, replicas=count)
  for epoch in range(start, epochs):
    on_epoch(epoch)
    keras.utils.set_random_seed(epoch_seed(seed, phase, epoch))
    _compat.restart_random_layers(model, epoch_seed(seed, phase, epoch))
    model.optimizer.learning_rate.assign(learning_rate(epoch))
    watch = _divergence_watch(keras)
    data = ({"x": x, "y": y, "batch_size": batch_size, "shuffle": True} if input == "numpy" else
            {"x": input_pipeline(x, y, batch_size, epoch_seed(seed, phase, epoch),
                                 replicas=count)})
    h = model.fit(**data, epochs=epochs, initial_epoch=epoch, validation_data=validation_data,
                  callbacks=[*callbacks, watch, _one_epoch_callback(keras)], verbose=verbose)
    if watch.bad_batch is not None:
      kept = (f"the checkpoint after epoch {epoch} in {run_folder.folder} is kept as it was"
              if epoch else f"{run_folder.folder} holds no checkpoint of this phase yet")
      raise TrainingDiverged(
          f"{run_folder.folder.name}: the loss became NaN or infinite in epoch {epoch + 1} "
          f"(batch {watch.bad_batch + 1}); training stopped and {kept}. Lower the learning "
          f"rate (or check the data for NaN) and rerun the same command to resume.")
    for key, values in h.history.items():
      history.setdefault(key, []).append(float(values[-1]))
    run_folder.checkpoint(model, epoch + 1, history)
  return model, history


# --- evaluation ------------------------------------------------------------------------------

def accuracy(model, x, y, batch_size: int = 1000) -> float:
  """Top-1 accuracy of a logits (or probabilities) classifier on `(x, y)`; under a strategy
  every replica gets a full batch (`models.replicas.predict`)."""
  logits = replicas.predict(model, x, batch_size)
  return float(np.mean(np.argmax(logits, axis=1) == np.asarray(y)))
