"""A NaN loss stops training with a message; the last checkpoint stays as it was."""

import json

import numpy as np
import pytest

from xbar_tfmot.app import training
from xbar_tfmot.models.introspection import FLAVOURS, keras_module


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_nan_loss_stops_and_keeps_the_checkpoint(tmp_path, flavour):
  k = keras_module(flavour)
  k.utils.set_random_seed(0)
  model = k.Sequential([k.Input((4,)), k.layers.Dense(3)])
  training.compile_classifier(model, k, 1e-2)
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(64, 4)).astype(np.float32), rng.integers(0, 3, 64)
  folder = training.RunFolder(tmp_path / "prune", lambda p: k.models.load_model(p))
  fit = dict(keras=k, batch_size=16, seed=0, phase=1, run_folder=folder,
             learning_rate=lambda e: 1e-2)
  model, _ = training.fit_epochs(model, x, y, epochs=2, **fit)
  saved = [w.copy() for w in k.models.load_model(folder.model_file).get_weights()]

  bad = x.copy()
  bad[5, 0] = np.nan
  with pytest.raises(training.TrainingDiverged,
                     match="NaN or infinite in epoch 3 .*checkpoint after epoch 2 .*kept"):
    training.fit_epochs(model, bad, y, epochs=3, **fit)
  assert json.loads(folder.progress_file.read_text())["epoch"] == 2
  for before, after in zip(saved, k.models.load_model(folder.model_file).get_weights()):
    np.testing.assert_array_equal(before, after)
    assert np.all(np.isfinite(after))
