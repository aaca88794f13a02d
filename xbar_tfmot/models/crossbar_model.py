"""The crossbar-explicit model: the executable proof that a mapping is right (docs/design.md, "Output recombination").

`crossbar_model(model, mapping)` rewrites a model one-to-one (`clone_model` with a
`clone_function`, tf_keras and Keras 3 alike): each mapped layer becomes a `CrossbarLayer`
holding only the packed crossbar weights, a `(n_crossbars, rows_used, kout)` tensor. Its
output is the sum over crossbars of every column's partial sum, added into the output channel
that column feeds; then bias and activation. No converter sits between the partial sums, so
the sum is linear and is computed as Keras computes the layer: every cell's weight is added
into the kernel at its row's input index and its column's output channel (`crossbar_kernel`),
then one convolution (or matmul), near plain Keras' speed. Its output equals the pruned
layer's to float tolerance if, and only if, every non-zero weight sits in exactly one
crossbar cell of the mapping (a weight in two cells counts twice, one in none is missing).

Where converters do sit between the partial sums (the analog model), the crossbars that read
the same input rows are computed together (`RowGroups`: each input group gathered once, all
its crossbars' columns from one product), and a convolution whose groups are read whole is
one convolution of the image (`ConvReader`, no patch materialised). A SeparableConv2D's
depthwise part stays digital: its `CrossbarLayer` first runs the depthwise convolution
(`tf.nn.depthwise_conv2d` with the layer's strides, padding and dilation), then the pointwise
kernel on crossbars as a 1x1 convolution.

The layer's maths uses TensorFlow ops, so a Keras 3 model needs the TensorFlow backend.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from xbar_tfmot.core import crossbar_matmul
from xbar_tfmot.core import mapping as mapping_lib
from xbar_tfmot.core.errors import ModelError, XbarError
from xbar_tfmot.models import introspection
from xbar_tfmot.models.model_mapping import validate_mapping

POINTWISE = {"strides": (1, 1), "padding": "valid", "dilation_rate": (1, 1)}


class DigitalPartError(XbarError, ValueError):
  """A layer computed crossbar by crossbar has a digital part the replacing layer omits."""


def patch_index(kernel_shape: tuple[int, ...]) -> np.ndarray:
  """For each channel-major matrix row `c*taps + t`, its index in an extracted patch, which
  TensorFlow orders tap-major (`t*cin + c`)."""
  cin = kernel_shape[-2]
  taps = int(np.prod(kernel_shape[:-2], dtype=np.int64))
  rows = np.arange(cin * taps)
  return (rows % taps) * cin + rows // taps


def causal_padded(x: tf.Tensor, padding: str, size: int, dilation: int) -> tuple[tf.Tensor, str]:
  """A causal Conv1D's input left-padded by `(size - 1) * dilation` zeros, then 'valid';
  any other padding as it is."""
  if padding != "causal":
    return x, padding
  return tf.pad(x, [[0, 0], [(size - 1) * dilation, 0], [0, 0]]), "valid"


def extract_patches(x: tf.Tensor, kind: str, kernel_shape, strides, padding: str,
                    dilation_rate) -> tf.Tensor:
  """`(..., cin*taps)` tap-major patches of a Conv2D/Conv1D input (channels_last)."""
  if kind == "Dense":
    return x
  if kind == "Conv1D":
    x, padding = causal_padded(x, padding, kernel_shape[0], dilation_rate[0])
    x = x[:, None]
    sizes, strides, rates = (1, kernel_shape[0]), (1, strides[0]), (1, dilation_rate[0])
  else:
    sizes, rates = kernel_shape[:2], dilation_rate
  patches = tf.image.extract_patches(
      x, sizes=[1, *sizes, 1], strides=[1, *strides, 1], rates=[1, *rates, 1],
      padding=padding.upper())
  return patches[:, 0] if kind == "Conv1D" else patches


def crossbar_kernel(weights, rows: np.ndarray, columns: np.ndarray, kernel_shape) -> tf.Tensor:
  """The kernel the crossbar cells hold: each cell's weight added at its matrix row (in the
  kernel's tap-major order) and its column's output channel; unused rows and columns dropped.
  A weight held by two cells counts twice, one held by none is missing."""
  kernel_shape = tuple(int(d) for d in kernel_shape)
  depth, cout = int(np.prod(kernel_shape[:-1], dtype=np.int64)), kernel_shape[-1]
  used = (rows[:, :, None] >= 0) & (columns[:, None, :] >= 0)  # (n, r, c)
  target = (patch_index(kernel_shape)[np.maximum(rows, 0)][:, :, None] * cout
            + np.maximum(columns, 0)[:, None, :])
  cells = tf.gather(tf.reshape(weights, [-1]), np.flatnonzero(used))
  kernel = tf.math.unsorted_segment_sum(cells, target[used], depth * cout)
  return tf.reshape(kernel, kernel_shape)


def kernel_forward(x: tf.Tensor, kernel: tf.Tensor, kind: str, conv: dict) -> tf.Tensor:
  """A Dense or convolution layer's product with `kernel`, as Keras computes it."""
  if kind == "Dense":
    return crossbar_matmul.contract_last(x, tf.cast(kernel, x.dtype), 1)
  x, padding = causal_padded(x, conv["padding"], int(kernel.shape[0]),
                             conv["dilation_rate"][0])
  return tf.nn.convolution(x, tf.cast(kernel, x.dtype), strides=list(conv["strides"]),
                           padding=padding.upper(), dilations=list(conv["dilation_rate"]))


def input_index(kernel_shape, rows: np.ndarray) -> np.ndarray:
  """`(n, r)` the index in an extracted patch each crossbar row reads; unused rows (-1) read
  the zero appended after the patch (index `depth`)."""
  depth = int(np.prod(kernel_shape[:-1], dtype=np.int64))
  return np.where(rows >= 0, patch_index(kernel_shape)[np.maximum(rows, 0)], depth)


def row_groups(kernel_shape, rows: np.ndarray) -> crossbar_matmul.RowGroups:
  """The crossbars of a layer grouped by the input rows they read."""
  return crossbar_matmul.RowGroups(input_index(kernel_shape, rows),
                                   int(np.prod(kernel_shape[:-1], dtype=np.int64)))


def gather_inputs(x, kind, kernel_shape, reader, conv: dict) -> tf.Tensor:
  """The input of `reader.products` for a layer input: the image itself for a `ConvReader`,
  else its patches (Dense: the input itself) read per group or whole (`RowGroups`)."""
  if isinstance(reader, ConvReader):
    return x
  return reader.inputs(x if kind == "Dense" else extract_patches(x, kind, kernel_shape, **conv))


class ConvReader:
  """Reads a convolution's input as images: each crossbar group's sums (`RowGroups.products`
  on extracted patches) as one convolution of the channels the group reads, with the group's
  laid-out weights placed in a kernel at their taps (patch rows are tap-major, the kernel's
  own order; a tap the group does not read holds zeros), so no patch is materialised. Takes
  the layer input itself (`gather_inputs`); `weights`, `products` and `row_sums` as
  `RowGroups`, whose patch reader stays at `patches` (ADC calibration samples patch rows)."""

  def __init__(self, groups: crossbar_matmul.RowGroups, kind: str, kernel_shape, conv: dict):
    self.patches, self.kind, self.conv = groups, kind, conv
    self.window = tuple(int(d) for d in kernel_shape[:-2])
    self.cin = int(kernel_shape[-2])
    taps = int(np.prod(self.window, dtype=np.int64))
    self.parts = []  # per group: (channels read, kernel row of each group row)
    # (taps, cin, G): how many times each group reads each tap and channel (`row_sums`)
    ones = np.zeros((taps, self.cin, len(groups.index)), np.float32)
    for g, rows in enumerate(groups.index):
      used = rows < groups.depth
      # a group that reads no row reads channel 0 through a zero kernel (no empty tensor)
      channels = np.unique(rows[used] % self.cin) if used.any() else np.zeros(1, np.int64)
      place = np.where(used, (rows // self.cin) * len(channels)
                       + np.searchsorted(channels, rows % self.cin), -1)
      self.parts.append((channels, place))
      np.add.at(ones, (rows[used] // self.cin, rows[used] % self.cin, g), 1.0)
    self.ones = ones.reshape(*self.window, self.cin, -1)

  def waste(self) -> float:
    """Multiply-accumulates of the convolutions over those of the groups' rows (>= 1)."""
    taps = int(np.prod(self.window, dtype=np.int64))
    useful = max(int((self.patches.index < self.patches.depth).sum()), 1)
    return sum(taps * len(channels) for channels, _ in self.parts) / useful

  def weights(self, weights) -> list[tf.Tensor]:
    laid = self.patches.weights(weights)  # (G, r', slots * c)
    kernels = []
    for g, (channels, place) in enumerate(self.parts):
      keep = np.flatnonzero(place >= 0)
      size = int(np.prod(self.window, dtype=np.int64)) * len(channels)
      kernel = tf.scatter_nd(place[keep][:, None], tf.gather(laid[g], keep),
                             (size, int(laid.shape[-1])))
      kernels.append(tf.reshape(kernel, (*self.window, len(channels), -1)))
    return kernels

  def _channels(self, x: tf.Tensor, channels: np.ndarray) -> tf.Tensor:
    """The channels a group reads: all, a slice where they are contiguous, else a gather."""
    if len(channels) == self.cin:
      return x
    if channels[-1] - channels[0] + 1 == len(channels):
      return x[..., int(channels[0]):int(channels[-1]) + 1]
    return tf.gather(x, channels, axis=-1)

  def products(self, inputs: tf.Tensor, kernels, each=None) -> tf.Tensor:
    """As `RowGroups.products`, `each` applied to every group's convolution as it comes."""
    slots = self.patches.slots
    outs = []
    for g, ((channels, _), kernel) in enumerate(zip(self.parts, kernels)):
      out = kernel_forward(self._channels(inputs, channels), kernel, self.kind, self.conv)
      outs.append(out if each is None else each(out, slice(g * slots, (g + 1) * slots)))
    return self.patches.split(outs[0] if len(outs) == 1 else tf.concat(outs, axis=-1))

  def row_sums(self, values: tf.Tensor) -> tf.Tensor:
    """`values` (an image) -> `(..., n)` each crossbar's sum over its rows: one convolution
    of every channel, whose kernel counts the taps and channels each group reads."""
    sums = kernel_forward(values, tf.constant(self.ones, values.dtype), self.kind, self.conv)
    return tf.gather(sums, self.patches.member, axis=-1)


# A convolution is read as images (`ConvReader`) where that multiplies at most this many times
# the multiply-accumulates of its crossbars' rows (taps a group does not read cost zeros).
CONV_WASTE_LIMIT = 2.0


def layer_reader(kind: str, kernel_shape, rows: np.ndarray, conv: dict):
  """How a mapped layer's crossbars read its input: a `ConvReader` for a convolution whose
  groups read few more taps than their rows, else `RowGroups` on patches."""
  if kind != "Dense":
    index = input_index(kernel_shape, rows)
    depth = int(np.prod(kernel_shape[:-1], dtype=np.int64))
    reader = ConvReader(crossbar_matmul.RowGroups(index, depth, whole_limit=0.0), kind,
                        kernel_shape, conv)
    if reader.waste() <= CONV_WASTE_LIMIT:
      return reader
  return row_groups(kernel_shape, rows)


def scatter_columns(partial: tf.Tensor, columns: np.ndarray, cout: int) -> tf.Tensor:
  """Adds each crossbar column `(..., n, kout)` into its output channel: `(..., cout)`."""
  batch_shape = tf.shape(partial)[:-2]
  flat = tf.reshape(partial, tf.concat([batch_shape, [-1]], 0))
  rank = len(partial.shape) - 1
  target = np.where(columns >= 0, columns, cout).reshape(-1)
  moved = tf.transpose(flat, [rank - 1, *range(rank - 1)])
  summed = tf.math.unsorted_segment_sum(moved, target, cout + 1)[:cout]
  return tf.transpose(summed, [*range(1, rank), 0])


@functools.lru_cache(maxsize=None)
def layer_class(flavour: str):
  """`CrossbarLayer` for the given Keras flavour (`tf_keras` or `keras3`)."""
  K = introspection.keras_module(flavour)

  class CrossbarLayer(K.layers.Layer):
    """A mapped layer computed crossbar by crossbar from its packed weights."""

    computes_digital_parts = True  # runs a separable convolution's depthwise part

    def __init__(self, kind: str, kernel_shape, crossbar_rows, crossbar_columns,
                 strides=(1, 1), padding="valid", dilation_rate=(1, 1), activation=None,
                 use_bias=False, depthwise=None, **kwargs):
      super().__init__(**kwargs)
      self.kind = kind
      self.kernel_shape = tuple(int(d) for d in kernel_shape)
      self.crossbar_rows = np.asarray(crossbar_rows, np.int64)
      self.crossbar_columns = np.asarray(crossbar_columns, np.int64)
      self.conv = {"strides": tuple(strides), "padding": padding,
                   "dilation_rate": tuple(dilation_rate)}
      self.activation = K.activations.get(activation)
      self.use_bias = use_bias
      # {kernel_shape, strides, padding, dilation_rate} of a digital depthwise stage, or None
      self.depthwise = None if depthwise is None else {
          "kernel_shape": tuple(int(d) for d in depthwise["kernel_shape"]),
          "strides": tuple(depthwise["strides"]), "padding": depthwise["padding"],
          "dilation_rate": tuple(depthwise["dilation_rate"])}
      self._initial = None

    def set_initial_weights(self, crossbar_weights, bias=None, depthwise_kernel=None) -> None:
      self._initial = (np.asarray(crossbar_weights), None if bias is None else np.asarray(bias),
                       None if depthwise_kernel is None else np.asarray(depthwise_kernel))

    def build(self, input_shape):
      n, rows_used = self.crossbar_rows.shape
      shape = (n, rows_used, self.crossbar_columns.shape[1])
      init = self._initial
      self.crossbars = self.add_weight(
          name="crossbars", shape=shape, trainable=True,
          initializer=(lambda shape, dtype=None: tf.constant(init[0], dtype)) if init else "zeros")
      self.depthwise_kernel = None
      if self.depthwise is not None:
        self.depthwise_kernel = self.add_weight(
            name="depthwise_kernel", shape=self.depthwise["kernel_shape"], trainable=True,
            initializer=(lambda shape, dtype=None: tf.constant(init[2], dtype)) if init else "zeros")
      self.bias = None
      if self.use_bias:
        self.bias = self.add_weight(
            name="bias", shape=(self.kernel_shape[-1],), trainable=True,
            initializer=(lambda shape, dtype=None: tf.constant(init[1], dtype)) if init else "zeros")
      super().build(input_shape)

    def call(self, inputs):
      if self.depthwise is not None:
        inputs = depthwise_forward(inputs, self.depthwise_kernel, self.depthwise)
      kernel = crossbar_kernel(self.crossbars, self.crossbar_rows, self.crossbar_columns,
                               self.kernel_shape)
      out = kernel_forward(inputs, kernel, self.kind, self.conv)
      if self.bias is not None:
        out = out + self.bias
      return self.activation(out) if self.activation is not None else out

    def compute_output_shape(self, input_shape):
      if self.depthwise is not None:
        input_shape = output_shape(input_shape, "Conv2D", self.depthwise["kernel_shape"],
                                   self.depthwise)
        input_shape = (*input_shape[:-1], self.kernel_shape[-2])
      return output_shape(input_shape, self.kind, self.kernel_shape, self.conv)

    def get_config(self):
      config = super().get_config()
      config.update(
          kind=self.kind, kernel_shape=list(self.kernel_shape),
          crossbar_rows=self.crossbar_rows.tolist(),
          crossbar_columns=self.crossbar_columns.tolist(),
          activation=K.activations.serialize(self.activation), use_bias=self.use_bias,
          strides=list(self.conv["strides"]), padding=self.conv["padding"],
          dilation_rate=list(self.conv["dilation_rate"]),
          depthwise=None if self.depthwise is None else {
              k: v if k == "padding" else list(v) for k, v in self.depthwise.items()})
      return config

  CrossbarLayer.__name__ = CrossbarLayer.__qualname__ = "CrossbarLayer"
  return CrossbarLayer


def depthwise_forward(x: tf.Tensor, kernel, depthwise: dict) -> tf.Tensor:
  """A separable convolution's digital depthwise part, as Keras computes it (channels_last)."""
  return tf.nn.depthwise_conv2d(
      x, tf.cast(kernel, x.dtype), strides=[1, *depthwise["strides"], 1],
      padding=depthwise["padding"].upper(), dilations=list(depthwise["dilation_rate"]))


def explicit_layer(layer: Any, mapping: mapping_lib.CrossbarMapping):
  """The `CrossbarLayer` replacing mapped `layer` (possibly wrapped) under `mapping`."""
  inner = introspection.unwrap(layer)
  pack = mapping.packing(inner.name)
  kernel = introspection.effective_kernel(layer)
  config = inner.get_config()
  if config.get("data_format", "channels_last") != "channels_last":
    raise ModelError(f"layer {inner.name!r}: data_format={config['data_format']!r} is not "
                     f"supported by the crossbar-explicit model; valid: channels_last.")
  kind = pack.geometry.kind
  conv = {} if kind == "Dense" else {
      "strides": config["strides"], "padding": config["padding"],
      "dilation_rate": config["dilation_rate"]}
  depthwise = depthwise_kernel = None
  if introspection.digital_part(inner):
    depthwise_kernel = np.asarray(inner.depthwise_kernel)
    depthwise = {"kernel_shape": depthwise_kernel.shape, **conv}
    conv = POINTWISE
  cls = layer_class(introspection.flavour(inner))
  out = cls(kind, pack.geometry.kernel_shape, pack.crossbar_rows(), pack.columns,
            activation=inner.activation, use_bias=bool(getattr(inner, "use_bias", False)),
            name=inner.name, dtype=inner.dtype, depthwise=depthwise,
            **{k: tuple(v) if k != "padding" else v for k, v in conv.items()})
  bias = np.asarray(inner.bias) if getattr(inner, "use_bias", False) else None
  out.set_initial_weights(pack.crossbar_weights(kernel), bias, depthwise_kernel)
  return out


def crossbar_model(model: Any, mapping: mapping_lib.CrossbarMapping) -> Any:
  """A copy of `model` whose mapped layers compute crossbar by crossbar (see module doc).

  The mapping is first validated against the model, so a wrong mapping fails with the path
  of the first bad field rather than with a silently different output.
  """
  validate_mapping(mapping, model)
  return replace_mapped_layers(model, mapping.layer_names,
                               lambda layer, index: explicit_layer(layer, mapping),
                               layer_class(introspection.flavour(model)))


def replace_mapped_layers(model: Any, names, make: Callable[[Any, int], Any],
                          replaced: type) -> Any:
  """A copy of `model` in which each layer named in `names` is `make(layer, its index in
  names)` (an instance of `replaced`) and every other layer a fresh copy with its weights.

  A partly mapped layer (SeparableConv2D) is refused unless `replaced` computes its digital
  part (`computes_digital_parts`), so no replacement silently drops the depthwise step.
  """
  K = introspection.keras_module(introspection.flavour(model))
  order = {name: i for i, name in enumerate(names)}

  def clone(layer):
    inner = introspection.unwrap(layer)
    name = inner.name
    if name in order:
      if (introspection.digital_part(inner)
          and not getattr(replaced, "computes_digital_parts", False)):
        raise DigitalPartError(
            f"layer {name!r} ({type(inner).__name__}): {replaced.__name__} computes only what "
            f"crossbars hold, so it would drop the layer's digital part "
            f"({introspection.digital_part(inner)}); valid here: Conv2D, Conv1D and Dense layers "
            f"(crossbar_model computes separable convolutions).")
      return make(layer, order[name])
    return layer.__class__.from_config(layer.get_config())

  copy = K.models.clone_model(model, clone_function=clone)
  for old, new in zip(model.layers, copy.layers):
    if not isinstance(new, replaced) and old.weights:
      new.set_weights(old.get_weights())
  return copy


def output_shape(input_shape, kind: str, kernel_shape, conv: dict) -> tuple:
  """The output shape of a Dense or convolution layer given as kind, kernel shape and conv
  arguments (`strides`, `dilation_rate`, `padding`)."""
  cout = kernel_shape[-1]
  if kind == "Dense":
    return (*input_shape[:-1], cout)
  dims = []
  for size, k, s, d in zip(input_shape[1:-1], kernel_shape[:-2], conv["strides"],
                           conv["dilation_rate"]):
    if size is None:
      dims.append(None)
    elif conv["padding"] in ("same", "causal"):
      dims.append(-(-size // s))
    else:
      dims.append(-(-(size - (k - 1) * d) // s))
  return (input_shape[0], *dims, cout)
