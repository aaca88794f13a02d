"""xbar-prune re-estimates BatchNorm statistics on training images before it saves and
evaluates a phase (`train.bn_recalibration_images`): the saved moving means are the means of
the BatchNorm inputs over those images, computed here independently."""

import numpy as np
import pytest
from _configs import load_config

from xbar_tfmot.app import datasets, pipeline
from xbar_tfmot.models.introspection import keras_module


def tiny(workdir, flavour, images):
  return load_config(workdir=str(workdir), flavour=flavour, train__verbose=0,
                     train__baseline_epochs=1, schedule__prune_epochs=0, schedule__finetune_epochs=0,
                     train__bn_recalibration_images=images, report__plots=False,
                     export__enabled=False)


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_saved_models_carry_statistics_of_the_training_images(tmp_path, flavour):
  config = tiny(tmp_path, flavour, images=300)
  pipeline.run(config, log=lambda line: None)
  (x, _), _ = datasets.load_dataset("digits", seed=config.seed)
  k = keras_module(flavour)
  for name in ("baseline.keras", "pruned.keras"):
    model = pipeline.Pipeline(config).context.load(tmp_path / "checkpoints" / name)
    bn = next(l for l in model.layers if type(l).__name__ == "BatchNormalization")
    features = k.Model(model.inputs, bn.input).predict(x[:300], verbose=0)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), features.mean(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-5, err_msg=name)
