"""The int8 export: post-training (both flavours) and quantisation-aware (tf_keras) int8 TFLite
files that keep every pruned zero, checked crossbar by crossbar by `xbar-verify`; their
accuracy beside the float file's (`tflite_accuracy`); the arguments the format needs."""

import re
import shutil

import _models
import numpy as np
import pytest

from xbar_tfmot import _compat
from xbar_tfmot.app import cli
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.export import exporter, int8, verification
from xbar_tfmot.export.model_io import load_model
from xbar_tfmot.models.introspection import keras_module

SPEC = CrossbarSpec(rows=36, cols=8)
FORMATS = ("saved_model", "tflite", "json", "tflite_int8")


def tiny(flavour, granularity="column"):
  """Conv-BN-ReLU, a strided Conv, Flatten, Dense (a graph TFMOT's QAT takes), every mapped
  kernel projected onto half of its crossbars."""
  k = keras_module(flavour)
  k.utils.set_random_seed(0)
  L = k.layers
  model = k.Sequential([
      k.Input((8, 8, 3)),
      L.Conv2D(16, 3, padding="same", name="conv1"),
      L.BatchNormalization(name="bn1"),
      L.ReLU(name="relu1"),
      L.Conv2D(24, 3, strides=2, padding="same", activation="relu", name="conv2"),
      L.Flatten(name="flat"),
      L.Dense(10, name="fc"),
  ], name="tiny")
  return _models.prune(model, SPEC, 0.5, granularity)


def images(n, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, 8, 8, 3)).astype(np.float32)


@pytest.fixture(scope="module", params=_models.FLAVOURS)
def exported(request, tmp_path_factory):
  model = tiny(request.param)
  out = tmp_path_factory.mktemp("int8") / "tiny"
  return model, exporter.export(model, out, SPEC, formats=FORMATS,
                                representative_data=images(32))


def _stored(path, tensor):
  """(flatbuffer object, buffer, int8 values as stored) of the named tensor of a TFLite file."""
  _, flatbuffer_utils = _compat.tflite_flatbuffer_modules()
  flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(path.read_bytes()))
  for graph in flat.subgraphs:
    for t in graph.tensors:
      if (t.name.decode() if isinstance(t.name, bytes) else t.name) == tensor:
        buffer = flat.buffers[t.buffer]
        values = np.frombuffer(bytes(np.asarray(buffer.data, np.uint8)), np.int8)
        return flat, buffer, values.reshape(t.shape).copy()
  raise AssertionError(f"no tensor {tensor!r}")


def _fill_one_zero(path, layer, kernel, where):
  """A planted re-quantisation: one stored int8 weight of `layer` that is 0 becomes 3;
  `where(kernel)` picks the Keras-layout index among the zeros. Returns that index."""
  _, flatbuffer_utils = _compat.tflite_flatbuffer_modules()
  matched, _ = int8.match_layers(path.read_bytes(), {layer: kernel})
  flat, buffer, values = _stored(path, matched[layer].tensor)
  index = tuple(int(i) for i in where(kernel))
  stored = np.moveaxis(values, 0, -1).reshape(kernel.shape)  # output channel first in TFLite
  assert stored[index] == 0
  stored[index] = 3
  buffer.data = np.frombuffer(np.moveaxis(stored.reshape(np.moveaxis(values, 0, -1).shape), -1, 0)
                              .tobytes(), np.uint8)
  path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(flat)))
  return index


def test_post_training_int8_keeps_every_zero_and_verifies(exported, capsys):
  """Checked on the file itself, not assumed: each mapped layer's weights are stored as int8
  with zero point 0, and every weight 0 in the Keras model is 0 there."""
  model, result = exported
  path = result.directory / int8.FILE
  assert int8.FILE in result.files
  assert exporter.read_mapping(path).data == result.mapping.data
  kernels = {n: np.asarray(model.get_layer(n).kernel) for n in ("conv1", "conv2", "fc")}
  matched, missing = int8.match_layers(path.read_bytes(), kernels)
  assert missing == {} and len({w.tensor for w in matched.values()}) == 3
  for name, weights in matched.items():
    assert weights.values.dtype == np.int8 and not weights.zero_point.any(), name
    zeros = kernels[name] == 0
    assert zeros.sum() > 0 and not weights.values[zeros].any(), name
    assert weights.values[~zeros].any()
  schema, flatbuffer_utils = _compat.tflite_flatbuffer_modules()
  flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(path.read_bytes()))
  ops = {int8._op_name(schema, max(c.builtinCode, c.deprecatedBuiltinCode))
         for c in flat.operatorCodes}
  assert {"QUANTIZE", "DEQUANTIZE"} <= ops  # int8 activations inside, float at the edges
  assert cli.verify_main([str(result.directory), "--samples", "2"]) == 0
  out = capsys.readouterr().out
  assert "tflite_int8 vs keras" in out and "(quantised, not judged)" in out
  assert "tflite_int8 zeros: 3 mapped layers" in out and out.rstrip().endswith("ok")


def test_a_planted_requantisation_that_fills_one_zero_fails_verify(exported, tmp_path, capsys):
  model, result = exported
  copy = tmp_path / "planted"
  shutil.copytree(result.directory, copy)
  kernel = np.asarray(model.get_layer("conv2").kernel)
  index = _fill_one_zero(copy / int8.FILE, "conv2", kernel,
                         lambda k: tuple(np.argwhere(k == 0)[len(np.argwhere(k == 0)) // 2]))
  assert cli.verify_main([str(copy), "--samples", "2"]) == 1
  out = capsys.readouterr().out
  assert "tflite_int8 zeros" in out and "FAILED" in out
  violations = [line for line in out.splitlines() if line.startswith("  layer ")]
  assert len(violations) == 1, out
  g = np.argwhere(result.mapping.packing("conv2").groups == index[-2])[0][0]  # channel units
  assert f"layer 'conv2', dense crossbar B({g}, {index[-1] // 8})" in violations[0]
  assert f"output channel {index[-1]}: a column the mapping drops" in violations[0]
  assert f"int8 weight {list(index)} is 3 (zero point 0), not 0" in violations[0]


def test_an_asymmetric_requantisation_of_one_channel_fails_verify(exported, tmp_path, capsys):
  """Zero point 5 on one output channel: its stored 0s are unchanged, but no longer mean 0."""
  model, result = exported
  copy = tmp_path / "asymmetric"
  shutil.copytree(result.directory, copy)
  _, flatbuffer_utils = _compat.tflite_flatbuffer_modules()
  kernel = np.asarray(model.get_layer("fc").kernel)
  tensor = int8.match_layers((copy / int8.FILE).read_bytes(), {"fc": kernel})[0]["fc"].tensor
  channel = int(np.argwhere(~kernel.any(axis=0) | (kernel == 0).any(axis=0))[0][0])
  flat, _, _ = _stored(copy / int8.FILE, tensor)
  for graph in flat.subgraphs:
    for t in graph.tensors:
      if (t.name.decode() if isinstance(t.name, bytes) else t.name) == tensor:
        t.quantization.zeroPoint[channel] = 5
  (copy / int8.FILE).write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(flat)))
  assert cli.verify_main([str(copy), "--samples", "2"]) == 1
  out = capsys.readouterr().out
  assert re.search(rf"  layer 'fc', dense crossbar B\(\d+, {channel // 8}\) .*output channel "
                   rf"{channel}: a column the mapping drops: int8 weight \[\d+, {channel}\] is 0 "
                   rf"\(zero point 5\), not 0", out), out


def test_a_filled_zero_inside_a_kept_crossbar_is_named_too(tmp_path):
  """Crossbar grain: a kept crossbar holding a column of zeros in model.keras."""
  model = tiny("tf_keras", "crossbar")
  kernel = np.asarray(model.get_layer("fc").kernel)
  row, col = np.argwhere(kernel != 0)[0]
  kernel[row, col] = 0.0  # one zero inside a kept column, not a dropped one
  model.get_layer("fc").kernel.assign(kernel)
  result = exporter.export(model, tmp_path / "x", SPEC, "crossbar", formats=FORMATS,
                           representative_data=images(16))
  check = int8.check_zeros((result.directory / int8.FILE).read_bytes(), result.mapping, model)
  assert check.ok, check.violations
  _fill_one_zero(result.directory / int8.FILE, "fc", kernel, lambda _: (row, col))
  check = int8.check_zeros((result.directory / int8.FILE).read_bytes(), result.mapping, model)
  assert len(check.violations) == 1
  assert check.violations[0].startswith("layer 'fc', crossbars[")
  assert f"int8 weight [{row}, {col}] is 3 where model.keras holds 0" in check.violations[0]


def test_layers_of_one_shape_are_told_apart_by_their_weights(tmp_path):
  """Two parallel convolutions of the same kernel shape: each finds its own int8 tensor."""
  k = keras_module("tf_keras")
  k.utils.set_random_seed(1)
  L = k.layers
  x = k.Input((8, 8, 3))
  merged = L.Concatenate()([L.Conv2D(8, 3, name=n)(x) for n in ("left", "right")])
  model = _models.prune(k.Model(x, L.Dense(10, name="fc")(L.Flatten()(merged)), name="two"),
                        SPEC, 0.5, "column")
  result = exporter.export(model, tmp_path / "two", SPEC, formats=FORMATS,
                           representative_data=images(16))
  flat = (result.directory / int8.FILE).read_bytes()
  check = int8.check_zeros(flat, result.mapping, model)
  assert check.ok and sorted(check.tensors) == ["fc", "left", "right"]
  backwards = {n: np.asarray(model.get_layer(n).kernel) for n in ("fc", "right", "left")}
  for name, weights in int8.match_layers(flat, backwards)[0].items():
    assert f"/{name}/" in weights.tensor and check.tensors[name] == weights.tensor, name


def test_export_refuses_an_int8_file_that_fills_a_zero(tmp_path, monkeypatch):
  """The export runs the same check before anything is renamed into place."""
  model = tiny("tf_keras")
  real = int8.convert

  def requantised(saved_model, samples):
    flat = real(saved_model, samples)
    path = tmp_path / "flat.tflite"
    path.write_bytes(flat)
    _fill_one_zero(path, "fc", np.asarray(model.get_layer("fc").kernel),
                   lambda k: tuple(np.argwhere(k == 0)[0]))
    return path.read_bytes()
  monkeypatch.setattr(int8, "convert", requantised)
  with pytest.raises(exporter.ExportError,
                     match=r"'tflite_int8' failed: .*layer 'fc', dense crossbar B\("):
    exporter.export(model, tmp_path / "out", SPEC, formats=FORMATS, representative_data=images(8))
  assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def qat_trained():
  """A tiny model and its pruning-preserving QAT version after one epoch at a high rate."""
  k = keras_module("tf_keras")
  model = tiny("tf_keras")
  qat = int8.quantize_aware(model)
  qat.compile(k.optimizers.Adam(0.01), k.losses.SparseCategoricalCrossentropy(from_logits=True))
  qat.fit(images(64), np.arange(64) % 10, epochs=1, batch_size=16, verbose=0)
  return model, qat


def test_quantisation_aware_int8_keeps_the_zeros(qat_trained, tmp_path, capsys):
  model, qat = qat_trained
  result = exporter.export(model, tmp_path / "qat", SPEC, formats=FORMATS, quantized_model=qat)
  assert load_model(str(result.directory / "model.keras")).count_params() == model.count_params()
  assert cli.verify_main([str(result.directory), "--samples", "2"]) == 0
  assert "tflite_int8 zeros: 3 mapped layers" in capsys.readouterr().out


def test_plain_quantisation_aware_training_fills_zeros_and_is_refused(tmp_path):
  """TFMOT's default scheme (not pruning-preserving) trains the zeros away; the export says so."""
  import tensorflow_model_optimization as tfmot
  k = keras_module("tf_keras")
  model = tiny("tf_keras")
  plain = tfmot.quantization.keras.quantize_model(model)
  plain.compile(k.optimizers.Adam(0.01), k.losses.SparseCategoricalCrossentropy(from_logits=True))
  plain.fit(images(64), np.arange(64) % 10, epochs=1, batch_size=16, verbose=0)
  with pytest.raises(exporter.ExportError, match=r"every pruned zero kept\): layer '\w+', "
                                                 r"dense crossbar B\(\d+, \d+\)"):
    exporter.export(model, tmp_path / "plain", SPEC, formats=FORMATS, quantized_model=plain)
  assert not (tmp_path / "plain").exists()


def test_quantize_aware_refuses_keras3():
  with pytest.raises(int8.QuantizationError, match="needs a tf_keras model.*representative_data"):
    int8.quantize_aware(tiny("keras3"))


def test_tflite_accuracy_counts_the_files_own_predictions(exported):
  """Batched through the signature (a remainder batch too), labels as ints or one-hot; the
  int8 file agrees with the float file on images like its calibration set."""
  model, result = exported
  x = images(13, seed=1)
  predicted = np.asarray(model(x, training=False)).argmax(-1)
  y = np.where(np.arange(13) % 3 == 0, (predicted + 1) % 10, predicted)
  path = result.directory / "model.tflite"
  expected = float(np.mean(predicted == y))
  assert 0 < expected < 1
  assert verification.tflite_accuracy(path, x, y, batch_size=5) == pytest.approx(expected)
  one_hot = np.eye(10)[y]
  assert verification.tflite_accuracy(path, x, one_hot, batch_size=1) == pytest.approx(expected)
  x = images(64, seed=2)
  y = np.asarray(model(x, training=False)).argmax(-1)
  assert verification.tflite_accuracy(result.directory / int8.FILE, x, y) >= 0.8
  with pytest.raises(verification.VerificationError, match="y: 12 labels for 13 images"):
    verification.tflite_accuracy(path, images(13), np.zeros(12, int))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(formats=FORMATS), int8.QuantizationError, "needs representative_data"),
    (dict(representative_data=images(4)), int8.QuantizationError,
     "representative_data is used by the format 'tflite_int8' only"),
    (dict(formats=FORMATS, representative_data=images(4)[:, :4]), int8.QuantizationError,
     r"representative_data for input_0: shape \(4, 4, 8, 3\); valid: \(N, 8, 8, 3\)"),
    (dict(formats=("tflite_int8",), representative_data=images(4)), ValueError,
     "'tflite_int8' is converted from the SavedModel; add 'saved_model'"),
    (dict(formats=FORMATS, quantized_model="tiny"), int8.QuantizationError,
     "holds no quantisation wrappers; valid: the result of quantize_aware"),
])
def test_bad_int8_arguments(tmp_path, kwargs, error, match):
  with pytest.raises(error, match=match):
    exporter.export(tiny("tf_keras"), tmp_path / "out", SPEC, **kwargs)
  assert not (tmp_path / "out").exists()


def test_a_quantize_aware_model_is_not_the_float_model(qat_trained, tmp_path):
  _, qat = qat_trained
  with pytest.raises(int8.QuantizationError, match="holds quantisation wrappers; valid: the float"):
    exporter.export(qat, tmp_path / "out", SPEC, formats=FORMATS, quantized_model=qat)
