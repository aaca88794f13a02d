"""Per-layer noise sensitivity on the simulated chip (issue 27, item 3: robustness in the
allocation).

A layer's kernel is programmed on a chip instance the way hardware-aware training and the
analog model program it (`hardware_aware.chip_kernel`: scaled to `g_max`, encoded, quantised,
programmed with the spec's variation by `analog.program`, read back, masked), the other layers
left exact. `chip_perturbation` is the `perturb` hook of `sensitivity_curves` (curves whose
every point includes the chip's weight noise); `layer_noise_sensitivity` measures, per layer,
the loss and accuracy on held-out data with only that layer programmed. No second noise model.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from xbar_tfmot.core.errors import PruningConfigError
from xbar_tfmot.core.hardware import HardwareSpec
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.pruning.hardware_aware import HardwareAware, chip_kernel


def chip_seed(seed: int, layer_name: str) -> tf.Tensor:
  """The stateless seed of chip instance `seed`'s programming of one layer."""
  return tf.constant([int(seed), zlib.crc32(layer_name.encode()) & 0x7FFFFFFF], tf.int64)


def chip_perturbation(hardware: HardwareSpec | str, spec: CrossbarSpec | str,
                      seeds: Sequence[int]) -> Callable[[str, np.ndarray, np.ndarray],
                                                        list[np.ndarray]]:
  """`perturb(layer_name, kernel, mask) -> [kernel as programmed on chip s for s in seeds]`.

  The hook of `sensitivity_curves(perturb=...)`. Stuck cells and read noise are left out
  (`HardwareAware`'s defaults): variation and weight quantisation only.
  """
  config = HardwareAware(hardware)
  spec = CrossbarSpec.from_string(spec) if isinstance(spec, str) else spec
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise PruningConfigError("chip_perturbation: seeds is empty; give at least one chip seed.")

  def perturb(name: str, kernel: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    kernel = np.asarray(kernel, np.float32)
    return [np.asarray(chip_kernel(kernel, mask, config, spec, chip_seed(s, name)))
            for s in seeds]

  return perturb


def layer_noise_sensitivity(model: Any, hardware: HardwareSpec | str, spec: CrossbarSpec | str,
                            data: tuple[np.ndarray, np.ndarray], seeds: Sequence[int],
                            layers: Sequence[str] | None = None, loss: Any = None,
                            batch_size: int = 256) -> dict[str, dict[str, list[float]]]:
  """Loss and accuracy on `data` with only one layer programmed on the chip, per layer.

  Weights exactly zero are taken as pruned (not on the chip: they stay zero), so a stripped
  pruned model is measured as its chip holds it.

  Args:
    model: a plain (unwrapped) classifier whose output's argmax is the class, dense or
      stripped after pruning; its kernels are restored.
    hardware: the chip (its `variation` is the level measured).
    spec: the crossbar (cell counts when the chip leaves them to it).
    data: `(x, y)` held out from training (a validation split; never the test set).
    seeds: chip instances.
    layers: names to measure (default: every mapped layer).
    loss: `loss(y, y_pred)`; default the model's compiled loss.

  Returns:
    `{layer: {"loss": [one per seed], "accuracy": [one per seed]}}`, plus `"(none)"`: the
    model with every kernel exact (the same value for each seed).
  """
  loss_fn = introspection.compiled_loss(model, "layer_noise_sensitivity", loss)
  perturb = chip_perturbation(hardware, spec, seeds)
  x, y = data

  def evaluate() -> tuple[float, float]:
    total = correct = 0.0
    for i in range(0, len(x), batch_size):
      out = model(x[i:i + batch_size], training=False)
      total += float(np.mean(np.asarray(loss_fn(y[i:i + batch_size], out)))) * len(out)
      correct += float(np.sum(np.argmax(np.asarray(out), -1) == y[i:i + batch_size]))
    return total / len(x), correct / len(x)

  clean = evaluate()
  result = {"(none)": {"loss": [clean[0]] * len(seeds), "accuracy": [clean[1]] * len(seeds)}}
  for layer in introspection.iter_layers(model):
    if not introspection.is_mapped(layer) or (layers is not None and layer.name not in layers):
      continue
    kernel = introspection.mapped_kernel(layer)
    saved = np.asarray(kernel).copy()
    losses, accuracies = [], []
    try:
      # a weight at exactly zero is pruned: not on the chip, so no noise (a stripped model)
      for variant in perturb(layer.name, saved, (saved != 0).astype(saved.dtype)):
        kernel.assign(variant.reshape(saved.shape).astype(saved.dtype))
        l, a = evaluate()
        losses.append(l)
        accuracies.append(a)
    finally:
      kernel.assign(saved)
    result[layer.name] = {"loss": losses, "accuracy": accuracies}
  return result
