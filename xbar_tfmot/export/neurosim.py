"""NeuroSim-style layer table of a mapped model (docs/hardware.md, "NeuroSim export").

`network.csv` follows the network file of neurosim/DNN_NeuroSim_V1.4 (checked against its
`Inference_pytorch/NeuroSIM/NetWork_VGG8.csv` and the columns `Chip.cpp` reads, commit
ac828e6): one row per mapped layer, no header, eight integers

  input height, input width, input channels, kernel height, kernel width, output channels,
  pooling after the layer (1 = a 2x2 pooling follows, 0 = none), stride

with a Dense layer written as `1, 1, inputs, 1, 1, outputs, 0, 1`. Pooling is flagged as
NeuroSim's own tables do: 1 when a pooling layer, global ones included (its ResNet18 table
flags the last convolution, which global average pooling follows), comes before the next
mapped layer. `crossbars.csv` (with a header) adds what NeuroSim does not know: per layer the
dense and pruned crossbar counts of the mapping, their utilisation, non-zero weights and the
crossbar spec, in the same order.

Per layer, the two files NeuroSim's `main` reads (`main.cpp`: `argv[2i+6]`, `argv[2i+7]`), in
the formats its PyTorch wrapper writes (`Inference_pytorch/utee/hook.py`):

- `weight_<layer>.csv`: the `(cin * kh * kw, cout)` matrix, row `c * kh * kw + i * kw + j`
  (PyTorch's `weight.reshape(cout, -1).T`), values in [-1, 1] (`Chip.cpp` maps
  `algoWeightMin..algoWeightMax = -1..1` to levels), `%10.5f`, comma-separated. The weights
  are the model's divided by the layer's largest |weight|, with every weight the pruned
  mapping does not place on a crossbar written as 0 (the mapping, not the kernel, decides).
- `input_<layer>.csv`: one image's input patches, `cin * kh * kw` rows (same order), and per
  output position (row-major) `input_bits` columns of 0/1, the two's complement of the
  activation scaled to [-1, 1) by the largest |activation| of the layer's input, most
  significant (sign) bit first (`hook.py`'s `dec2bin`); a Dense layer one position.

`run_neurosim.sh` calls `main` with the network file, the weight and input bits, the
sub-array rows (the mapping's rows, all read in parallel) and the file pairs in layer order.
NeuroSim counts `(H - k + 1) / s` output positions of a layer (`Chip.cpp`), also for a 'same'
convolution, and reads that many positions of the input file; the input file, like NeuroSim's
own wrapper, holds all `H / s` positions of a 'same' convolution, and our cost model counts
`H / s`: see docs/hardware.md, "NeuroSim export".
"""

from __future__ import annotations

import csv
import io
import pathlib
from typing import Any

import numpy as np

from xbar_tfmot.core.errors import XbarError
from xbar_tfmot.core.mapping import CrossbarMapping
from xbar_tfmot.core.packing import unrolled
from xbar_tfmot.models import introspection

POOLING = ("MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AveragePool2D",
           "GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAvgPool2D", "GlobalMaxPool2D",
           "MaxPooling1D", "AveragePooling1D", "GlobalAveragePooling1D", "GlobalMaxPooling1D")
INPUT_BITS = 8  # NeuroSim's default activation precision (its wrapper's wl_activation)


class NeuroSimError(XbarError, ValueError):
  """The NeuroSim files cannot be written for this model; the message names what is wrong."""


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


def pruned_matrix(mapping: CrossbarMapping, name: str, kernel) -> np.ndarray:
  """The layer's `(cin * taps, cout)` weight matrix in NeuroSim's row order with every weight
  the mapping does not place on a crossbar set to 0."""
  pack = mapping.packing(name)
  matrix = unrolled(pack.geometry, np.asarray(kernel, np.float64))
  placed = np.zeros((matrix.shape[0] + 1, matrix.shape[1] + 1), bool)
  rows, cols = pack.crossbar_rows(), pack.columns
  placed[rows[:, :, None], cols[:, None, :]] = True  # -1 (padding) lands in the extra row/col
  return np.where(placed[:-1, :-1], matrix, 0.0)


def weight_csv(matrix: np.ndarray) -> str:
  """NeuroSim's weight file: the matrix over its largest |weight|, `%10.5f`, comma-separated."""
  top = float(np.max(np.abs(matrix))) if matrix.size else 0.0
  out = io.StringIO()
  np.savetxt(out, matrix / (top or 1.0), delimiter=",", fmt="%10.5f")
  return out.getvalue()


def input_bits_matrix(patches: np.ndarray, bits: int = INPUT_BITS) -> np.ndarray:
  """`(rows, positions * bits)` 0/1: each patch value scaled to [-1, 1) by the largest |value|
  and written as `bits`-bit two's complement, sign bit first (NeuroSim's `dec2bin`: the value
  floored to a multiple of 2**(1 - bits), clipped to the range)."""
  patches = np.asarray(patches, np.float64)  # (positions, rows)
  top = float(np.max(np.abs(patches))) if patches.size else 0.0
  q = np.floor(patches / (top or 1.0) * 2 ** (bits - 1))
  q = np.clip(q, -2 ** (bits - 1), 2 ** (bits - 1) - 1).astype(np.int64) % (2 ** bits)
  shifts = np.arange(bits - 1, -1, -1)
  digits = (q[:, :, None] >> shifts) & 1  # (positions, rows, bits), most significant first
  return np.transpose(digits, (1, 0, 2)).reshape(patches.shape[1], -1)


def layer_patches(layer: Any, entry: dict, x: np.ndarray) -> np.ndarray:
  """`(positions, cin * taps)` input patches of one image `x` (the layer's input without the
  batch axis), in NeuroSim's row order (channel-major, then kernel rows and columns)."""
  import tensorflow as tf
  kernel = entry["kernel_shape"]
  if entry["type"] == "Dense":
    return np.asarray(x, np.float64).reshape(-1, int(kernel[0]))
  config = introspection.unwrap(layer).get_config()
  if config.get("data_format", "channels_last") != "channels_last":
    raise NeuroSimError(f"layer {entry['name']!r}: data_format "
                        f"{config['data_format']!r}; valid: channels_last.")
  padding = config["padding"]
  x = np.asarray(x, np.float32)
  if entry["type"] == "Conv1D":
    kh, kw, cin = int(kernel[0]), 1, int(kernel[1])
    strides, rates = (int(config["strides"][0]), 1), (int(config["dilation_rate"][0]), 1)
    if padding == "causal":
      x = np.pad(x, (((kh - 1) * rates[0], 0), (0, 0)))
      padding = "valid"
    x = x[:, None, :]
  else:
    kh, kw, cin = int(kernel[0]), int(kernel[1]), int(kernel[2])
    strides = tuple(int(s) for s in config["strides"])
    rates = tuple(int(r) for r in config["dilation_rate"])
  patches = tf.image.extract_patches(
      x[None], sizes=[1, kh, kw, 1], strides=[1, *strides, 1], rates=[1, *rates, 1],
      padding=padding.upper()).numpy()  # (1, oh, ow, kh * kw * cin), order (i, j, c)
  patches = patches.reshape(-1, kh, kw, cin)
  return np.transpose(patches, (0, 3, 1, 2)).reshape(patches.shape[0], cin * kh * kw)


def layer_inputs(model: Any, names: list[str], sample: np.ndarray) -> list[np.ndarray]:
  """Each named layer's input for one image (`sample`, `(1, *input shape)`)."""
  keras = introspection.keras_module(introspection.flavour(model))
  layers = {introspection.unwrap(l).name: l for l in model.layers}
  probe = keras.Model(model.inputs[0], [layers[n].input for n in names])
  out = probe(np.asarray(sample, np.float32), training=False)
  out = out if isinstance(out, (list, tuple)) else [out]
  return [np.asarray(o)[0] for o in out]


def write(model: Any, mapping: CrossbarMapping, folder, sample: Any = None,
          input_bits: int = INPUT_BITS, seed: int = 0) -> None:
  """Writes `network.csv`, `crossbars.csv`, the weight and input file of every mapped layer and
  `run_neurosim.sh` into `folder`. `sample`: one input image `(1, *input shape)` (or `(N, ...)`,
  the first is used; NeuroSim's wrapper also writes the first image of its batch); None: a
  uniform random image in [0, 1) from `seed` (the files then run, but the activity NeuroSim
  estimates is that of noise)."""
  folder = pathlib.Path(folder)
  if len(model.inputs) != 1:
    raise NeuroSimError(f"model {model.name!r} has {len(model.inputs)} inputs; valid: one "
                        f"(NeuroSim simulates a chain of layers).")
  if isinstance(input_bits, bool) or not isinstance(input_bits, int) or not 1 <= input_bits <= 16:
    raise NeuroSimError(f"input_bits={input_bits!r} is invalid; valid: an integer 1..16.")
  shape = tuple(int(d) for d in model.inputs[0].shape[1:])
  if sample is None:
    sample = np.random.default_rng(seed).random((1, *shape), dtype=np.float32)
  sample = np.asarray(sample, np.float32)
  if sample.shape[1:] != shape or len(sample) == 0:
    raise NeuroSimError(f"sample: shape {sample.shape}; valid: (1, {', '.join(map(str, shape))}).")
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "network.csv").write_text(network_csv(model, mapping), encoding="utf-8")
  (folder / "crossbars.csv").write_text(crossbars_csv(mapping), encoding="utf-8")
  names = mapping.layer_names
  layers = {introspection.unwrap(l).name: l for l in model.layers}
  files = []
  for name, x in zip(names, layer_inputs(model, names, sample[:1])):
    layer, entry = layers[name], mapping.layer(name)
    kernel = introspection.unwrap(layer).get_weights()[0]
    weights, inputs = f"weight_{name}.csv", f"input_{name}.csv"
    (folder / weights).write_text(weight_csv(pruned_matrix(mapping, name, kernel)),
                                  encoding="utf-8")
    bits = input_bits_matrix(layer_patches(layer, entry, x), input_bits)
    out = io.StringIO()
    np.savetxt(out, bits, delimiter=",", fmt="%d")
    (folder / inputs).write_text(out.getvalue(), encoding="utf-8")
    files += [weights, inputs]
  spec = mapping.spec
  script = ("#!/bin/sh\n"
            "# NeuroSim V1.4: main NETWORK WEIGHT_BITS INPUT_BITS SUBARRAY_ROWS PARALLEL_ROWS "
            "(WEIGHT INPUT)...\n"
            "# NEUROSIM_MAIN: NeuroSim's compiled main (default ./NeuroSIM/main, from here)\n"
            'cd "$(dirname "$0")" || exit 1\n'
            f'exec "${{NEUROSIM_MAIN:-./NeuroSIM/main}}" network.csv {spec.weight_bits} '
            f"{input_bits} {spec.rows} {spec.rows} {' '.join(files)}\n")
  path = folder / "run_neurosim.sh"
  path.write_text(script, encoding="utf-8")
  path.chmod(0o755)
