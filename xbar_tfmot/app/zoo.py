"""Model zoo: the benchmark's networks, parameterised by input shape, classes and width.

Every builder takes `flavour` (`tf_keras` or `keras3`) so the same network can be pruned on
either Keras path. Layer names are stable (`conv1`, `fc1`, `stage2_block1_conv2`, ...) so
configs and policies can address them. Widths scale the channel counts (rounded, at least 1).

- `vgg8`: the paper's CIFAR VGG8 shape, six 3x3 convs (c, c, 2c, 2c, 4c, 4c; BN, ReLU, a
  2x2 max-pool after each pair) and two Dense layers (8c, classes); c = 64 at width 1.
- `vgg16`: configuration D (13 convs in five stages 64..512, then Dense 4096, 4096, classes),
  with BatchNorm; a stage's pool is skipped once the feature map is smaller than 2x2.
- `resnet20`: the CIFAR ResNet (16/32/64 channels, three stages of three basic blocks); a
  shortcut that changes shape is a 1x1 conv with BatchNorm (option B), so it maps too.
- `resnet18`: four stages of two basic blocks (64..512); inputs of 64 pixels and more get the
  ImageNet stem (7x7 stride 2 and a max-pool), smaller ones a 3x3 stride-1 stem.
- `mlp`: the image flattened, then Dense 300-100-classes (`fc1`..`fc3`, ReLU); LeCun's
  784-300-100-10 on Fashion-MNIST at width 1.
- `lenet5`: LeNet-5-like (ReLU and max-pools rather than tanh and subsampling): `conv1` 6 5x5
  (same padding, so 28x28 inputs keep the 28x28 map of LeNet's padded 32x32), a 2x2 pool,
  `conv2` 16 5x5 (valid; same once the map is under 5 pixels), a pool, Dense 120-84-classes.
- `mobilenet`: MobileNet-v1-like for small images: a 3x3 stem `conv1` (c, BN, ReLU), seven
  depthwise-separable blocks (`blockN_dw` a 3x3 DepthwiseConv2D, BN, ReLU; `blockN_pw` a 1x1
  Conv2D, BN, ReLU) of 2c, 4c/2, 4c, 8c/2, 8c, 16c/2, 16c channels (/2: the depthwise conv has
  stride 2), global average pooling and `fc`; c = 32 at width 1. The depthwise convs stay
  digital (not a vector-matrix product); the stem, the pointwise convs and `fc` are mapped.
- `conv1d`: a 1-D CNN that reads an (H, W, C) input as a sequence of H steps of W*C features
  (`Reshape` named `sequence`; Fashion-MNIST row by row: 28 steps of 28 pixels, "sequential
  Fashion-MNIST"; the digits: 8 steps of 8): `conv1`..`conv4` 3-tap Conv1D (c, c, 2c, 2c; BN,
  ReLU, a 2-step max-pool after each pair while the sequence is 2 steps or more), global
  average pooling, `fc1` (2c, ReLU) and `fc2`; c = 64 at width 1.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from xbar_tfmot.models.introspection import keras_module


def _width(channels: int, width: float) -> int:
  return max(1, int(round(channels * width)))


def _conv_bn_relu(L, x, filters: int, name: str, strides: int = 1, relu: bool = True):
  x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)
  x = L.BatchNormalization(name=f"{name}_bn")(x)
  return L.ReLU(name=f"{name}_relu")(x) if relu else x


def _vgg(K, inp, stages: Sequence[Sequence[int]], dense: Sequence[int], classes: int,
         dropout: float):
  L = K.layers
  x, n, size = inp, 0, min(inp.shape[1], inp.shape[2])
  for s, stage in enumerate(stages, start=1):
    for filters in stage:
      n += 1
      x = _conv_bn_relu(L, x, filters, f"conv{n}")
    if size >= 2:
      x = L.MaxPooling2D(2, name=f"pool{s}")(x)
      size //= 2
  x = L.Flatten(name="flatten")(x)
  for i, units in enumerate(dense, start=1):
    x = L.Dense(units, activation="relu", name=f"fc{i}")(x)
    if dropout:
      x = L.Dropout(dropout, name=f"fc{i}_dropout")(x)
  return L.Dense(classes, name=f"fc{len(dense) + 1}")(x)


def vgg8(K, inp, classes: int, width: float):
  c = [_width(64 * m, width) for m in (1, 2, 4)]
  return _vgg(K, inp, [[c[0]] * 2, [c[1]] * 2, [c[2]] * 2], [_width(512, width)], classes,
              dropout=0.0)


def vgg16(K, inp, classes: int, width: float):
  c = [_width(v, width) for v in (64, 128, 256, 512, 512)]
  stages = [[c[0]] * 2, [c[1]] * 2, [c[2]] * 3, [c[3]] * 3, [c[4]] * 3]
  return _vgg(K, inp, stages, [_width(4096, width)] * 2, classes, dropout=0.5)


def _basic_block(L, x, filters: int, strides: int, name: str):
  y = _conv_bn_relu(L, x, filters, f"{name}_conv1", strides=strides)
  y = _conv_bn_relu(L, y, filters, f"{name}_conv2", relu=False)
  if strides != 1 or x.shape[-1] != filters:
    x = L.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_shortcut")(x)
    x = L.BatchNormalization(name=f"{name}_shortcut_bn")(x)
  x = L.Add(name=f"{name}_add")([x, y])
  return L.ReLU(name=f"{name}_out")(x)


def _resnet(K, x, stages: Sequence[int], blocks: int, classes: int):
  L = K.layers
  for s, filters in enumerate(stages, start=1):
    for b in range(1, blocks + 1):
      strides = 2 if s > 1 and b == 1 else 1
      x = _basic_block(L, x, filters, strides, f"stage{s}_block{b}")
  x = L.GlobalAveragePooling2D(name="gap")(x)
  return L.Dense(classes, name="fc")(x)


def resnet20(K, inp, classes: int, width: float):
  x = _conv_bn_relu(K.layers, inp, _width(16, width), "conv1")
  return _resnet(K, x, [_width(c, width) for c in (16, 32, 64)], 3, classes)


def resnet18(K, inp, classes: int, width: float):
  L = K.layers
  filters = _width(64, width)
  if min(inp.shape[1], inp.shape[2]) >= 64:
    x = L.Conv2D(filters, 7, strides=2, padding="same", use_bias=False, name="conv1")(inp)
    x = L.BatchNormalization(name="conv1_bn")(x)
    x = L.ReLU(name="conv1_relu")(x)
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
  else:
    x = _conv_bn_relu(L, inp, filters, "conv1")
  return _resnet(K, x, [_width(c, width) for c in (64, 128, 256, 512)], 2, classes)


def mlp(K, inp, classes: int, width: float):
  L = K.layers
  x = L.Flatten(name="flatten")(inp)
  for i, units in enumerate((300, 100), start=1):
    x = L.Dense(_width(units, width), activation="relu", name=f"fc{i}")(x)
  return L.Dense(classes, name="fc3")(x)


def lenet5(K, inp, classes: int, width: float):
  L = K.layers
  size = min(inp.shape[1], inp.shape[2])
  x = L.Conv2D(_width(6, width), 5, padding="same", activation="relu", name="conv1")(inp)
  if size >= 2:
    x = L.MaxPooling2D(2, name="pool1")(x)
    size //= 2
  padding = "valid" if size >= 5 else "same"
  x = L.Conv2D(_width(16, width), 5, padding=padding, activation="relu", name="conv2")(x)
  size = size - 4 if padding == "valid" else size
  if size >= 2:
    x = L.MaxPooling2D(2, name="pool2")(x)
  x = L.Flatten(name="flatten")(x)
  for i, units in enumerate((120, 84), start=1):
    x = L.Dense(_width(units, width), activation="relu", name=f"fc{i}")(x)
  return L.Dense(classes, name="fc3")(x)


# MobileNet-like blocks for small images: (pointwise channels in units of the stem's, stride).
MOBILENET_BLOCKS = ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1), (16, 2), (16, 1))


def _separable_block(L, x, filters: int, strides: int, name: str):
  """DepthwiseConv2D 3x3 (digital), BN, ReLU, then the 1x1 pointwise Conv2D (mapped), BN, ReLU."""
  x = L.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
  x = L.BatchNormalization(name=f"{name}_dw_bn")(x)
  x = L.ReLU(name=f"{name}_dw_relu")(x)
  x = L.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
  x = L.BatchNormalization(name=f"{name}_pw_bn")(x)
  return L.ReLU(name=f"{name}_pw_relu")(x)


def mobilenet(K, inp, classes: int, width: float):
  L = K.layers
  x = _conv_bn_relu(L, inp, _width(32, width), "conv1")
  for b, (multiple, strides) in enumerate(MOBILENET_BLOCKS, start=1):
    x = _separable_block(L, x, _width(32 * multiple, width), strides, f"block{b}")
  x = L.GlobalAveragePooling2D(name="gap")(x)
  return L.Dense(classes, name="fc")(x)


def conv1d(K, inp, classes: int, width: float):
  L = K.layers
  steps, features = int(inp.shape[1]), int(inp.shape[2]) * int(inp.shape[3])
  x = L.Reshape((steps, features), name="sequence")(inp)
  c = _width(64, width)
  for n, filters in enumerate((c, c, 2 * c, 2 * c), start=1):
    x = L.Conv1D(filters, 3, padding="same", use_bias=False, name=f"conv{n}")(x)
    x = L.BatchNormalization(name=f"conv{n}_bn")(x)
    x = L.ReLU(name=f"conv{n}_relu")(x)
    if n % 2 == 0 and steps >= 2:
      x = L.MaxPooling1D(2, name=f"pool{n // 2}")(x)
      steps //= 2
  x = L.GlobalAveragePooling1D(name="gap")(x)
  x = L.Dense(2 * c, activation="relu", name="fc1")(x)
  return L.Dense(classes, name="fc2")(x)


BUILDERS: dict[str, Callable[..., Any]] = {
    "vgg8": vgg8, "vgg16": vgg16, "resnet20": resnet20, "resnet18": resnet18, "mlp": mlp,
    "lenet5": lenet5, "mobilenet": mobilenet, "conv1d": conv1d}


def build_model(name: str, input_shape: Sequence[int], classes: int, width: float = 1.0,
                flavour: str = "tf_keras", seed: int | None = None) -> Any:
  """A zoo model (uncompiled), `name` one of `BUILDERS`, input NHWC without the batch axis.

  `seed` seeds Keras' initialisers (`keras.utils.set_random_seed`), so a rebuild is identical.
  """
  if name not in BUILDERS:
    raise ValueError(f"model {name!r} is unknown; valid: {', '.join(sorted(BUILDERS))}.")
  shape = tuple(int(d) for d in input_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"model {name}: input_shape={tuple(input_shape)} is invalid; valid: "
                     f"(height, width, channels), all positive.")
  if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
    raise ValueError(f"model {name}: classes={classes!r} is invalid; valid: an integer >= 2.")
  if not width > 0:
    raise ValueError(f"model {name}: width={width!r} is invalid; valid: a number > 0.")
  K = keras_module(flavour)
  if seed is not None:
    K.utils.set_random_seed(seed)
  inp = K.layers.Input(shape, name="image")
  out = BUILDERS[name](K, inp, classes, width)
  return K.Model(inp, out, name=name)
