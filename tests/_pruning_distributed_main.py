"""Run in its own process: crossbar pruning under MirroredStrategy on two logical CPUs.

Logical devices must be configured before TensorFlow initialises, hence the separate process.
Prints one JSON line with what the test checks.
"""

import json
import os
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import numpy as np  # noqa: E402  (after the device set-up)

sys.path.insert(0, os.path.dirname(__file__))
import _pruning_models as pm  # noqa: E402
from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning  # noqa: E402
from xbar_tfmot.pruning.api import prune_crossbar, strip_crossbar_pruning  # noqa: E402
from xbar_tfmot.core.schedules import CrossbarPolynomialDecay  # noqa: E402


def main(regrowth: str, granularity: str) -> dict:
  from xbar_tfmot.pruning import tf_keras as pruning_tf_keras
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  x, y = pm.digits()
  with strategy.scope():
    pruned = prune_crossbar(pm.cnn(), spec=pm.SPEC, granularity=granularity, regrowth=regrowth,
                            schedule=CrossbarPolynomialDecay(0.7, 0, 60, frequency=10), seed=11)
    pm.compile_model(pruned)
  pruned.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0,
             callbacks=[UpdateCrossbarPruning()])
  wrappers = pruning_tf_keras.ADAPTER.crossbar_wrappers(pruned)
  field = "blocks" if granularity == "crossbar" else "packed"
  final = strip_crossbar_pruning(pruned)
  counts = pm.mapped_counts(final)
  out = {"replicas": strategy.num_replicas_in_sync, "layers": {}}
  for w in wrappers:
    masks = [m.numpy() for m in strategy.experimental_local_results(w.mask)]
    kernels = [k.numpy() for k in strategy.experimental_local_results(w.layer.kernel)]
    out["layers"][w.layer.name] = {
        "mask_copies": len(masks),
        "masks_agree": all(np.array_equal(masks[0], m) for m in masks[1:]),
        "kernels_agree": all(np.array_equal(kernels[0], k) for k in kernels[1:]),
        "crossbars": getattr(counts[w.layer.name], field),
        "budget": w.final_budget,
        "pruned_weights_zero": bool(np.all(kernels[0][masks[0] == 0] == 0)),
    }
  out["accuracy"] = pm.accuracy(final, x, y)
  return out


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1], sys.argv[2])))
