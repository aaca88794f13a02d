"""Export: SavedModel, TFLite and JSON carry one mapping; atomic writes; xbar-verify.

The round trip runs for both Keras flavours (tf_keras through a `tf.Module`, Keras 3 through
`keras.export.ExportArchive`); the argument and atomicity checks are flavour-neutral.
"""

import json
import re
import shutil

import _models
import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot.app import cli
from xbar_tfmot.core import projection
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.export import exporter as export_lib
from xbar_tfmot.models.introspection import geometry_of

SPEC = CrossbarSpec(rows=36, cols=8)


def pruned_model(flavour="tf_keras"):
  """A CNN whose mapped kernels are projected onto 50% of their crossbars."""
  k = _models.keras_module(flavour)
  model = k.Sequential([
      k.Input((8, 8, 6)),
      k.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
      k.layers.BatchNormalization(name="bn"),
      k.layers.Conv2D(24, 3, strides=2, padding="same", name="conv2"),
      k.layers.Flatten(),
      k.layers.Dense(10, name="fc"),
  ], name="small")
  for name in ("conv1", "conv2", "fc"):
    layer = model.get_layer(name)
    g = geometry_of(layer, SPEC)
    mask = projection.project(g, layer.kernel, projection.crossbar_budget(g.dense_crossbars, 0.5),
                              "column")
    layer.kernel.assign(layer.kernel * mask)
  return model


@pytest.fixture(scope="module", params=_models.FLAVOURS)
def exported(request, tmp_path_factory):
  model = pruned_model(request.param)
  out = tmp_path_factory.mktemp("export") / "small"
  return model, export_lib.export(model, out, SPEC, granularity="column")


def test_all_three_carry_the_same_valid_mapping(exported):
  model, result = exported
  assert set(result.files) == {"mapping.json", "model.keras", "model.tflite", "saved_model",
                               "summary.txt"}
  assert (result.directory / "saved_model" / "assets" / "mapping.json").is_file()
  sources = [result.directory / "mapping.json", result.directory / "saved_model",
             result.directory / "model.tflite", result.directory]
  for source in sources:
    assert export_lib.read_mapping(source).data == result.mapping.data
  totals = result.mapping.totals
  assert totals["crossbars"] == sum(
      geometry_of(model.get_layer(n), SPEC).counts(model.get_layer(n).kernel).packed
      for n in ("conv1", "conv2", "fc"))
  summary = (result.directory / "summary.txt").read_text()
  rows = {line.split()[0]: line.split() for line in summary.splitlines() if line.strip()}
  for name in ("conv1", "conv2", "fc"):  # layer, type, kernel, Kin, Kout, dense, xbar, col+rc
    counts = geometry_of(model.get_layer(name), SPEC).counts(model.get_layer(name).kernel)
    assert rows[name][5:8] == [str(counts.dense), str(counts.blocks), str(counts.packed)], name
  assert rows["total"][1:4:2] == [str(totals["dense"]), str(totals["crossbars"])]  # dense, col+rc
  assert summary.splitlines()[-1] == (
      f"mapping (column grain): {totals['crossbars']} of {totals['dense']} crossbars, reduction "
      f"{totals['reduction']:.1%}, utilization {totals['utilization']:.1%}")


def test_saved_model_serves_the_pruned_model(exported):
  model, result = exported
  loaded = tf.saved_model.load(str(result.directory / "saved_model"))
  x = np.random.default_rng(0).normal(size=(3, 8, 8, 6)).astype(np.float32)
  out = loaded.signatures["serving_default"](input_0=tf.constant(x))["output"].numpy()
  np.testing.assert_allclose(out, model(x, training=False), rtol=1e-5, atol=1e-6)
  text = loaded.signatures["crossbar_mapping"]()["mapping"].numpy().decode()
  assert json.loads(text)["totals"] == result.mapping.totals


def test_tflite_keeps_the_zeros(exported):
  model, result = exported
  interpreter = tf.lite.Interpreter(model_path=str(result.directory / "model.tflite"))
  tensors = []
  for detail in interpreter.get_tensor_details():
    try:
      tensors.append(interpreter.get_tensor(detail["index"]))
    except ValueError:
      continue
  for name in ("conv1", "conv2"):
    kernel = np.asarray(model.get_layer(name).kernel)
    expected = np.transpose(kernel, (3, 0, 1, 2))  # TFLite stores Conv2D kernels [cout, kh, kw, cin]
    assert any(t.shape == expected.shape and np.array_equal(t == 0, expected == 0) for t in tensors), name
    assert (expected == 0).sum() > 0


def test_sparse_tflite_option_verifies(tmp_path):
  model = pruned_model()
  export_lib.export(model, tmp_path / "sparse", SPEC, sparse_tflite=True)
  assert cli.verify_main([str(tmp_path / "sparse"), "--samples", "4"]) == 0


def test_verify_passes_and_report_reads_the_export(exported, capsys):
  _, result = exported
  assert cli.verify_main([str(result.directory), "--samples", "4"]) == 0
  out = capsys.readouterr().out
  for name in ("crossbar-explicit", "saved_model", "tflite"):
    assert f"{name} vs keras" in out
  assert cli.report_main([str(result.directory)]) == 0
  total = result.mapping.totals["crossbars"]
  assert f"{total} of {result.mapping.totals['dense']} crossbars" in capsys.readouterr().out


def test_verify_fails_on_a_weight_in_a_dropped_crossbar(exported, tmp_path, capsys):
  import shutil

  from xbar_tfmot.export.model_io import load_model
  _, result = exported
  copy = tmp_path / "tampered"
  shutil.copytree(result.directory, copy)
  model = load_model(str(copy / "model.keras"))
  kernel = np.asarray(model.get_layer("fc").kernel)
  row, col = np.argwhere(kernel == 0)[0]
  kernel[row, col] = 1.0
  model.get_layer("fc").kernel.assign(kernel)
  model.save(copy / "model.keras")
  assert cli.verify_main([str(copy)]) == 1
  err = capsys.readouterr().err
  assert "layers[2]" in err


def _tampered_copy(result, tmp_path):
  copy = tmp_path / "tampered"
  shutil.copytree(result.directory, copy)
  return copy


def test_verify_reports_a_numeric_mismatch(exported, tmp_path, capsys):
  """A kept weight changed in model.keras: SavedModel and TFLite no longer compute the same."""
  from xbar_tfmot.export.model_io import load_model
  _, result = exported
  copy = _tampered_copy(result, tmp_path)
  model = load_model(str(copy / "model.keras"))
  kernel = np.asarray(model.get_layer("fc").kernel)
  row, col = np.argwhere(kernel != 0)[0]
  kernel[row, col] += 10.0
  model.get_layer("fc").kernel.assign(kernel)
  model.save(copy / "model.keras")
  assert cli.verify_main([str(copy), "--samples", "4"]) == 1
  out = capsys.readouterr().out
  assert re.search(r"crossbar-explicit vs keras: .*  ok$", out, re.M), out
  for name in ("saved_model", "tflite"):
    assert re.search(rf"{name} vs keras: max abs \S+, max rel \S+  MISMATCH$", out, re.M), out


def test_verify_refuses_tampered_tflite_metadata(exported, tmp_path, capsys):
  """The TFLite file carries another (valid) mapping than the export's mapping.json."""
  from xbar_tfmot import _compat
  _, result = exported
  copy = _tampered_copy(result, tmp_path)
  data = json.loads(json.dumps(result.mapping.data))
  data["model"]["name"] = "tampered"
  _, flatbuffer_utils = _compat.tflite_flatbuffer_modules()
  flat = flatbuffer_utils.convert_bytearray_to_object(bytearray((copy / "model.tflite").read_bytes()))
  entries = [e for e in flat.metadata if (e.name.decode() if isinstance(e.name, bytes) else e.name)
             == export_lib.METADATA_NAME]
  assert len(entries) == 1
  flat.buffers[entries[0].buffer].data = np.frombuffer(json.dumps(data).encode(), np.uint8)
  (copy / "model.tflite").write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(flat)))
  assert export_lib.read_mapping(copy / "model.tflite").data["model"]["name"] == "tampered"
  assert cli.verify_main([str(copy), "--samples", "2"]) == 1
  err = capsys.readouterr().err
  assert "xbar-verify: error:" in err
  assert f"the mapping carried by {str(copy / 'model.tflite')!r} differs from the export's" in err


def test_existing_target_is_not_overwritten(exported):
  model, result = exported
  before = (result.directory / "mapping.json").read_text()
  with pytest.raises(FileExistsError, match="overwrite=True"):
    export_lib.export(model, result.directory, SPEC)
  assert (result.directory / "mapping.json").read_text() == before


def test_failed_step_leaves_nothing(tmp_path, monkeypatch):
  seen = []

  def broken(*_):
    seen.append((tmp_path / "out").exists())
    raise RuntimeError("converter exploded")
  monkeypatch.setattr(export_lib, "_convert_tflite", broken)
  with pytest.raises(export_lib.ExportError, match="'tflite' failed.*converter exploded"):
    export_lib.export(pruned_model(), tmp_path / "out", SPEC)
  assert seen == [False]  # the last step runs before the target exists
  assert list(tmp_path.iterdir()) == []


def _files(folder):
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_replaces_the_old_export_only_when_the_new_one_is_complete(tmp_path,
                                                                             monkeypatch):
  model, target = pruned_model(), tmp_path / "out"
  seen = []
  real_summary = export_lib._summary

  def summary(*args):  # the first step: records what the target holds while it runs
    seen.append(_files(target) if target.exists() else None)
    return real_summary(*args)
  monkeypatch.setattr(export_lib, "_summary", summary)
  export_lib.export(model, target, SPEC, formats=("json",))
  assert seen == [None]  # the target does not exist while the export is written
  old = _files(target)
  assert set(old) == {"mapping.json", "model.keras", "summary.txt"}

  def broken(*_):
    seen.append(_files(target))
    raise RuntimeError("converter exploded")
  monkeypatch.setattr(export_lib, "_convert_tflite", broken)
  with pytest.raises(export_lib.ExportError, match="'tflite' failed.*converter exploded"):
    export_lib.export(model, target, SPEC, granularity="crossbar", overwrite=True)
  assert seen[1] == old and seen[2] == old  # the old export is intact while the new is written
  assert _files(target) == old  # and after the failure
  assert [p.name for p in tmp_path.iterdir()] == ["out"]

  export_lib.export(model, target, SPEC, granularity="crossbar", formats=("json",),
                    overwrite=True)
  assert seen[3] == old
  assert export_lib.read_mapping(target).granularity == "crossbar"
  assert set(_files(target)) == set(old)
  assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(formats=("onnx",)), "valid: a non-empty subset"),
    (dict(formats=("tflite", "json")), "add 'saved_model'"),
])
def test_bad_export_arguments(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    export_lib.export(pruned_model(), tmp_path / "out", SPEC, **kwargs)


def test_read_mapping_errors(tmp_path):
  (tmp_path / "bad.json").write_text('{"format": "xbar_tfmot.crossbar_mapping"}')
  with pytest.raises(ValueError, match="<root>: 'version' is a required property"):
    export_lib.read_mapping(tmp_path / "bad.json")
  with pytest.raises(FileNotFoundError, match="not an export folder"):
    export_lib.read_mapping(tmp_path)


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_wrapped_model_is_stripped_on_export(tmp_path, flavour):
  from xbar_tfmot.core.schedules import CrossbarConstant
  from xbar_tfmot.export.model_io import load_model
  from xbar_tfmot.pruning.api import prune_crossbar
  from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning
  k = _models.keras_module(flavour)
  wrapped = prune_crossbar(pruned_model(flavour), spec=SPEC, granularity="crossbar",
                           schedule=CrossbarConstant(0.5, begin_step=0, frequency=1))
  wrapped.compile("adam", k.losses.SparseCategoricalCrossentropy(from_logits=True))
  x = np.random.default_rng(0).normal(size=(32, 8, 8, 6)).astype(np.float32)
  wrapped.fit(x, np.arange(32) % 10, epochs=1, verbose=0,
              callbacks=[UpdateCrossbarPruning(flavour=flavour)])
  result = export_lib.export(wrapped, tmp_path / "wrapped", SPEC, granularity="crossbar")
  stripped = load_model(str(result.directory / "model.keras"))
  assert type(stripped).__module__.split(".")[0] == ("tf_keras" if flavour == "tf_keras" else "keras")
  assert not any("prune" in type(layer).__name__.lower() for layer in stripped.layers)
  assert cli.verify_main([str(result.directory), "--samples", "2"]) == 0
