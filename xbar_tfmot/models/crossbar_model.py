"""The crossbar-explicit model: the executable proof that a mapping is right (docs/design.md, "Output recombination").

`crossbar_model(model, mapping)` rewrites a model one-to-one (`clone_model` with a
`clone_function`, tf_keras and Keras 3 alike): each mapped layer becomes a `CrossbarLayer`
holding only the packed crossbar weights, a `(n_crossbars, rows_used, kout)` tensor. For an
input it extracts the patches of the layer (Conv2D/Conv1D; the input itself for Dense), gathers
each crossbar's input rows, computes every crossbar's partial sums with one batched matmul,
and scatter-adds each column's partial sum into the output channel that column feeds; then
bias and activation. Its output equals the pruned layer's to float tolerance if, and only if,
every non-zero weight sits in exactly one crossbar cell of the mapping. A SeparableConv2D's
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


def extract_patches(x: tf.Tensor, kind: str, kernel_shape, strides, padding: str,
                    dilation_rate) -> tf.Tensor:
  """`(..., cin*taps)` tap-major patches of a Conv2D/Conv1D input (channels_last)."""
  if kind == "Dense":
    return x
  if kind == "Conv1D":
    if padding == "causal":
      x = tf.pad(x, [[0, 0], [(kernel_shape[0] - 1) * dilation_rate[0], 0], [0, 0]])
      padding = "valid"
    x = x[:, None]
    sizes, strides, rates = (1, kernel_shape[0]), (1, strides[0]), (1, dilation_rate[0])
  else:
    sizes, rates = kernel_shape[:2], dilation_rate
  patches = tf.image.extract_patches(
      x, sizes=[1, *sizes, 1], strides=[1, *strides, 1], rates=[1, *rates, 1],
      padding=padding.upper())
  return patches[:, 0] if kind == "Conv1D" else patches


def crossbar_forward(x: tf.Tensor, weights: tf.Tensor, rows: np.ndarray, columns: np.ndarray,
                     kind: str, kernel_shape, cout: int, conv: dict) -> tf.Tensor:
  """Sum over crossbars of their partial sums, scattered into `cout` output channels."""
  partial = crossbar_matmul.per_crossbar(gather_inputs(x, kind, kernel_shape, rows, conv),
                                         weights)
  return scatter_columns(partial, columns, cout)


def gather_inputs(x, kind, kernel_shape, rows: np.ndarray, conv: dict) -> tf.Tensor:
  """`(..., n, rows_used)`: the input each crossbar row sees (0 for unused rows, -1)."""
  patches = x if kind == "Dense" else extract_patches(x, kind, kernel_shape, **conv)
  depth = int(np.prod(kernel_shape[:-1]))
  patches = tf.concat([patches, tf.zeros_like(patches[..., :1])], axis=-1)
  index = np.where(rows >= 0, patch_index(kernel_shape)[rows], depth)
  return tf.gather(patches, index, axis=-1)


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
      out = crossbar_forward(inputs, self.crossbars, self.crossbar_rows, self.crossbar_columns,
                             self.kind, self.kernel_shape, self.kernel_shape[-1], self.conv)
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
