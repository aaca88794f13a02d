"""tools/bench_training.py's round timing: steps are timed from the first batch end to the last
of the round's own `fit` (not `fit`'s set-up, not an earlier round), and the machine's share
used by others is never negative."""

import numpy as np
import pytest
from _tools import load_tool


@pytest.fixture(scope="module")
def tool():
  return load_tool("bench_training")


def test_a_round_is_timed_from_its_own_batch_ends(tool):
  import keras
  import tensorflow as tf
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
  model.compile("sgd", "mse")
  x = np.ones((64, 8), np.float32)
  data = tf.data.Dataset.from_tensor_slices((x, np.zeros((64, 4), np.float32))).batch(8).repeat()
  clock = tool.step_clock(keras)
  first = tool.timed_round(model, [], clock, data, 5)
  marks = list(clock.marks)
  second = tool.timed_round(model, [], clock, data, 3)
  assert len(marks) == 5 and len(clock.marks) == 3  # each round's own batches only
  assert clock.marks[0][0] > marks[-1][0]
  (w0, _), (w1, _) = clock.marks[0], clock.marks[-1]
  assert second["wall"] == pytest.approx((w1 - w0) / 2)
  for r in (first, second):
    assert r["wall"] > 0 and r["cpu"] >= 0 and r["others"] >= 0 and r["steal"] >= 0
  busy, steal = tool.machine_jiffies()
  assert busy > 0 and steal >= 0


def test_spread_is_median_min_max(tool):
  assert tool.spread([3.0, 1.0, 2.0]) == "2.000 (1.000..3.000)"
