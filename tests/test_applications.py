"""A Keras Application (`weights=None`) through report, reorder, prune, strip, export and verify,
in both flavours; the rest of the applications are in tools/check_applications.py (its table is
in docs/reliability.md). The counts are checked against a count from the kernels' shapes."""

import math

import pytest
from _tools import load_tool

from xbar_tfmot.core.projection import crossbar_budget
from xbar_tfmot.models.introspection import FLAVOURS, keras_module

TOOL = load_tool("check_applications")


def _expected_counts(model, rows: int = 128, cols: int = 128) -> tuple[int, int, int]:
  """(mapped layers, dense crossbars, crossbars after 50% pruning) of a 128x128 crossbar with
  8-bit weights in 8-bit cells (one column per output), counted from the kernel shapes:
  Conv2D (one group) and Dense are mapped, a channel with all its taps in one crossbar."""
  mapped = dense = pruned = 0
  first = True
  for layer in model.layers:
    kind = type(layer).__name__
    if kind not in ("Conv2D", "Dense") or getattr(layer, "groups", 1) != 1:
      continue
    *window, cin, cout = layer.kernel.shape
    channels_per_crossbar = rows // math.prod(window)
    count = math.ceil(cin / channels_per_crossbar) * math.ceil(cout / cols)
    mapped, dense = mapped + 1, dense + count
    pruned += count if first and kind == "Conv2D" else crossbar_budget(count, TOOL.REDUCTION)
    first = first and kind != "Conv2D"
  return mapped, dense, pruned


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_mobilenet_v2_goes_through_the_whole_chain(flavour, tmp_path):
  row = TOOL.check("MobileNetV2", flavour, workdir=str(tmp_path))
  assert all(row[step].startswith("ok") for step in TOOL.STEPS), row
  assert row["logit_spread"] > 100 * row["worst_abs"], row  # outputs vary far beyond the error
  kwargs, size = TOOL.APPLICATIONS["MobileNetV2"]
  model = keras_module(flavour).applications.MobileNetV2(
      weights=None, input_shape=(size, size, 3), classes=TOOL.CLASSES, **kwargs)
  mapped, dense, pruned = _expected_counts(model)
  assert (row["mapped"], row["dense"], row["pruned"]) == (mapped, dense, pruned), row
  with_weights = sum(1 for layer in model.layers if layer.weights)
  assert row["unmapped"] == with_weights - mapped  # depthwise convolutions, BatchNorm
  assert pruned < dense


def test_the_table_names_every_step_and_the_errors():
  rows = [{"application": "X", "flavour": "keras3", "input": 32, "mapped": 3, "unmapped": 1,
           "dense": 9, "pruned": 5, **{s: "ok" for s in TOOL.STEPS}, "seconds": 4},
          {"application": "Y", "flavour": "tf_keras", "report": "timed out after 9 s"}]
  table = TOOL.format_table(rows).splitlines()
  assert table[0].split(" | ")[3:5] == ["mapped (unmapped)", "crossbars dense / pruned"]
  assert table[2] == "| X | keras3 | 32 | 3 (1) | 9 / 5 | ok | ok | ok | ok | ok | ok | 4 |"
  assert table[3] == "| Y | tf_keras |  |  |  | timed out after 9 s | - | - | - | - | - |  |"
