"""Run in its own process: CrossbarPolicy(mode="global_score") under MirroredStrategy on two
logical CPUs (tf_keras). Prints one JSON line with what test_allocation.py checks."""

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

import xbar_tfmot as xt  # noqa: E402


def main(score: str) -> dict:
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  x, y = pm.digits(320)
  with strategy.scope():
    pruned = xt.prune_crossbar(
        pm.cnn(), spec=pm.SPEC, granularity="column", seed=11,
        schedule=xt.CrossbarPolynomialDecay(0.7, 0, 8, frequency=4),
        policy=xt.CrossbarPolicy(mode="global_score", score=score))
    pm.compile_model(pruned)
  pruned.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0,
             callbacks=[xt.UpdateCrossbarPruning(allocation_data=[(x[:64], y[:64])])])
  masks_agree = True
  for w in xt.crossbar_wrappers(pruned):
    masks = [m.numpy() for m in strategy.experimental_local_results(w.mask)]
    masks_agree &= len(masks) == 2 and all(np.array_equal(masks[0], m) for m in masks[1:])
  counts = pm.mapped_counts(xt.strip_crossbar_pruning(pruned))
  return {"replicas": strategy.num_replicas_in_sync, "masks_agree": bool(masks_agree),
          "crossbars": sum(c.packed for c in counts.values()),
          "dense": sum(c.dense for c in counts.values())}


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1])))
