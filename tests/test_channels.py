"""Channel-space analysis of small Keras graphs, both flavours."""

import _models
import pytest

from xbar_tfmot.models.channels import analyze


def _space_of(graph, producer):
  return graph.spaces[graph.outputs[producer]]


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_resnet_spaces_tie_add_and_slice_concat(flavour):
  graph = analyze(_models.resnet(flavour))
  assert graph.unsupported == {}
  tied = _space_of(graph, "stem")
  assert set(tied.producers) == {"stem", "b1_conv2"}  # Add ties both producers
  assert set(tied.consumers) == {"b1_conv1", "br_a", "br_b", "b2_conv1", "b2_short"}
  assert set(tied.carriers) == {"stem_bn", "b1_bn2", "concat_bn"}
  assert tied.permutable and tied.size == 8
  layout = graph.inputs["b2_conv1"]
  assert [(graph.spaces[s].producers, n) for s, n in layout.segments] == [
      (("br_a",), 6), (tied.producers, 8), (("br_b",), 5)]
  assert layout.offsets(tied.id) == [6]
  assert graph.carriers["concat_bn"] == layout
  assert set(_space_of(graph, "b2_short").producers) == {"b2_short", "b2_conv2"}
  assert graph.inputs["fc1"].positions == 1  # global pooling keeps one position
  assert graph.inputs["stem"].segments[0][0] not in graph.outputs.values()
  assert graph.spaces[graph.inputs["stem"].segments[0][0]].pinned[0].startswith(
      "produced by the model input")
  assert _space_of(graph, "fc2").pinned == ("reaches a model output",)


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_flatten_strides_the_dense_rows(flavour):
  graph = analyze(_models.vgg(flavour))
  layout = graph.inputs["fc1"]
  assert layout.flattened and layout.positions == 4 and layout.size == 16
  perm = [1, 0] + list(range(2, 16))
  induced = layout.induced({layout.segments[0][0]: perm})
  assert induced[:3].tolist() == [1, 0, 2] and induced[16:18].tolist() == [17, 16]
  assert sorted(induced.tolist()) == list(range(64))
  assert _space_of(graph, "conv2").carriers == ("bn2",)


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_unsupported_layers_are_reported_and_pin_their_spaces(flavour):
  K = _models.keras_module(flavour)
  L = K.layers
  inp = L.Input((6, 6, 3))
  a = L.Conv2D(4, 1, name="a")(inp)
  b = L.Reshape((6, 6, 2, 2), name="reshape")(a)
  b = L.Reshape((6, 6, 4), name="back")(b)
  c = L.Conv2D(4, 1, name="c")(b)
  d = L.DepthwiseConv2D(3, name="dw")(c)
  e = L.Conv2D(3, 1, name="e", data_format="channels_last")(d)
  shared = L.Conv2D(3, 1, name="shared")
  out = L.Add(name="add")([shared(e), shared(e)])
  graph = analyze(K.Model(inp, out))
  assert set(graph.unsupported) == {"reshape", "back", "dw", "shared", "add"}
  assert "not a channel-wise layer" in graph.unsupported["reshape"]
  assert "depthwise" in graph.unsupported["dw"]
  assert "more than once" in graph.unsupported["shared"]
  assert "outside the analysed graph" in graph.unsupported["add"]  # the shared layer's outputs
  assert any("read by 'reshape'" in r for r in _space_of(graph, "a").pinned)
  assert any("read by 'dw'" in r for r in _space_of(graph, "c").pinned)
  assert not _space_of(graph, "c").permutable and not _space_of(graph, "e").permutable
  assert graph.spaces[graph.inputs["c"].segments[0][0]].pinned[0].startswith(
      "produced by 'back'")


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_sequential_model(flavour):
  graph = analyze(_models.conv1d(flavour))
  assert graph.unsupported == {}
  assert _space_of(graph, "c1").consumers == ("c2",)
  assert _space_of(graph, "c2").consumers == ("fc",) and _space_of(graph, "c2").permutable
