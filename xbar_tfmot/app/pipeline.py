"""The `xbar-prune` pipeline: a table of phases run in order over one run folder.

The configuration is parsed once (`configuration.parse`); `Pipeline.prepare` loads the data,
builds the model and checks every budget before any training (`app/preparation.py`), then
claims the run folder; `run()` does (or finishes) each phase of `PHASES`: baseline, reorder,
prune, export, hardware, report (`app/phases.py`, `app/prune_phase.py`). `_do` owns what every
phase shares: done already (in `state.json`) is skipped, switched off is recorded as skipped,
the rest is timed, recorded and logged. Training checkpoints the model (optimizer included)
after every epoch, so rerunning the same command continues an interrupted phase from its last
epoch; each epoch starts from `keras.utils.set_random_seed(f(seed, phase, epoch))` and RPP
draws from stateless seeds of (seed, layer, step), so a resumed run prunes as a straight one.

Run folder: `config.json` (the parsed config's fields; a rerun with different results-relevant
fields is refused), `state.json`, `checkpoints/` (`baseline.keras`, `reordered.keras`,
`pruned.keras`, and `<phase>/model.keras` + `progress.json` during training;
`prune/layer_by_layer_<k>.keras` + `layer_by_layer.json` after the k-th layer of the
layer-by-layer procedure), `export/` (`xt.export`), `report/` (`report.md`, `metrics.json`,
`mapping.json`, PNG plots), `logs/` (TensorBoard, when asked).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Any, Callable

from xbar_tfmot.app import configuration, distribution, phases, preparation, prune_phase, training
from xbar_tfmot.app.configuration import ConfigError, RunConfig
from xbar_tfmot.app.run_context import RunContext
from xbar_tfmot.app.workdir_lock import WorkdirBusy, WorkdirLock


@dataclasses.dataclass(frozen=True)
class Phase:
  """One entry of the pipeline: `run` returns the result `state.json` records.

  Attributes:
    switch: the boolean config field that turns the phase off ("" = always on).
    off: the result recorded when it is off.
    trains: runs on every worker under the training strategy (else on the chief only).
    rerun: runs again on every rerun, even when done.
  """
  name: str
  run: Callable[[RunContext], dict[str, Any]]
  switch: str = ""
  off: dict[str, Any] = dataclasses.field(default_factory=dict)
  trains: bool = False
  rerun: bool = False

  def enabled(self, config: RunConfig) -> bool:
    if not self.switch:
      return True
    section, field = self.switch.split(".")
    return getattr(getattr(config, section), field)


PHASES = (
    Phase("baseline", phases.baseline, trains=True),
    Phase("reorder", phases.reorder, "allocation.reorder", {"applied": False}, trains=True),
    Phase("prune", prune_phase.prune, trains=True),
    Phase("export", phases.export, "export.enabled", {"enabled": False}),
    Phase("hardware", phases.hardware, "hardware.enabled", {"enabled": False}),
    Phase("report", phases.report, rerun=True),
)


def _summary_item(key: str, value: Any) -> str:
  """One `key value` of a phase's done line: durations as `301.8 s`, other floats to 4 places."""
  if key == "seconds":
    return f"{key} {training.format_seconds(value)}"
  return f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"


class Pipeline:
  """One run of a config (parsed here, once); `run()` does (or finishes) every phase."""

  def __init__(self, config, log: Callable[[str], None] = print):
    self.config = configuration.parse(config)
    workdir = pathlib.Path(self.config.workdir or pathlib.Path("runs") / self.config.name)
    self.context = RunContext(self.config, log, workdir)
    self.strategy = None  # the tf.distribute strategy of the training phases (`_run()`)

  def prepare(self) -> None:
    """Loads the data, checks the model, its budgets and its quantisation-aware wrapping, then
    claims the run folder: config errors surface here, before any training."""
    run, config = self.context, self.config
    run.data = preparation.load_data(config)
    run.fresh_model = preparation.initial_model(config, run.data, run.custom_objects)
    preparation.check_budgets(config, run.fresh_model)
    preparation.check_quantize_aware(config, run.fresh_model)
    flat, shared = config.flat(), run.shared_workdir
    config_file = shared / "config.json"
    if config_file.exists():
      changed = configuration.differences(training.read_json(config_file), flat)
      if changed:
        raise ConfigError(
            f"{shared} holds a run with a different config ({', '.join(changed)}); rerun "
            f"with the same config to resume it, or give another config.workdir.")
    if not run.task.chief:  # resume from the chief's files, write to the scratch copy
      distribution.reset_scratch(shared, run.workdir)
    (run.workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
    training.write_json(run.workdir / "config.json", flat)
    state_file = run.workdir / "state.json"
    if state_file.exists():
      run.state = training.read_json(state_file)
    distribution.barrier(self.strategy, run.task)  # every worker starts from the same state

  def do(self, name: str) -> None:
    """Phase `name`, unless `state.json` records it done; off by its switch, it is recorded
    as skipped (`[hardware] skipped (hardware.enabled=False)`)."""
    phase, run = next(p for p in PHASES if p.name == name), self.context
    if run.done(name) and not phase.rerun:
      return
    started = time.perf_counter()
    if not phase.enabled(self.config):
      run.record(name, dict(phase.off), started)
      run.log(f"[{name}] skipped ({phase.switch}=False)")
      return
    result = phase.run(run)
    run.record(name, result, started)
    summary = ", ".join(_summary_item(k, v) for k, v in result.items()
                        if not isinstance(v, (dict, list)))
    run.log(f"[{name}] done: {summary}")

  def run(self) -> dict[str, Any]:
    """Every phase in order, holding the run folder; returns the metrics of
    `report/metrics.json` (under `multi_worker`, `{}` on the workers other than the chief)."""
    run = self.context
    run.task = distribution.task_of(self.config.train)
    run.workdir = distribution.own_workdir(run.shared_workdir, run.task)
    with WorkdirLock(run.workdir):
      return self._run()

  def _strategy(self):
    """`train.strategy`: TensorFlow's default strategy, `MirroredStrategy` over `train.devices`,
    or `MultiWorkerMirroredStrategy` over the workers of `TF_CONFIG`, for the phases that
    train (export, hardware and report run on one device, on the chief). `train.batch_size`
    is the global batch (split over the replicas); the learning rate is not scaled."""
    return distribution.make_strategy(self.config.train)

  def _run(self) -> dict[str, Any]:
    run, config = self.context, self.config
    self.strategy = self._strategy()
    with distribution.collectives(run.task, run.shared_workdir, config.train.worker_timeout):
      with self.strategy.scope():
        self.prepare()
        run.log(f"[run] {config.name}: workdir {run.workdir}, {config.flavour}, {run.spec}"
                + (f", {run.task.name} of {run.task.workers} workers"
                   if run.task.workers > 1 else ""))
        for phase in PHASES:
          if phase.trains:
            self.do(phase.name)
    if not run.task.chief:
      run.log(f"[run] {run.task.name}: training done; the chief exports and reports in "
              f"{run.shared_workdir}")
      distribution.remove_scratch(run.workdir)
      return {}
    for phase in PHASES:
      if not phase.trains:
        self.do(phase.name)
    run.log(f"[run] report: {run.workdir / 'report' / 'report.md'}")
    return run.metrics


def run(config, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Parses `config`, then runs (or resumes) the pipeline; returns the metrics."""
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
    exits = ((ConfigError, 2, "config error: "), (WorkdirBusy, 3, ""),
             (training.TrainingDiverged, 4, ""), (distribution.WorkerLost, 5, ""))
    try:
      run(config_flag.value)
    except tuple(e for e, _, _ in exits) as e:
      code, prefix = next((c, p) for kind, c, p in exits if isinstance(e, kind))
      print(f"xbar-prune: {prefix}{e}", file=sys.stderr)
      sys.exit(code)

  flags.FLAGS.unparse_flags()
  app.run(_main, argv=argv or sys.argv)
