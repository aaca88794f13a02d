"""Models with the user's own layers: `custom_objects` in export, verify and loading, the
command lines' `--custom-objects MODULE`, and short errors naming the unknown class."""

import _custom_layers
import numpy as np
import pytest

import xbar_tfmot as xt
from xbar_tfmot.app import cli
from xbar_tfmot.export import model_io
from xbar_tfmot.models.introspection import FLAVOURS, keras_module

SPEC = xt.CrossbarSpec(rows=16, cols=8)
SCALE = {"keras3": _custom_layers.Scale, "tf_keras": _custom_layers.TfScale}


def model_with_custom_layer(flavour):
  k = keras_module(flavour)
  k.utils.set_random_seed(0)
  layer = SCALE[flavour]()
  model = k.Sequential([k.Input((6, 6, 2)), k.layers.Conv2D(4, 3, name="conv"), layer,
                        k.layers.Flatten(), k.layers.Dense(3, name="fc")])
  layer.gamma.assign(np.linspace(0.5, 2.0, 4))
  return model


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_export_refuses_a_model_that_does_not_load_back(tmp_path, flavour):
  name = SCALE[flavour].__name__
  with pytest.raises(xt.ExportError, match=f"uses the class '{name}'; pass custom_objects"):
    xt.export(model_with_custom_layer(flavour), tmp_path / "out", SPEC)
  assert list(tmp_path.iterdir()) == []  # nothing renamed into place, no temporary left


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_custom_objects_carry_through_export_verify_and_the_command_lines(tmp_path, flavour,
                                                                          capsys):
  objects = {SCALE[flavour].__name__: SCALE[flavour]}
  model = model_with_custom_layer(flavour)
  xt.export(model, tmp_path / "out", SPEC, custom_objects=objects)
  result = xt.verify(str(tmp_path / "out"), samples=2, custom_objects=objects)
  assert result.ok, result.format()
  loaded = model_io.load_model(str(tmp_path / "out" / "model.keras"), objects)
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)

  assert cli.verify_main([str(tmp_path / "out"), "--custom-objects", "_custom_layers"]) == 0
  assert cli.report_main([str(tmp_path / "out"), "--custom-objects", "_custom_layers"]) == 0
  capsys.readouterr()
  assert cli.verify_main([str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert f"uses the class '{SCALE[flavour].__name__}'" in err and "--custom-objects" in err
  assert len(err) < 600, err  # a sentence, not a config dump


def test_custom_objects_module_errors():
  assert set(model_io.load_custom_objects("_custom_layers")) == {"Scale", "TfScale"}
  with pytest.raises(ValueError, match="custom objects module 'no_such_module' does not import"):
    model_io.load_custom_objects("no_such_module")
