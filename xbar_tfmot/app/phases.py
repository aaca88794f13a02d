"""The phases of `xbar-prune` but pruning (`app/prune_phase.py`): each a function of the
`RunContext` that writes its files under the run folder and returns the result that
`state.json` records (the pipeline times, records and logs it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from xbar_tfmot.app import run_context, run_report, training
from xbar_tfmot.app.run_context import RunContext


def baseline(run: RunContext) -> dict[str, Any]:
  """Trains the dense model `train.baseline_epochs` epochs (checkpoints in
  `checkpoints/baseline/`) and writes `checkpoints/baseline.keras`."""
  c = run.config
  model, history = run.fresh_model, {}
  epochs = c.train.baseline_epochs
  run.log(f"[baseline] {model.name}: {model.count_params():,} parameters, "
          f"{epochs} epochs" + (f" from {c.model.file}" if c.model.file else ""))
  if epochs:
    run.compile(model, c.train.learning_rate)
    model, history = run.fit(model, "baseline", epochs, lambda e: c.train.learning_rate,
                             run.tensorboard("baseline"))
  run.save(run.recalibrated(model), run.path("baseline.keras"))
  result: dict[str, Any] = {"history": history}
  if run.data is not None:
    result["accuracy"] = run.evaluate(model)
  return result


def reorder(run: RunContext) -> dict[str, Any]:
  """Reads `checkpoints/baseline.keras`, searches input-channel orders that keep more weight
  per crossbar at `allocation.reduction`, writes `checkpoints/reordered.keras`."""
  from xbar_tfmot.models.reorder import reorder_model
  c = run.config
  run.log(f"[reorder] searching input-channel orders for {c.chip.granularity} grain at "
          f"reduction {c.allocation.reduction}")
  model = run.load(run.path("baseline.keras"))
  reordered, found = reorder_model(model, run.spec, c.allocation.reduction, c.chip.granularity,
                                   seed=c.seed)
  run.save(reordered, run.path("reordered.keras"))
  result = {"applied": True, "kept_before": found.kept_before, "kept_after": found.kept_after,
            "skipped": found.skipped}
  if run.data is not None:
    result["accuracy"] = run.evaluate(reordered)
  return result


def export(run: RunContext) -> dict[str, Any]:
  """Exports the pruned model (`checkpoints/pruned.keras`) and its mapping to `export/` in
  `export.formats` (`tflite_int8` calibrated on `export.representative_images` training
  images, or converted from the model fine-tuned `export.quantize_aware_epochs` epochs with
  quantisation-aware training; both TFLite files' test accuracy recorded), then checks the
  export with `xbar-verify` when `export.verify` is set."""
  from xbar_tfmot.export.exporter import export as export_model
  from xbar_tfmot.export.verification import verify
  c, folder = run.config, run.workdir / "export"
  run.log(f"[export] {', '.join(c.export.kinds)} to {folder}")
  model, mapping = run.pruned()
  int8 = "tflite_int8" in c.export.kinds
  quantized = _quantize_aware(run, model) if int8 and c.export.quantize_aware_epochs else None
  export_model(model, folder, run.spec, c.chip.granularity, c.export.kinds, overwrite=True,
               custom_objects=run.custom_objects, mapping=mapping,
               representative_data=run.data.train[0][:c.export.representative_images]
               if int8 and quantized is None else None, quantized_model=quantized)
  result: dict[str, Any] = {"enabled": True, "formats": list(c.export.kinds)}
  if int8:  # which path made the int8 file, and what quantisation costs on the test set
    if quantized is None:
      result.update(int8="post_training",
                    representative_images=min(c.export.representative_images,
                                              len(run.data.train[1])))
    else:
      result.update(int8="quantize_aware", quantize_aware_epochs=c.export.quantize_aware_epochs)
    from xbar_tfmot.export.verification import tflite_accuracy
    result["tflite_accuracy"] = {
        name: tflite_accuracy(folder / f"{name}.tflite", *run.data.test)
        for name in ("model", "model_int8") if (folder / f"{name}.tflite").is_file()}
  if c.export.verify:
    check = verify(str(folder), custom_objects=run.custom_objects)
    result.update(verified=check.ok, differences=check.differences)
    run.log(check.format())
    if not check.ok:
      raise RuntimeError(f"[export] xbar-verify failed for {folder}:\n{check.format()}")
  return result


def _quantize_aware(run: RunContext, model):
  """`model` wrapped by `xt.quantize_aware` (TFMOT's int8 scheme that keeps zeros) and
  fine-tuned `export.quantize_aware_epochs` epochs as the prune phase fine-tunes: on the
  training images (the validation images stay held out), `train.batch_size`, `train.optimizer`
  at `train.finetune_learning_rate`, seeded from the run's seed. `model` is left as it was."""
  from xbar_tfmot.export.int8 import quantize_aware
  c, t = run.config, run.config.train
  epochs = c.export.quantize_aware_epochs
  x, y = run.data.train
  run.log(f"[export] quantisation-aware int8: {epochs} epochs on {len(y)} training images at "
          f"learning rate {t.finetune_learning_rate}")
  quantized = quantize_aware(model)
  outputs = t.outputs  # read from the float model: the quantisation wrappers hide a softmax
  if outputs == "auto":
    outputs = "probabilities" if training.outputs_probabilities(model) else "logits"
  training.compile_classifier(quantized, run.keras, t.finetune_learning_rate, t.optimizer,
                              outputs)
  training.fit_seeded(quantized, x, y, run.keras, epochs, t.batch_size,
                      training.epoch_seed(c.seed, run_context.PHASES.index("export"), 0))
  return quantized


def hardware(run: RunContext) -> dict[str, Any]:
  """Energy, area and accuracy of the dense (prune input) and pruned models on
  `hardware.instances` chips of `hardware.preset`, and the `hardware.sweep_*` sweep; measured
  sweep cells are kept in `checkpoints/hardware_sweep.json` until the phase is done, so that a
  rerun continues the sweep."""
  from xbar_tfmot.models import analog_model, hardware_sweep
  c, h = run.config, run.config.hardware
  hw = h.hardware_spec
  x, y = (a[:h.test_images] for a in run.data.test)
  calibration = run.data.train[0][:h.calibration_images]
  seeds = range(c.seed, c.seed + h.instances)
  run.log(f"[hardware] {hw.name}: {h.instances} chip instances on {len(x)} test images")
  result: dict[str, Any] = {"enabled": True, "hardware": hw.to_dict(), "instances": h.instances,
                            "images": int(len(x))}
  if h.sweep:
    result["sweep_instances"] = h.sweep_instances
    run.log(f"[hardware] sweep: {sum(len(v) for v in h.sweep.values())} conditions x "
            f"{h.sweep_instances} instances per model")
  progress_file = run.path("hardware_sweep.json")
  progress = training.read_json(progress_file) if progress_file.exists() else {}
  for label, (model, mapping) in (("dense", run.dense()), ("pruned", run.pruned())):
    accuracies = analog_model.analog_accuracy(model, mapping, hw, x, y, seeds, calibration,
                                              compensation=h.compensation_steps)
    result[label] = {**hardware_sweep.cost_summary(model, mapping, hw),
                     "float_accuracy": training.accuracy(model, x, y),
                     "accuracy_mean": float(np.mean(accuracies)),
                     "accuracy_std": float(np.std(accuracies))}
    if h.sweep:
      cells = progress.setdefault(label, {})

      def save(key: str, accs: list[float], cells=cells) -> None:
        cells[key] = accs
        training.write_json(progress_file, progress)

      result[label]["sweep"] = hardware_sweep.sweep(
          model, mapping, hw, x, y, calibration, h.sweep_instances, seed=c.seed, cache=cells,
          on_result=save, compensation=h.compensation_steps, **h.sweep)
  progress_file.unlink(missing_ok=True)
  return result


def report(run: RunContext) -> dict[str, Any]:
  """Writes `report/` (report.md, metrics.json, mapping.json, plots) from the dense and pruned
  models and `state.json`; runs again on every rerun (it is cheap and reads what is done)."""
  dense, dense_mapping = run.dense()
  pruned, mapping = run.pruned()
  run.metrics = run_report.write(run.workdir / "report", run.config, run.spec, dense, pruned,
                                 run.state, run.config.report.plots, mapping, dense_mapping)
  return {"crossbars": run.metrics["crossbars"]["pruned"],
          "reduction": run.metrics["crossbars"]["reduction"]}
