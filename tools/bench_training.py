"""Training-step overhead of crossbar pruning, side by side in one run.

Times `fit` steps of one CNN (synthetic CIFAR-sized data) unwrapped, wrapped by
`xbar_tfmot.prune_crossbar` (each regrowth mode), and wrapped by TFMOT's
`prune_low_magnitude`, with the same mask-update frequency, on tf_keras; and the same CNN
unwrapped and crossbar-wrapped on Keras 3 (`import keras`), side by side. Many short rounds
are interleaved and every ratio is taken round by round (median and range over rounds), so
drift of the machine hits every variant alike. "vs unwrapped" compares with the unwrapped
model of the same flavour.

Each round also records the process CPU time (all threads), the CPU the rest of the
machine used meanwhile ("others", in cores) and the hypervisor's steal (cores), so that a
slow round can be told apart: one thread busy (CPU/wall near 1), a loaded machine (others
near 1 or more), or a slower CPU (CPU ms/step up).

  python tools/bench_training.py [--steps 40] [--rounds 12] [--threads 0] [--only NAMES]
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


def machine_jiffies() -> tuple[int, int]:
  """(busy, steal) jiffies of the whole machine so far, from /proc/stat (Linux)."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except OSError:
    return 0, 0
  idle = fields[3] + fields[4]  # idle + iowait
  steal = fields[7] if len(fields) > 7 else 0
  return sum(fields[:8]) - idle - steal, steal


def step_clock(K):
  """A callback recording (wall, CPU) seconds at every batch end: rounds time the steps only,
  not `fit`'s own set-up, which costs a few hundred ms per call."""

  class StepClock(K.callbacks.Callback):

    def __init__(self):
      super().__init__()
      self.marks = []

    def on_train_batch_end(self, batch, logs=None):
      self.marks.append((time.perf_counter(), time.process_time()))

  return StepClock()


def timed_round(model, callbacks, clock, data, steps: int) -> dict:
  """Wall and CPU seconds per step over `steps - 1` steps (first batch end to last), and the
  cores the rest of the machine and the hypervisor took meanwhile."""
  tick = os.sysconf("SC_CLK_TCK")
  clock.marks = []
  busy0, steal0 = machine_jiffies()
  call_wall, call_cpu = time.perf_counter(), time.process_time()
  model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks + [clock])
  call_wall, call_cpu = time.perf_counter() - call_wall, time.process_time() - call_cpu
  busy1, steal1 = machine_jiffies()
  (w0, c0), (w1, c1) = clock.marks[0], clock.marks[-1]
  return {"wall": (w1 - w0) / (steps - 1), "cpu": (c1 - c0) / (steps - 1),
          "others": max(0.0, (busy1 - busy0) / tick - call_cpu) / call_wall,
          "steal": (steal1 - steal0) / tick / call_wall}


def spread(values) -> str:
  return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=40, help="timed steps per round")
  parser.add_argument("--rounds", type=int, default=12)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--frequency", type=int, default=20, help="mask update every N steps")
  parser.add_argument("--threads", type=int, default=0,
                      help="TensorFlow intra- and inter-op threads (0: TensorFlow's choice)")
  parser.add_argument("--only", default="", help="comma-separated variant names (default all)")
  args = parser.parse_args()
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  import keras as keras3  # Keras 3, whatever TFMOT does to tf.keras
  from tensorflow_model_optimization.python.core.keras.compat import keras

  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.batch * 8, 32, 32, 3)).astype("float32")
  y = rng.integers(0, 10, size=len(x))
  data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch).repeat().prefetch(4)

  table = variants(keras, keras3, args)
  wanted = [n for n in args.only.split(",") if n] or list(table)
  for name in wanted:
    if name not in table:
      parser.error(f"--only: {name!r} is unknown; valid: {', '.join(table)}")
  models = {}
  for name in wanted:
    model, callbacks, K = table[name]()
    model.compile(K.optimizers.SGD(0.01, momentum=0.9),
                  K.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, steps_per_epoch=args.frequency + 5, epochs=1, verbose=0, callbacks=callbacks)
    models[name] = (model, callbacks, step_clock(K))

  rounds = {name: [] for name in models}
  for _ in range(args.rounds):
    for name, (model, callbacks, clock) in models.items():
      rounds[name].append(timed_round(model, callbacks, clock, data, args.steps))

  print(f"tf {tf.__version__}, keras {keras3.__version__}; {args.steps} steps x {args.rounds} "
        f"interleaved rounds, batch {args.batch}, mask update every {args.frequency} steps, "
        f"threads {args.threads or 'default'}, {os.cpu_count()} CPUs; median (min..max) over "
        "rounds; ratios are taken round by round against the reference's neighbouring round")
  print(f"{'variant':33s} {'ms/step':>22s} {'vs unwrapped':>22s} {'vs tfmot':>22s} "
        f"{'CPU ms/step':>12s} {'CPU/wall':>9s} {'others':>7s} {'steal':>6s}")

  def ratio(rs, ref):
    if ref not in rounds:
      return "-"
    return spread([r["wall"] / q["wall"] for r, q in zip(rs, rounds[ref])]) + "x"

  for name, rs in rounds.items():
    walls = [1e3 * r["wall"] for r in rs]
    base = "keras3 unwrapped" if name.startswith("keras3") else "unwrapped"
    print(f"{name:33s} {spread(walls):>22s} {ratio(rs, base):>22s} "
          f"{ratio(rs, 'tfmot prune_low_magnitude'):>22s} "
          f"{statistics.median(1e3 * r['cpu'] for r in rs):12.1f} "
          f"{statistics.median(r['cpu'] / r['wall'] for r in rs):9.2f} "
          f"{statistics.median(r['others'] for r in rs):7.2f} "
          f"{statistics.median(r['steal'] for r in rs):6.2f}")
  busy = [r for rs in rounds.values() for r in rs if r["others"] > 0.25]
  if busy:
    print(f"WARNING: in {len(busy)} of {sum(map(len, rounds.values()))} rounds the rest of the "
          f"machine used more than a quarter of a core (up to {max(r['others'] for r in busy):.2f}"
          f" cores): their times measure the contention, not the code.")
  print("rounds, wall ms/step in order (a two-level pattern shows as two clusters):")
  for name, rs in rounds.items():
    print(f"  {name:31s} " + " ".join(f"{1e3 * r['wall']:.0f}" for r in rs))


if __name__ == "__main__":
  main()
