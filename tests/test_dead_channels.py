"""Dead output channels: which are removable exactly, and the rebuilt model's function."""

import _models
import numpy as np
import pytest

from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import introspection
from xbar_tfmot.models.dead_channels import find_dead_channels, remove_dead_channels

SPEC = CrossbarSpec(rows=18, cols=2)  # 2 channels of a 3x3 kernel, or 18 Dense rows, per group


def _kill(model, name: str, columns, bias=None) -> None:
  """Zeroes `columns` of a layer's kernel; sets their biases to `bias` (one value each)."""
  layer = model.get_layer(name)
  kernel = np.asarray(layer.kernel).copy()
  kernel[..., list(columns)] = 0
  layer.kernel.assign(kernel)
  if bias is not None:
    values = np.asarray(layer.bias).copy()
    values[list(columns)] = bias
    layer.bias.assign(values)


def _max_diff(a, b, x) -> float:
  return float(np.max(np.abs(np.asarray(a(x)) - np.asarray(b(x)))))


def _by_channel(report, producer: str) -> dict:
  return {c.channel: c for c in report.channels if producer in c.producers}


def chain(flavour: str):
  """Conv (no bias) - BN - ReLU - 'same' conv - 'valid' conv - pool - Flatten - Dense - Dense,
  with dead channels planted so that every case of the rule appears once."""
  K = introspection.keras_module(flavour)
  K.utils.set_random_seed(0)
  L = K.layers
  inp = L.Input((9, 9, 3), name="image")
  x = L.Conv2D(6, 3, padding="same", use_bias=False, name="p")(inp)
  x = L.BatchNormalization(name="bn")(x)
  x = L.ReLU(name="relu")(x)
  x = L.Conv2D(5, 3, padding="same", name="c")(x)
  x = L.Conv2D(4, 3, padding="valid", activation="relu", name="v")(x)
  x = L.MaxPooling2D(2, name="pool")(x)
  x = L.Flatten(name="flat")(x)
  x = L.Dense(7, use_bias=False, name="d")(x)
  out = L.Dense(3, name="o")(x)
  model = _models._randomize(K.Model(inp, out), 0)
  gamma, beta, mean, var = model.get_layer("bn").get_weights()
  mean[[1, 4, 5]] = 0.0
  beta[[1, 4, 5]] = [-0.5, -1.0, 0.7]  # BN(0) = beta: ReLU gives 0, 0 and 0.7
  model.get_layer("bn").set_weights([gamma, beta, mean, var])
  _kill(model, "p", [1, 4, 5])  # -> 0, 0 (removed at 'c'); 0.7 at 'same'-padded 'c' (kept)
  _kill(model, "c", [0], [0.4])  # -> 0.4 at 'valid' 'v': folded
  _kill(model, "v", [2, 3], [0.5, -0.2])  # relu: 0.5 folded into 'd' (gets a bias); 0 removed
  _kill(model, "o", [1])  # a model output: kept
  return model


def tied(flavour: str):
  """Two producers tied by Add, read by a 'valid' conv and, through ZeroPadding, another."""
  K = introspection.keras_module(flavour)
  K.utils.set_random_seed(0)
  L = K.layers
  inp = L.Input((6, 6, 3), name="image")
  a = L.Conv2D(5, 1, name="a")(inp)
  b = L.Conv2D(5, 3, padding="same", name="b")(inp)
  x = L.Add(name="add")([a, b])
  x = L.ReLU(name="relu")(x)
  y = L.Conv2D(4, 3, name="c1")(x)
  z = L.ZeroPadding2D(1, name="pad")(x)
  z = L.Conv2D(4, 3, name="c2")(z)
  y = L.Concatenate(name="cat")([L.GlobalAveragePooling2D(name="g1")(y),
                                 L.GlobalAveragePooling2D(name="g2")(z)])
  out = L.Dense(2, name="o")(y)
  model = _models._randomize(K.Model(inp, out), 0)
  _kill(model, "a", [0, 2, 3], [0.3, -0.4, 0.1])
  _kill(model, "b", [0, 2], [0.2, 0.1])  # ch 0: 0.5 > 0, ch 2: relu(-0.3) = 0; ch 3 live in b
  return model


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_each_case_of_the_rule_and_the_same_function(flavour):
  model = chain(flavour)
  report = find_dead_channels(model)
  p, c, v, o = (_by_channel(report, n) for n in "pcvo")
  assert sorted(p) == [1, 4, 5] and sorted(c) == [0] and sorted(v) == [2, 3] and sorted(o) == [1]
  assert [(x.action, x.value) for x in p[1].verdicts] == [("remove", 0.0)]
  assert p[4].removable and p[4].verdicts[0].action == "remove"
  assert not p[5].removable and p[5].verdicts[0].action == "keep"
  assert p[5].verdicts[0].value == pytest.approx(0.7, abs=1e-6)
  assert "padding='same'" in p[5].reason
  assert c[0].removable and c[0].verdicts[0].action == "fold"
  assert c[0].verdicts[0].value == pytest.approx(0.4, abs=1e-6)
  assert [x.action for x in v[2].verdicts] == ["fold"] and v[2].outputs == pytest.approx((0.5,))
  assert [x.action for x in v[3].verdicts] == ["remove"]
  assert not o[1].removable and "reaches a model output" in o[1].reason
  assert report.removed == {sid: chans for sid, chans in report.removed.items()}
  assert sorted(ch for chans in report.removed.values() for ch in chans) == [0, 1, 2, 3, 4]

  new, after = remove_dead_channels(model, SPEC)
  x = _models.random_inputs(model, n=4)
  assert _max_diff(new, model, x) < 1e-5
  shapes = {l.name: [w.shape for w in l.get_weights()] for l in new.layers if l.weights}
  assert shapes["p"] == [(3, 3, 3, 4)] and shapes["bn"] == [(4,)] * 4
  assert shapes["c"] == [(3, 3, 4, 4), (4,)] and shapes["v"] == [(3, 3, 4, 2), (2,)]
  assert shapes["d"] == [(3 * 3 * 2, 7), (7,)]  # the folded constant gave 'd' a bias
  assert shapes["o"] == [(7, 3), (3,)]
  # the kept channel 5 of 'p' is still there: BN entry 5 became entry 3
  np.testing.assert_array_equal(new.get_layer("bn").get_weights()[1],
                                np.delete(model.get_layer("bn").get_weights()[1], [1, 4]))
  assert after.total("dense", after=True) < after.total("dense")
  assert all(after.counts_after[n].dense <= after.counts_before[n].dense
             for n in after.counts_before)
  assert "5 dead output channels" not in after.summary() and "kept" in after.summary()


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_a_tied_space_loses_a_channel_only_if_dead_in_every_producer(flavour):
  model = tied(flavour)
  report = find_dead_channels(model)
  a = _by_channel(report, "a")
  assert sorted(a) == [0, 2]  # channel 3 is live in 'b'
  assert list(report.partly_dead.values()) == [(3,)]
  assert a[0].outputs == pytest.approx((0.3, 0.2))
  # 0.5 reaches the 'valid' c1 (foldable) but the zero padding makes it vary before c2
  actions = {x.layer: x.action for x in a[0].verdicts}
  assert actions == {"c1": "fold", "c2": "keep"} and not a[0].removable
  assert "pad" in report.lost and "'pad'" in a[0].reason
  # relu(-0.3) = 0 stays 0 through the zero padding: removable at both
  assert {x.layer: x.action for x in a[2].verdicts} == {"c1": "remove", "c2": "remove"}
  assert a[2].removable

  new, _ = remove_dead_channels(model)
  assert _max_diff(new, model, _models.random_inputs(model, n=4)) < 1e-5
  assert new.get_layer("a").kernel.shape[-1] == 4 and new.get_layer("b").kernel.shape[-1] == 4
  assert new.get_layer("c1").kernel.shape[-2] == 4 and new.get_layer("c2").kernel.shape[-2] == 4


def brute_model(flavour: str, seed: int):
  K = introspection.keras_module(flavour)
  K.utils.set_random_seed(seed)
  L = K.layers
  model = K.Sequential([
      L.Input((8, 8, 2)),
      L.Conv2D(6, 3, activation="relu", name="c1"),
      L.BatchNormalization(name="bn"),
      L.Conv2D(6, 3, padding="same" if seed % 2 else "valid", activation="relu", name="c2"),
      L.MaxPooling2D(2, name="pool"),
      L.Flatten(name="flat"),
      L.Dense(8, activation="relu", name="f1"),
      L.Dense(3, name="f2"),
  ])
  model = _models._randomize(model, seed)
  rng = np.random.default_rng(seed)
  for name in ("c1", "c2", "f1"):
    layer = model.get_layer(name)
    dead = np.flatnonzero(rng.random(layer.kernel.shape[-1]) < 0.45)
    _kill(model, name, dead, rng.choice([-0.3, 0.0, 0.4], dead.size))
  return model


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_random_dead_columns_keep_the_function_and_never_add_crossbars(flavour, seed):
  model = brute_model(flavour, seed)
  x = _models.random_inputs(model, n=4, seed=seed)
  zeroed, zero_report = remove_dead_channels(model, SPEC, how="zero")
  assert _max_diff(zeroed, model, x) < 1e-5
  assert [l.output.shape for l in zeroed.layers] == [l.output.shape for l in model.layers]
  for name, before in zero_report.counts_before.items():  # same groups, fewer non-zeros
    assert zero_report.counts_after[name].packed <= before.packed
    assert zero_report.counts_after[name].dense == before.dense
  for dead in zero_report.channels:  # the removable channels' rows hold zeros now
    for verdict in dead.verdicts if dead.removable else ():
      kernel = np.asarray(zeroed.get_layer(verdict.layer).kernel)
      assert zero_report.counts_after[verdict.layer].nonzero_weights < zero_report.counts_before[
          verdict.layer].nonzero_weights
      if verdict.layer == "c2":
        assert not kernel[..., dead.channel, :].any()
  new, report = remove_dead_channels(model, SPEC)
  assert _max_diff(new, model, x) < 1e-5
  for dead in report.channels:  # every verdict is the rule, from the planted values
    for verdict in dead.verdicts:
      layer = model.get_layer(verdict.layer)
      if verdict.value == 0.0:
        assert verdict.action == "remove"
      elif verdict.value is not None:
        assert verdict.action == ("keep" if getattr(layer, "padding", "valid") == "same"
                                  else "fold")
  removed = {dead.channel for dead in report.channels if dead.removable
             and "c2" in dead.producers}
  units = {}  # input units of each consumer, before and after
  for name in ("c2", "f1"):
    geometry = introspection.geometry_of(model.get_layer(name), SPEC)
    new_geometry = introspection.geometry_of(new.get_layer(name), SPEC)
    units[name] = (geometry.g_in, new_geometry.g_in)
  positions = model.get_layer("f1").kernel.shape[0] // 6
  assert new.get_layer("f1").kernel.shape[0] == positions * (6 - len(removed))
  for name, before in report.counts_before.items():
    after = report.counts_after[name]
    assert after.dense <= before.dense and after.nonzero_weights <= before.nonzero_weights
    if name in units and units[name][1] < units[name][0]:  # whole row tiles freed
      assert after.dense < before.dense
  assert report.total("dense", after=True) <= report.total("dense")


def test_removing_rows_can_regroup_a_consumer_into_more_packed_crossbars():
  """Kin = 2 rows, Kout = 1: the consumer's rows a (dead input), b, c, d sit in groups {a, b}
  {c, d} (1 + 2 packed crossbars); without a they sit in {b, c} {d} (2 + 2). Zeroing a's row
  instead keeps the groups, so the packed count cannot rise: {a, b} empties (0 + 2)."""
  K = introspection.keras_module("tf_keras")
  inp = K.layers.Input((3,))
  x = K.layers.Dense(4, use_bias=False, name="p")(inp)
  out = K.layers.Dense(1, name="o")(K.layers.Dense(2, name="c")(x))
  model = K.Model(inp, out)
  kernel = np.ones((3, 4), "float32")
  kernel[:, 0] = 0
  model.get_layer("p").kernel.assign(kernel)
  model.get_layer("c").kernel.assign(np.array([[1, 0], [0, 0], [1, 1], [1, 1]], "float32"))
  spec = CrossbarSpec(rows=2, cols=1)
  new, report = remove_dead_channels(model, spec)
  assert (report.counts_before["c"].packed, report.counts_after["c"].packed) == (3, 4)
  assert report.grown == ("c",) and "packed count rose in c" in report.summary()
  _, zero = remove_dead_channels(model, spec, how="zero")
  assert (zero.counts_before["c"].packed, zero.counts_after["c"].packed) == (3, 2)
  assert zero.grown == ()
  x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
  assert _max_diff(new, model, x) < 1e-5


def test_errors_name_the_mode_and_the_layer():
  from xbar_tfmot.core.errors import ModelError
  K = introspection.keras_module("tf_keras")
  inp = K.layers.Input((3,))
  model = K.Model(inp, K.layers.Dense(2, name="o")(K.layers.Dense(2, name="all_dead")(inp)))
  model.get_layer("all_dead").kernel.assign(np.zeros((3, 2), "float32"))
  with pytest.raises(ModelError, match="how='drop' is unknown; valid: remove, zero"):
    remove_dead_channels(model, how="drop")
  with pytest.raises(ModelError, match="layer 'all_dead' would keep no output channel"):
    remove_dead_channels(model)
  assert find_dead_channels(model).removable == 2  # found, just not removable as a layer


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_a_space_a_separable_convolution_reads_is_pinned_and_left_alone(flavour):
  """`channels.analyze` does not follow SeparableConv2D (depthwise channels), so the dead
  channels before it are reported, with the reason, and not touched."""
  K = introspection.keras_module(flavour)
  K.utils.set_random_seed(0)
  L = K.layers
  inp = L.Input((7, 7, 3), name="image")
  x = L.Conv2D(5, 3, activation="relu", name="p")(inp)
  x = L.SeparableConv2D(4, 3, depth_multiplier=2, name="s")(x)
  out = L.Dense(2, name="o")(L.GlobalAveragePooling2D(name="gap")(x))
  model = _models._randomize(K.Model(inp, out), 0)
  _kill(model, "p", [1], [-0.2])
  (dead,) = find_dead_channels(model).channels
  assert (dead.producers, dead.channel, dead.removable) == (("p",), 1, False)
  assert "pinned: read by 's'" in dead.reason
  new, report = remove_dead_channels(model)
  assert new is model and report.removed == {}


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_a_concatenated_space_loses_its_entry_at_its_offset(flavour):
  K = introspection.keras_module(flavour)
  K.utils.set_random_seed(0)
  L = K.layers
  inp = L.Input((6, 6, 2), name="image")
  a = L.Conv2D(4, 1, name="a")(inp)
  b = L.Conv2D(3, 1, name="b")(inp)
  x = L.Concatenate(name="cat")([a, b])
  x = L.BatchNormalization(name="bn")(x)
  x = L.Conv2D(5, 3, name="c")(x)  # 'valid': the BN'd constants fold into its bias
  out = L.Dense(2, name="o")(L.Flatten(name="flat")(x))
  model = _models._randomize(K.Model(inp, out), 0)
  _kill(model, "a", [2], [0.3])
  _kill(model, "b", [1], [-0.4])
  report = find_dead_channels(model)
  assert {(c.producers, c.channel, c.removable) for c in report.channels} == {
      (("a",), 2, True), (("b",), 1, True)}
  new, _ = remove_dead_channels(model)
  assert _max_diff(new, model, _models.random_inputs(model, n=4)) < 1e-5
  np.testing.assert_array_equal(new.get_layer("bn").get_weights()[2],
                                np.delete(model.get_layer("bn").get_weights()[2], [2, 5]))
  np.testing.assert_array_equal(np.asarray(new.get_layer("c").kernel),
                                np.delete(np.asarray(model.get_layer("c").kernel), [2, 5], -2))
