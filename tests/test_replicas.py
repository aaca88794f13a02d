"""models.replicas and input_pipeline under a strategy: every replica of a two-CPU
`MirroredStrategy` gets an equal, non-empty batch whether or not the data divides (checked on
the batches the strategy hands out, so it fails on any CPU, not only where an empty batch
crashes a kernel), and the strategy's evaluation gives the single device's numbers."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from xbar_tfmot.app.datasets import input_pipeline
from xbar_tfmot.models import replicas
from xbar_tfmot.models.introspection import FLAVOURS

MAIN = pathlib.Path(__file__).with_name("_replicas_main.py")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_replica_gets_an_equal_non_empty_batch_and_the_same_numbers(flavour):
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  run = subprocess.run([sys.executable, str(MAIN), flavour], env=env, timeout=600,
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  assert out["replicas"] == 2
  for n, batches in out["train"].items():  # the last partial batch dropped: n // 8 batches
    assert batches == [[4, 4]] * (int(n) // 8), (n, batches)
  for n, batches in out["eval"].items():  # padded to whole batches
    assert batches == [[4, 4]] * -(-int(n) // 8), (n, batches)
  single, mirrored = out["single"], out["mirrored"]
  np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=1e-6)  # loss and accuracy
  assert out["predict"] < 1e-5
  assert out["accuracy"][0] == out["accuracy"][1]


def test_padding_weights_make_the_weighted_means_plain_means():
  x = np.arange(5, dtype=np.float32)[:, None]
  batches = list(input_pipeline(x, np.arange(5), 4, replicas=2))
  images = np.concatenate([b[0].numpy()[:, 0] for b in batches])
  weights = np.concatenate([b[2].numpy() for b in batches])
  assert [len(b[0]) for b in batches] == [4, 4]
  np.testing.assert_allclose(weights, [8 / 5] * 5 + [0] * 3)
  assert np.sum(weights * images) / len(weights) == pytest.approx(np.mean(x))  # the loss's mean
  assert list(input_pipeline(x, np.arange(5), 4, replicas=1))[-1][0].shape[0] == 1  # unchanged


@pytest.mark.parametrize("batch,n,match", [(5, 10, "batch_size=5 does not split over 2"),
                                           (4, 3, "3 images for a global batch of 4")])
def test_batches_that_cannot_split_are_refused(batch, n, match):
  with pytest.raises(replicas.ReplicaBatchError, match=match):
    input_pipeline(np.zeros((n, 1), np.float32), np.zeros(n), batch, seed=0, replicas=2)


def test_predict_refuses_no_images():
  with pytest.raises(replicas.ReplicaBatchError, match="no images"):
    replicas.predict(object(), np.zeros((0, 2)))


def test_batch_arithmetic():
  assert [replicas.eval_batch(b, 2) for b in (5, 8, 1)] == [6, 8, 2]
  assert replicas.eval_batch(7, 1) == 7
  assert [replicas.padded_length(n, 8, 2) for n in (16, 17, 1)] == [16, 24, 8]  # whole batches
  assert replicas.padded_length(5, 8, 1) == 5  # one replica: the last batch stays partial
  replicas.check_batch(6, 2)
  replicas.check_batch(5, 1)
  with pytest.raises(replicas.ReplicaBatchError, match="batch_size=6 does not split over 4"):
    replicas.check_batch(6, 4)


def test_predict_drops_the_padding_it_added(monkeypatch):
  """Under two replicas 5 images are padded to two batches of 4 (the last image repeated); the
  outputs are the 5 images' own, in order."""
  from xbar_tfmot.models.introspection import keras_module
  keras = keras_module("keras3")
  model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
  model.layers[0].set_weights([np.full((1, 1), 2.0, np.float32)])
  monkeypatch.setattr(replicas, "replicas_of", lambda m=None: 2)
  x = np.arange(5, dtype=np.float32)[:, None]
  np.testing.assert_array_equal(replicas.predict(model, x, batch_size=4), 2 * x)
