"""NeuroSim-style layer table of a mapped model (docs/hardware.md, "NeuroSim export").

`network.csv` follows the network file of neurosim/DNN_NeuroSim_V1.4 (checked against its
`Inference_pytorch/NeuroSIM/NetWork_VGG8.csv` and the columns `Chip.cpp` reads, commit
ac828e6): one row per mapped layer, no header, eight integers

  input height, input width, input channels, kernel height, kernel width, output channels,
  pooling after the layer (1 = a 2x2 pooling follows, 0 = none), stride

with a Dense layer written as `1, 1, inputs, 1, 1, outputs, 0, 1`. `crossbars.csv` (with a
header) adds what NeuroSim does not know: per layer the dense and pruned crossbar counts of
the mapping, their utilisation, non-zero weights and the crossbar spec, in the same order.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from xbar_tfmot.core.mapping import CrossbarMapping
from xbar_tfmot.models import introspection

POOLING = ("MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AveragePool2D")
CROSSBAR_COLUMNS = ("layer", "type", "dense_crossbars", "crossbars", "reduction", "utilization",
                    "nonzero_weights", "kin", "kout", "rows", "cols", "columns_per_weight")


def network_rows(model: Any, mapping: CrossbarMapping) -> list[list[int]]:
  """NeuroSim's eight columns for every mapped layer, in mapping order."""
  layers = list(model.layers)
  index = {introspection.unwrap(l).name: i for i, l in enumerate(layers)}
  names = set(mapping.layer_names)
  rows = []
  for name in mapping.layer_names:
    i = index[name]
    layer = layers[i]
    entry = mapping.layer(name)
    kernel = entry["kernel_shape"]
    shape = tuple(int(d) for d in layer.input.shape[1:])
    if entry["type"] == "Dense":
      rows.append([1, 1, int(kernel[0]), 1, 1, int(kernel[1]), 0, 1])
      continue
    config = introspection.unwrap(layer).get_config()
    pooled = 0
    for later in layers[i + 1:]:
      if introspection.unwrap(later).name in names:
        break
      if type(introspection.unwrap(later)).__name__ in POOLING:
        pooled = 1
        break
    if entry["type"] == "Conv1D":
      rows.append([shape[0], 1, kernel[1], kernel[0], 1, kernel[2], pooled,
                   int(config["strides"][0])])
    else:
      rows.append([shape[0], shape[1], kernel[2], kernel[0], kernel[1], kernel[3], pooled,
                   int(config["strides"][0])])
  return rows


def network_csv(model: Any, mapping: CrossbarMapping) -> str:
  out = io.StringIO()
  csv.writer(out, lineterminator="\n").writerows(network_rows(model, mapping))
  return out.getvalue()


def crossbars_csv(mapping: CrossbarMapping) -> str:
  spec = mapping.spec
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(CROSSBAR_COLUMNS)
  for entry in mapping.data["layers"]:
    c = entry["counts"]
    writer.writerow([entry["name"], entry["type"], c["dense"], c["crossbars"],
                     f"{1 - c['crossbars'] / c['dense']:.6f}", f"{c['utilization']:.6f}",
                     c["nonzero_weights"], entry["kin"], entry["kout"], spec.rows, spec.cols,
                     spec.columns_per_weight])
  return out.getvalue()


def write(model: Any, mapping: CrossbarMapping, folder) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "network.csv").write_text(network_csv(model, mapping), encoding="utf-8")
  (folder / "crossbars.csv").write_text(crossbars_csv(mapping), encoding="utf-8")
