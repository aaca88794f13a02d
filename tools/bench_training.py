"""Training-step overhead of crossbar pruning, side by side in one run.

Times `fit` steps of one CNN (synthetic CIFAR-sized data) unwrapped, wrapped by
`xbar_tfmot.prune_crossbar` (each regrowth mode), and wrapped by TFMOT's
`prune_low_magnitude`, with the same mask-update frequency, on tf_keras; and the same CNN
unwrapped and crossbar-wrapped on Keras 3 (`import keras`), side by side. Rounds are
interleaved and the median round is reported, so drift of the machine hits every variant
alike. "vs unwrapped" compares with the unwrapped model of the same flavour.

  python tools/bench_training.py [--steps 150] [--rounds 3] [--batch 64] [--frequency 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from xbar_tfmot.core.schedules import CrossbarPolynomialDecay  # noqa: E402
from xbar_tfmot.core.spec import CrossbarSpec  # noqa: E402
from xbar_tfmot.pruning.api import prune_crossbar  # noqa: E402
from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning  # noqa: E402


def cnn(keras):
  keras.utils.set_random_seed(0)
  L = keras.layers
  inp = keras.Input((32, 32, 3))
  x = L.Conv2D(32, 3, padding="same", activation="relu")(inp)
  x = L.Conv2D(64, 3, padding="same", activation="relu")(x)
  x = L.MaxPooling2D()(x)
  x = L.Conv2D(128, 3, padding="same", activation="relu")(x)
  x = L.MaxPooling2D()(x)
  x = L.Conv2D(128, 3, padding="same", activation="relu")(x)
  x = L.GlobalAveragePooling2D()(x)
  x = L.Dense(256, activation="relu")(x)
  return keras.Model(inp, L.Dense(10)(x))


def variants(keras, keras3, args):
  """`{name: make}`; `make()` returns `(model, callbacks, keras module)`."""
  import tensorflow_model_optimization as tfmot
  spec = CrossbarSpec(rows=128, cols=32)
  end = args.steps * (args.rounds + 1)

  def crossbar(K, flavour, regrowth, granularity):
    def make():
      model = prune_crossbar(cnn(K), spec=spec, granularity=granularity, regrowth=regrowth,
                             schedule=CrossbarPolynomialDecay(0.7, 0, end, frequency=args.frequency),
                             seed=0)
      return model, [UpdateCrossbarPruning(flavour=flavour)], K
    return make

  def tfmot_wrapped():
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.7, 0, end, frequency=args.frequency)
    model = tfmot.sparsity.keras.prune_low_magnitude(cnn(keras), pruning_schedule=schedule)
    return model, [tfmot.sparsity.keras.UpdatePruningStep()], keras

  return {
      "unwrapped": lambda: (cnn(keras), [], keras),
      "crossbar reset": crossbar(keras, "tf_keras", "reset", "crossbar"),
      "crossbar straight_through": crossbar(keras, "tf_keras", "straight_through", "crossbar"),
      "column reset": crossbar(keras, "tf_keras", "reset", "column"),
      "tfmot prune_low_magnitude": tfmot_wrapped,
      "keras3 unwrapped": lambda: (cnn(keras3), [], keras3),
      "keras3 crossbar reset": crossbar(keras3, "keras3", "reset", "crossbar"),
      "keras3 crossbar straight_through": crossbar(keras3, "keras3", "straight_through",
                                                   "crossbar"),
      "keras3 column reset": crossbar(keras3, "keras3", "reset", "column"),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=150, help="timed steps per round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--frequency", type=int, default=50, help="mask update every N steps")
  args = parser.parse_args()
  import keras as keras3  # Keras 3, whatever TFMOT does to tf.keras
  from tensorflow_model_optimization.python.core.keras.compat import keras

  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.batch * 8, 32, 32, 3)).astype("float32")
  y = rng.integers(0, 10, size=len(x))
  data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch).repeat().prefetch(4)

  models = {}
  for name, make in variants(keras, keras3, args).items():
    model, callbacks, K = make()
    model.compile(K.optimizers.SGD(0.01, momentum=0.9),
                  K.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, steps_per_epoch=args.frequency + 5, epochs=1, verbose=0, callbacks=callbacks)
    models[name] = (model, callbacks)

  times = {name: [] for name in models}
  for _ in range(args.rounds):
    for name, (model, callbacks) in models.items():
      start = time.perf_counter()
      model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=callbacks)
      times[name].append(time.perf_counter() - start)

  print(f"tf {tf.__version__}, keras {keras3.__version__}; {args.steps} steps x {args.rounds} "
        f"rounds, batch {args.batch}, mask update every {args.frequency} steps; median round")
  ref = statistics.median(times["tfmot prune_low_magnitude"])
  print(f"{'variant':33s} {'steps/s':>9s} {'vs unwrapped':>13s} {'vs tfmot':>9s}")
  for name, values in times.items():
    t = statistics.median(values)
    base = statistics.median(times["keras3 unwrapped" if name.startswith("keras3") else "unwrapped"])
    print(f"{name:33s} {args.steps / t:9.1f} {t / base:12.3f}x {t / ref:8.3f}x")


if __name__ == "__main__":
  main()
