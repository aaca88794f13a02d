"""Run in its own process (logical devices must be set before TensorFlow initialises): what
every replica of a two-CPU `MirroredStrategy` receives from `input_pipeline` and
`models.replicas.predict`, and the strategy's evaluation against one device's.

argv: flavour. Prints one JSON line.
"""

import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

from xbar_tfmot.app import training  # noqa: E402  (after the device set-up)
from xbar_tfmot.app.datasets import input_pipeline  # noqa: E402
from xbar_tfmot.models import introspection, replicas  # noqa: E402

BATCH = 8


def sizes(strategy, dataset):
  """Per batch, the batch size each replica received."""
  out = []
  for batch in strategy.experimental_distribute_dataset(dataset):
    out.append([int(t.shape[0]) for t in strategy.experimental_local_results(batch[0])])
  return out


def build(K, seed):
  K.utils.set_random_seed(seed)
  return K.Sequential([K.Input((6, 6, 1)), K.layers.Conv2D(4, 3), K.layers.BatchNormalization(),
                       K.layers.ReLU(), K.layers.Flatten(), K.layers.Dense(3)])


def main(flavour: str) -> None:
  K = introspection.keras_module(flavour)
  rng = np.random.default_rng(0)
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  out = {"replicas": strategy.num_replicas_in_sync, "train": {}, "eval": {}}
  for n in (17, 16, 9, 1):
    x = rng.random((n, 6, 6, 1), np.float32)
    y = rng.integers(0, 3, n)
    if n >= BATCH:
      out["train"][n] = sizes(strategy, input_pipeline(x, y, BATCH, seed=0, replicas=2))
    out["eval"][n] = sizes(strategy, input_pipeline(x, y, BATCH, replicas=2))
  x = rng.random((21, 6, 6, 1), np.float32)
  y = rng.integers(0, 3, 21)
  single = build(K, 1)
  training.compile_classifier(single, K, 1e-3)
  with strategy.scope():
    mirrored = build(K, 1)
    training.compile_classifier(mirrored, K, 1e-3)
  mirrored.set_weights(single.get_weights())
  out["single"] = [float(v) for v in single.evaluate(x, y, batch_size=BATCH, verbose=0)]
  out["mirrored"] = [float(v) for v in mirrored.evaluate(
      input_pipeline(x, y, BATCH, replicas=2), verbose=0)]
  out["predict"] = float(np.abs(replicas.predict(mirrored, x, 5)
                                - single.predict(x, verbose=0)).max())
  out["accuracy"] = [training.accuracy(single, x, y, 5), training.accuracy(mirrored, x, y, 5)]
  mirrored.fit(input_pipeline(x, y, BATCH, seed=0, replicas=2), epochs=1, verbose=0)
  print(json.dumps(out))


if __name__ == "__main__":
  main(*sys.argv[1:])
