"""Multi-input, multi-output models through report, reorder, prune, strip, export and verify.

The model reads two digit images (scikit-learn's digits) through two conv towers merged by a
Concatenate and classifies both with two heads of the same width, so an artefact whose outputs
were paired by position the wrong way round gives a mismatch, not a shape error.
"""

import shutil

import _models
import numpy as np
import pytest
import tensorflow as tf

from xbar_tfmot.app import cli
from xbar_tfmot.app.datasets import load_digits
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.schedules import CrossbarConstant
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.export import exporter
from xbar_tfmot.export.verification import random_inputs, tflite_interpreter, verify
from xbar_tfmot.models.introspection import flavour as flavour_of
from xbar_tfmot.models.introspection import geometry_of
from xbar_tfmot.models.reorder import reorder_model
from xbar_tfmot.models.report import crossbar_report
from xbar_tfmot.pruning import UpdateCrossbarPruning
from xbar_tfmot.pruning.api import crossbar_wrappers, prune_crossbar, strip_crossbar_pruning

SPEC = CrossbarSpec(rows=36, cols=8)
OUTPUTS = ("digit_left", "digit_right")


def two_tower(flavour: str, seed: int = 0):
  K = _models.keras_module(flavour)
  K.utils.set_random_seed(seed)
  L = K.layers
  left, right = L.Input((8, 8, 1), name="left"), L.Input((8, 8, 1), name="right")
  x = L.Conv2D(8, 3, padding="same", activation="relu", name="l1")(left)
  x = L.Conv2D(12, 3, padding="same", activation="relu", name="l2")(x)
  y = L.Conv2D(8, 3, padding="same", activation="relu", name="r1")(right)
  y = L.Conv2D(12, 3, padding="same", activation="relu", name="r2")(y)
  z = L.Concatenate(name="merge")([x, y])
  z = L.Conv2D(16, 3, padding="same", activation="relu", name="mix")(z)
  z = L.GlobalAveragePooling2D(name="gap")(z)
  return K.Model([left, right], [L.Dense(10, name=n)(z) for n in OUTPUTS], name="two_tower")


def digit_pairs(n: int = 256):
  (x, y), _ = load_digits()
  other = np.random.default_rng(0).permutation(len(y))
  return [x[:n], x[other][:n]], [y[:n], y[other][:n]]


def _outputs(model, inputs):
  return [np.asarray(o) for o in tf.nest.flatten(model(inputs, training=False))]


@pytest.fixture(scope="module", params=_models.FLAVOURS)
def chain(request, tmp_path_factory):
  """The whole chain once per flavour: (dense model, outputs and `mix` kernel of the dense and
  the reordered model before pruning, stripped model, budgets, export)."""
  flavour = request.param
  model = two_tower(flavour)
  reordered, result = reorder_model(model, SPEC, 0.5, granularity="column")
  x = [v[:16] for v in digit_pairs()[0]]
  reorder_check = (_outputs(model, x), _outputs(reordered, x),
                   reordered.get_layer("mix").kernel.numpy())  # before training changes them
  pruned = prune_crossbar(reordered, SPEC, "column", projection="topk", seed=0,
                          schedule=CrossbarConstant(0.5, begin_step=0, end_step=4, frequency=2))
  K = _models.keras_module(flavour)
  pruned.compile("adam", [K.losses.SparseCategoricalCrossentropy(from_logits=True)] * 2)
  x, y = digit_pairs()
  pruned.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
             callbacks=[UpdateCrossbarPruning(flavour=flavour)])
  budgets = {w.layer.name: w.final_budget for w in crossbar_wrappers(pruned)}
  stripped = strip_crossbar_pruning(pruned)
  out = tmp_path_factory.mktemp(flavour) / "export"
  exported = exporter.export(stripped, out, SPEC, "column",
                             permutations=result.mapping_permutations)
  return model, reorder_check, stripped, budgets, exported


def test_report_counts_every_tower_and_head(chain):
  model = chain[0]
  rows = {r.name: r for r in crossbar_report(model, SPEC).layers}
  assert set(rows) == {"l1", "l2", "r1", "r2", "mix", *OUTPUTS}
  assert rows["mix"].counts.dense == 6 * 2  # 24 channels of 9 taps in groups of 4, 16 / 8 outputs


def test_reorder_keeps_both_outputs_and_permutes_inside_the_graph(chain):
  model, (before, after, mix_kernel) = chain[0], chain[1]
  assert len(after) == 2
  for a, b in zip(before, after):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  assert not np.array_equal(mix_kernel, model.get_layer("mix").kernel.numpy())


def test_pruned_layers_meet_their_budgets(chain):
  stripped, budgets, exported = chain[2], chain[3], chain[4]
  assert set(budgets) == {"l2", "r2", "mix", *OUTPUTS}  # l1 left dense, r1 is one crossbar
  for name, budget in budgets.items():
    layer = stripped.get_layer(name)
    g = geometry_of(layer, SPEC)
    assert g.counts(layer.kernel.numpy()).packed == budget == crossbar_budget(g.dense_crossbars,
                                                                             0.5), name
  assert exported.mapping.totals["crossbars"] == sum(
      geometry_of(stripped.get_layer(n), SPEC).counts(stripped.get_layer(n).kernel.numpy()).packed
      for n in ("l1", "l2", "r1", "r2", "mix", *OUTPUTS))


def test_signatures_take_every_input_and_return_every_output_by_name(chain):
  stripped, exported = chain[2], chain[4]
  x = random_inputs(stripped, 4, seed=1)
  reference = _outputs(stripped, list(x.values()))
  serve = tf.saved_model.load(str(exported.directory / "saved_model")).signatures[
      "serving_default"]
  got = serve(input_0=tf.constant(x["input_0"]), input_1=tf.constant(x["input_1"]))
  assert sorted(got) == ["output_0", "output_1"]
  for i, ref in enumerate(reference):
    np.testing.assert_allclose(got[f"output_{i}"].numpy(), ref, rtol=1e-5, atol=1e-5)
  runner = tflite_interpreter(exported.directory / "model.tflite")[0].get_signature_runner(
      "serving_default")
  lite = runner(input_1=x["input_1"][:1], input_0=x["input_0"][:1])  # keywords, any order
  for i, ref in enumerate(reference):
    np.testing.assert_allclose(lite[f"output_{i}"], ref[:1], rtol=1e-4, atol=1e-5)
  swapped = _outputs(stripped, [x["input_1"], x["input_0"]])
  assert np.abs(swapped[0] - reference[0]).max() > 1e-3  # the two inputs are not interchangeable


def test_verify_compares_every_output_of_every_artefact(chain):
  exported = chain[4]
  result = verify(str(exported.directory))
  assert result.ok, result.format()
  assert set(result.differences) == {f"{a}:{o}" for a in ("crossbar-explicit", "saved_model",
                                                            "tflite") for o in OUTPUTS}
  assert cli.verify_main([str(exported.directory)]) == 0


def test_verify_catches_outputs_swapped_in_the_artefacts(chain, tmp_path):
  """SavedModel and TFLite of the same model with its outputs swapped, put in the export: the
  comparison by name says which outputs differ; the crossbar-explicit model still agrees."""
  stripped, exported = chain[2], chain[4]
  K = _models.keras_module(flavour_of(stripped))
  swapped = K.Model(stripped.inputs, stripped.outputs[::-1], name=stripped.name)
  other = exporter.export(swapped, tmp_path / "swapped", SPEC, "column")
  folder = tmp_path / "tampered"
  shutil.copytree(exported.directory, folder)
  for part in ("saved_model", "model.tflite", "mapping.json"):  # the mapping lists the heads
    # in the swapped model's order
    (shutil.rmtree if part == "saved_model" else lambda p: p.unlink())(folder / part)
    (shutil.copytree if part == "saved_model" else shutil.copy)(other.directory / part,
                                                                folder / part)
  result = verify(str(folder))
  assert not result.ok
  bad = {name for name, (_, rel) in result.differences.items() if rel > result.tolerance}
  assert bad == {f"{a}:{o}" for a in ("saved_model", "tflite") for o in OUTPUTS}, result.format()
  assert "saved_model:digit_left vs keras" in result.format()
  assert cli.verify_main([str(folder)]) == 1


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_an_integer_input_is_exported_and_verified(flavour, tmp_path):
  """An int32 input (a class index through an Embedding) beside an image: the signature keeps
  its dtype, and verify feeds it integers."""
  K = _models.keras_module(flavour)
  K.utils.set_random_seed(0)
  L = K.layers
  image, index = L.Input((8, 8, 1), name="image"), L.Input((1,), dtype="int32", name="index")
  x = L.GlobalAveragePooling2D()(L.Conv2D(12, 3, name="conv")(image))
  e = L.Flatten()(L.Embedding(3, 4, name="embed")(index))
  model = K.Model([image, index], L.Dense(10, name="fc")(L.Concatenate()([x, e])))
  result = exporter.export(model, tmp_path / "int", SPEC, "column")
  x = random_inputs(model, 8)
  assert x["input_1"].dtype == np.int32 and set(np.unique(x["input_1"])) <= {0, 1}
  details = tflite_interpreter(result.directory / "model.tflite")[0].get_signature_runner(
      "serving_default").get_input_details()
  assert details["input_1"]["dtype"] == np.int32
  assert verify(str(result.directory)).ok


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_a_string_input_is_refused_naming_it(flavour, tmp_path):
  K = _models.keras_module(flavour)
  L = K.layers
  image, tag = L.Input((4,), name="image"), L.Input((1,), dtype="string", name="tag")
  model = K.Model([image, tag], [L.Dense(3, name="fc")(image), tag])
  with pytest.raises(exporter.ExportError, match=r"input 'tag' \(input_1\) has dtype string"):
    exporter.export(model, tmp_path / "str", SPEC, "column")
  assert not any(tmp_path.iterdir())
