"""The layer-by-layer procedure: each stop rule fires where its planted threshold says, an
accuracy drop rolls back to the last passing step, finished layers keep their masks, a run
interrupted after a layer resumes to the straight run's result, and the pipeline runs it end
to end (and resumes it) with the stop reasons in state.json and report.md."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _configs import load_config
from sklearn.datasets import load_digits

import xbar_tfmot as xt
from xbar_tfmot.app import datasets, pipeline, run_context, training
from xbar_tfmot.app.configuration import RENAMED, ConfigError
from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models.introspection import FLAVOURS, keras_module
from xbar_tfmot.pruning.layer_by_layer import STOP_REASONS, StopRules, prune_layer_by_layer

SPEC = CrossbarSpec(rows=8, cols=4, weight_bits=8, cell_bits=8)  # Kin 8 rows, Kout 4 columns


def brute_blocks(kernel: np.ndarray, rows: int = 8, cols: int = 4) -> int:
  """Crossbars holding a non-zero weight of a Dense kernel, by slicing (no library code)."""
  return sum(bool(np.any(kernel[i:i + rows, j:j + cols]))
             for i in range(0, kernel.shape[0], rows) for j in range(0, kernel.shape[1], cols))


def digits(n: int = 200):
  x, y = load_digits(return_X_y=True)
  return (x[:n] / 16.0).astype("float32"), y[:n]


def tiny_model(flavour: str):
  """Dense 64 -> 40 -> 10: `hidden` has 8 x 10 = 80 crossbars, `out` 5 x 3 = 15."""
  keras = keras_module(flavour)
  keras.utils.set_random_seed(0)
  return keras.Sequential([keras.Input((64,)), keras.layers.Dense(40, "relu", name="hidden"),
                           keras.layers.Dense(10, name="out")])


def run(flavour: str, rules: StopRules, validate=None, leave_dense=(), seed: int = 0,
        calls=None, model=None, after_fit=None, **options):
  """The procedure on 200 digits; `after_fit(model, finetune)` sees every trained model."""
  keras = keras_module(flavour)
  x, y = digits()
  model = tiny_model(flavour) if model is None else model

  def train(m, epochs, *, callbacks, seed, finetune):
    if calls is not None:
      calls.append((finetune, seed))
    m.compile(keras.optimizers.Adam(1e-3 if finetune else 3e-3),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    keras.utils.set_random_seed(seed)
    m.fit(x, y, batch_size=50, epochs=epochs, verbose=0, callbacks=callbacks)
    if after_fit is not None:
      after_fit(m, finetune)

  return xt.prune_layer_by_layer(  # the public API
      model, SPEC, granularity="crossbar", rules=rules, train=train,
      validate=validate or (lambda m: 0.5), steps_per_epoch=-(-len(y) // 50),
      leave_dense=leave_dense, seed=seed, **options)


def kernel(model, name: str) -> np.ndarray:
  return np.asarray(model.get_layer(name).kernel)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_max_reduction_stops_at_that_reduction_and_earlier_masks_stay(flavour):
  seen: list[tuple[int, int]] = []

  def validate(m):
    seen.append((brute_blocks(kernel(m, "hidden")), brute_blocks(kernel(m, "out"))))
    return 0.5

  rules = StopRules(max_accuracy_drop=1.0, max_reduction=0.3, step=0.15)
  model, outcomes = run(flavour, rules, validate)
  assert seen == [(80, 15), (68, 15), (56, 15), (56, 15),  # hidden's steps, its fine-tuning
                  (56, 13), (56, crossbar_budget(15, 0.3)), (56, crossbar_budget(15, 0.3))]
  assert [(o.layer, o.stop) for o in outcomes] == [("hidden", "max_reduction"),
                                                   ("out", "max_reduction")]
  for o, dense in zip(outcomes, (80, 15)):
    assert (o.dense, o.before, o.steps) == (dense, dense, 2)
    assert o.after == crossbar_budget(dense, 0.3)
    assert brute_blocks(kernel(model, o.layer)) == o.after  # hidden trained on during `out`
  assert all(type(l).__name__ == "Dense" for l in model.layers)  # no wrapper left


def test_crossbar_threshold_stops_at_exactly_tc():
  rules = StopRules(max_accuracy_drop=1.0, crossbar_threshold=60, step=0.15)
  calls = []
  model, outcomes = run("tf_keras", rules, calls=calls)
  # hidden: two LGD-RPP steps and its fine-tuning; out (already at Tc): nothing to fine-tune
  assert [finetune for finetune, _ in calls] == [False, False, True]
  assert len({seed for _, seed in calls}) == 3
  hidden, out = outcomes
  assert (hidden.stop, hidden.after, hidden.steps) == ("crossbar_threshold", 60, 2)  # 68, 60
  assert brute_blocks(kernel(model, "hidden")) == 60
  assert (out.stop, out.before, out.after, out.steps) == ("crossbar_threshold", 15, 15, 0)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_accuracy_drop_rolls_back_to_the_last_passing_step(flavour):
  seen: list[int] = []

  def validate(m):  # the planted drop: fewer than 60 crossbars in `hidden`
    seen.append(brute_blocks(kernel(m, "hidden")))
    return 0.9 if seen[-1] >= 60 else 0.5

  model, outcomes = run(flavour, StopRules(max_accuracy_drop=0.1, step=0.15), validate, ["out"])
  (hidden,) = outcomes
  assert seen == [80, 68, 56, 68]  # reference, a passing step, the rejected one, fine-tuned
  assert (hidden.stop, hidden.after, hidden.steps) == ("accuracy_drop", 68, 2)
  assert hidden.rejected_accuracy == 0.5 and hidden.accuracy == 0.9
  assert brute_blocks(kernel(model, "hidden")) == 68  # rolled back, kept through fine-tuning


def test_same_seed_same_result():
  rules = StopRules(max_accuracy_drop=1.0, max_reduction=0.2)
  a, _ = run("tf_keras", rules, leave_dense=["out"], seed=3)
  b, _ = run("tf_keras", rules, leave_dense=["out"], seed=3)
  for wa, wb in zip(a.get_weights(), b.get_weights()):
    np.testing.assert_array_equal(wa, wb)


class Interrupted(Exception):
  pass


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_resumed_after_a_layer_ends_as_a_straight_run(flavour, tmp_path):
  keras = keras_module(flavour)
  rules = StopRules(max_accuracy_drop=0.05, max_reduction=0.3, step=0.3)
  scores = iter(np.linspace(0.9, 0.8, 40))  # a validation that drifts: the reference matters

  def validate(m):
    return float(next(scores))

  straight, outcomes = run(flavour, rules, validate, seed=5)
  saved = []

  def checkpoint(model, progress):  # what the pipeline saves, then the process dies
    model.save(tmp_path / "after.keras")
    saved.append(json.loads(json.dumps(progress)))
    raise Interrupted

  scores = iter(np.linspace(0.9, 0.8, 40))
  with pytest.raises(Interrupted):
    run(flavour, rules, validate, seed=5, checkpoint=checkpoint)
  (progress,) = saved
  assert [o["layer"] for o in progress["outcomes"]] == ["hidden"]
  lines: list[str] = []
  model = keras.models.load_model(tmp_path / "after.keras")
  resumed, again = run(flavour, rules, validate, seed=5, model=model, resume=progress,
                       log=lines.append)
  assert any("resuming after layer hidden (1 of 2)" in line for line in lines)
  assert again == outcomes
  for a, b in zip(resumed.get_weights(), straight.get_weights()):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="resume says layer 'hidden' ended with 56 crossbars but "
                                      "the model holds 80"):
    run(flavour, rules, validate, resume=progress)  # the original model, not the saved one
  with pytest.raises(ValueError, match="resume lists layers \\['out'\\]"):
    run(flavour, rules, validate, resume={**progress, "outcomes": progress["outcomes"][:0] + [
        {**progress["outcomes"][0], "layer": "out"}]})


@pytest.mark.parametrize("field, value", [("max_reduction", 1.0), ("step", 0.0),
                                          ("crossbar_threshold", 0),
                                          ("max_accuracy_drop", -0.1)])
def test_bad_rules_name_the_field(field, value):
  with pytest.raises(ValueError, match=f"StopRules.{field}="):
    StopRules(**{field: value})


def test_the_procedure_is_public():
  """`xt.prune_layer_by_layer` and its types are the library's, and its errors are the
  library's errors (an `XbarError` that is still a ValueError)."""
  assert (xt.prune_layer_by_layer, xt.StopRules) == (prune_layer_by_layer, StopRules)
  assert xt.prune_layer_by_layer.__module__ == "xbar_tfmot.pruning.layer_by_layer"
  assert issubclass(xt.LayerByLayerError, xt.XbarError)
  assert issubclass(xt.LayerByLayerError, ValueError)
  with pytest.raises(xt.LayerByLayerError, match="rules=.*valid: a StopRules"):
    xt.prune_layer_by_layer(tiny_model("keras3"), SPEC, granularity="crossbar", rules={},
                            train=None, validate=None, steps_per_epoch=1)
  assert set(STOP_REASONS) == {"accuracy_drop", "crossbar_threshold", "max_reduction"}
  outcome = xt.LayerOutcome("hidden", 80, 80, 20, 3, "max_reduction", 0.5, None)
  assert outcome.to_dict()["reduction"] == 0.75


def tiny(workdir, **prune):
  """The tiny digits run, pruning only conv6 (32 crossbars) and fc2 (24) to stay short."""
  prune = {"procedure": "layer_by_layer", **prune}
  return load_config(workdir=str(workdir), train__verbose=0, train__baseline_epochs=2,
                     schedule__finetune_epochs=1, data__train_size=600, report__plots=False,
                     export__enabled=False, allocation__reorder=False,
                     allocation__validation_images=200,
                     allocation__leave_dense="conv1,conv2,conv3,conv4,conv5,fc1",
                     **{RENAMED[f"prune.{k}"].replace(".", "__"): v for k, v in prune.items()})


def test_pipeline_layer_by_layer_reports_each_layers_stop(tmp_path):
  """tf_keras only: the procedure's flavour-dependent parts are covered on both above."""
  lines: list[str] = []
  rules = dict(max_reduction=0.4, reduction_step=0.2, crossbar_threshold=15,
               max_accuracy_drop=0.1)
  config = tiny(tmp_path, **rules)
  metrics = pipeline.run(config, log=lines.append)
  state = json.loads((tmp_path / "state.json").read_text())["phases"]["prune"]
  assert state["validation_images"] == 200
  records = state["layer_by_layer"]
  rows = {r["name"]: r for r in metrics["layers"]}
  assert [r["layer"] for r in records] == ["conv6", "fc2"]
  for r in records:
    assert r["stop"] in STOP_REASONS
    assert rows[r["layer"]]["pruned"] == r["after"]  # the report counts what the procedure left
    assert (r["rejected_accuracy"] is not None) == (r["stop"] == "accuracy_drop")
    if r["stop"] == "accuracy_drop":
      assert r["after"] > max(15, crossbar_budget(r["dense"], 0.4))
    elif r["stop"] == "crossbar_threshold":
      assert r["after"] == 15
    else:
      assert r["stop"] == "max_reduction" and r["after"] == crossbar_budget(r["dense"], 0.4)
  report = (tmp_path / "report" / "report.md").read_text()
  for r in records:
    assert f"| {r['layer']} | {r['before']} | {r['after']} | {r['reduction']:.1%} | " \
           f"{r['steps']} | {r['stop']} |" in report
  assert any("validation accuracy before" in line for line in lines)
  (x, y), _ = datasets.load_dataset("digits", seed=config.seed)  # the last 200 of the 600
  pruned = pipeline.Pipeline(config).context.load(tmp_path / "checkpoints" / "pruned.keras")
  assert records[-1]["accuracy"] == training.accuracy(pruned, x[400:600], y[400:600])

  # Interrupted after conv6's checkpoint (from the straight run's baseline), then rerun: it
  # continues at fc2 and ends where the straight run did.
  other = tmp_path / "interrupted"
  (other / "checkpoints").mkdir(parents=True)
  for path in (tmp_path / "checkpoints").glob("*.keras"):
    if path.name != "pruned.keras":
      shutil.copy(path, other / "checkpoints" / path.name)
  phases = json.loads((tmp_path / "state.json").read_text())["phases"]
  before = run_context.PHASES[:run_context.PHASES.index("prune")]
  (other / "state.json").write_text(json.dumps({"phases": {p: phases[p] for p in before}}))

  def dies_after_conv6(line):
    if line.startswith("[layer_by_layer] conv6:") and "stopped by" in line:
      raise Interrupted

  with pytest.raises(Interrupted):
    pipeline.run(tiny(other, **rules), log=dies_after_conv6)
  broken = tmp_path / "broken"
  shutil.copytree(other, broken)
  (broken / "config.json").unlink()  # it names the other workdir
  progress = broken / "checkpoints" / "prune" / "layer_by_layer.json"
  progress.write_text(json.dumps({**json.loads(progress.read_text()), "model": "gone.keras"}))
  with pytest.raises(ValueError, match="layer_by_layer.json names no saved model \\('gone"):
    pipeline.run(tiny(broken, **rules), log=lambda line: None)
  lines.clear()
  pipeline.run(tiny(other, **rules), log=lines.append)
  assert any("resuming after layer conv6 (1 of 2)" in line for line in lines)
  again = json.loads((other / "state.json").read_text())["phases"]["prune"]["layer_by_layer"]
  assert again == records
  resumed = pipeline.Pipeline(config).context.load(other / "checkpoints" / "pruned.keras")
  for a, b in zip(resumed.get_weights(), pruned.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fields, match", [
    ({"procedure": "greedy"}, "config.schedule.procedure='greedy'"),
    ({"max_reduction": 1.0}, "config.layer_by_layer.max_reduction=1.0"),
    ({"reduction_step": 0.0}, "config.layer_by_layer.reduction_step=0.0"),
    ({"crossbar_threshold": 0}, "config.layer_by_layer.crossbar_threshold=0"),
    ({"max_accuracy_drop": 1.5}, "config.layer_by_layer.max_accuracy_drop=1.5"),
    ({"step_epochs": 0}, "config.layer_by_layer.step_epochs=0"),
])
def test_bad_prune_fields_are_config_errors(tmp_path, fields, match):
  with pytest.raises(ConfigError, match=match.replace(".", r"\.")):
    pipeline.Pipeline(tiny(tmp_path, **fields)).prepare()


def test_layer_by_layer_refuses_global_modes(tmp_path):
  config = tiny(tmp_path)
  config.allocation.mode = "global"
  with pytest.raises(ConfigError, match="config.allocation.mode='global'"):
    pipeline.Pipeline(config).prepare()


@pytest.mark.parametrize("accuracy, stop", [(0.5, "max_reduction"), (0.4375, "accuracy_drop")])
def test_an_accuracy_drop_exactly_at_the_limit_passes(accuracy, stop):
  """The rule fires only *beyond* `max_accuracy_drop`: a step exactly 0.25 below the reference
  (0.75 - 0.5, exact in binary) is kept; 0.3125 below is rolled back."""
  scores = []

  def validate(m):
    scores.append(0.75 if not scores else accuracy)
    return scores[-1]

  rules = StopRules(max_accuracy_drop=0.25, max_reduction=0.15, step=0.15)
  model, (hidden,) = run("tf_keras", rules, validate, ["out"])
  assert hidden.stop == stop
  if stop == "max_reduction":
    assert (hidden.after, hidden.steps, hidden.rejected_accuracy) == (68, 1, None)
  else:
    assert (hidden.after, hidden.steps, hidden.rejected_accuracy) == (80, 1, accuracy)
  assert brute_blocks(kernel(model, "hidden")) == hidden.after


def linear_model(flavour: str):
  """`tiny_model` with a linear, bias-free `hidden`: fed the identity, its wrapper outputs the
  kernel the forward computes with."""
  keras = keras_module(flavour)
  keras.utils.set_random_seed(0)
  return keras.Sequential([keras.Input((64,)),
                           keras.layers.Dense(40, use_bias=False, name="hidden"),
                           keras.layers.Dense(10, name="out")])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_hardware_aware_at_zero_variation_prunes_as_without(flavour):
  """An ideal chip (no variation, no weight levels): the same steps, stops and crossbars, and
  weights equal to float rounding (the chip's encode and read-back), though every step and
  fine-tuning trained a model whose every mapped layer was wrapped with the `HardwareAware`."""
  ideal = xt.HardwareAware(xt.HardwareSpec(variation=0.0, quantize_weights=False))
  rules = StopRules(max_accuracy_drop=1.0, max_reduction=0.3, step=0.15)
  plain_calls, calls, wrapped = [], [], []

  def seen(m, finetune):
    wrapped.append([(w.layer.name, w.hardware_aware) for w in xt.crossbar_wrappers(m)])

  plain, plain_outcomes = run(flavour, rules, calls=plain_calls)
  aware, outcomes = run(flavour, rules, calls=calls, after_fit=seen, hardware_aware=ideal)
  assert outcomes == plain_outcomes and calls == plain_calls
  assert [finetune for finetune, _ in calls] == [False, False, True] * 2
  assert wrapped == [[("hidden", ideal), ("out", ideal)]] * len(calls)
  for a, b in zip(aware.get_weights(), plain.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(a == 0, b == 0)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_hardware_aware_steps_and_finetuning_see_the_chip_and_keep_the_zeros(flavour):
  """With noise, every trained model computes `hidden` with the chip's kernel (fresh noise on
  every weight it keeps), and wherever its mask is 0, exactly 0: while it is pruned, and as a
  finished layer during `out`'s steps and fine-tuning, whose wrapper holds its mask."""
  aware = xt.HardwareAware(xt.HardwareSpec(variation=0.1, on_off_ratio=10.0))
  eye = np.eye(64, dtype="float32")
  probes = []

  def probe(m, finetune):
    wrappers = {w.layer.name: w for w in xt.crossbar_wrappers(m)}
    assert sorted(wrappers) == ["hidden", "out"]
    assert all(w.hardware_aware == aware for w in wrappers.values())
    hidden = wrappers["hidden"]
    chip = [np.asarray(hidden(eye, training=True)) for _ in range(2)]
    probes.append((finetune, np.asarray(hidden.mask), chip, np.asarray(hidden(eye))))

  rules = StopRules(max_accuracy_drop=1.0, max_reduction=0.3, step=0.15)
  model, (hidden, out) = run(flavour, rules, after_fit=probe, hardware_aware=aware,
                             model=linear_model(flavour))
  assert [finetune for finetune, *_ in probes] == [False, False, True] * 2
  final = kernel(model, "hidden")
  assert brute_blocks(final) == hidden.after == crossbar_budget(80, 0.3)
  assert brute_blocks(kernel(model, "out")) == out.after == crossbar_budget(15, 0.3)
  for k, (_, mask, chip, clean) in enumerate(probes):
    kept = mask == 1
    assert 0 < kept.mean() < 1, k  # a step's projection, or the finished layer's held mask
    np.testing.assert_array_equal(clean, np.asarray(clean) * mask)
    for seen in chip:
      assert np.all(seen[~kept] == 0), k  # no noise where nothing is programmed
      assert np.mean(seen[kept] != clean[kept]) > 0.9, k
    assert np.mean(chip[0][kept] != chip[1][kept]) > 0.9, k  # drawn afresh
    if k >= 2:  # hidden finished: its wrapper holds the mask it ends with
      np.testing.assert_array_equal(mask, final != 0)


def test_hardware_aware_must_be_a_hardware_aware():
  with pytest.raises(xt.LayerByLayerError, match="hardware_aware=.*valid: an "
                                                 "xbar_tfmot.HardwareAware or None"):
    run("tf_keras", StopRules(), hardware_aware=xt.HardwareSpec())
