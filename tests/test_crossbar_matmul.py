"""core.crossbar_matmul: the crossbar products equal numpy's on every shape (leading axes of
size 1 included: the shapes oneDNN's broadcasting batched matmul gets wrong on AVX-512), and
the crossbar-explicit and analog models hand TensorFlow only plain matmuls."""

import _models
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from xbar_tfmot.core import crossbar_matmul
from xbar_tfmot.core.hardware import HardwareSpec
from xbar_tfmot.core.spec import CrossbarSpec
from xbar_tfmot.models import analog_model as am
from xbar_tfmot.models.crossbar_model import crossbar_model
from xbar_tfmot.models.model_mapping import build_mapping

LEAD = st.lists(st.sampled_from([1, 2, 5]), min_size=0, max_size=3)


@settings(max_examples=40, deadline=None)
@given(lead=LEAD, n=st.integers(1, 3), r=st.integers(1, 20), c=st.integers(1, 20),
       seed=st.integers(0, 2**16))
def test_per_crossbar_equals_numpy(lead, n, r, c, seed):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((*lead, n, r)).astype(np.float32)
  w = rng.standard_normal((n, r, c)).astype(np.float32)
  out = crossbar_matmul.per_crossbar(tf.constant(x), tf.constant(w)).numpy()
  np.testing.assert_allclose(out, np.einsum("...nr,nrc->...nc", x, w), rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(lead=LEAD, table=st.lists(st.integers(1, 4), min_size=2, max_size=3),
       axes=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_contract_last_equals_numpy(lead, table, axes, seed):
  rng = np.random.default_rng(seed)
  lead = [5, 1, 16, *lead]  # (5, 1, 16, ...) contracted with a table: the crash's shape
  x = rng.standard_normal((*lead, *table[:axes])).astype(np.float32)
  t = rng.standard_normal(table).astype(np.float32)
  out = crossbar_matmul.contract_last(tf.constant(x), tf.constant(t), axes).numpy()
  np.testing.assert_allclose(out, np.tensordot(x, t, axes), rtol=1e-4, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(lead=LEAD, n=st.integers(1, 6), r=st.integers(1, 5), c=st.integers(1, 3),
       depth=st.integers(1, 9), kinds=st.integers(1, 3), limit=st.sampled_from([0.0, 2.0, 99.0]),
       seed=st.integers(0, 2**16))
def test_row_groups_equal_crossbar_by_crossbar(lead, n, r, c, depth, kinds, limit, seed):
  """Crossbars grouped by the rows they read (either layout) give each crossbar's own product
  and row sums, in crossbar order; `depth` reads zero (unused rows)."""
  rng = np.random.default_rng(seed)
  kinds = rng.integers(0, depth + 1, size=(kinds, r))  # a few row sets, some rows unused
  index = kinds[rng.integers(0, len(kinds), size=n)]
  groups = crossbar_matmul.RowGroups(index, depth, whole_limit=limit)
  x = rng.standard_normal((*lead, depth + 1)).astype(np.float32)
  x[..., depth] = 0.0
  w = rng.standard_normal((n, r, c)).astype(np.float32)
  inputs = groups.inputs(tf.constant(x[..., :depth]))
  got = groups.products(inputs, groups.weights(tf.constant(w))).numpy()
  np.testing.assert_allclose(got, np.einsum("...nr,nrc->...nc", x[..., index], w),
                             rtol=1e-4, atol=1e-4)
  sums = groups.row_sums(tf.square(inputs)).numpy()
  np.testing.assert_allclose(sums, np.square(x[..., index]).sum(-1), rtol=1e-4, atol=1e-4)
  if limit != 2.0:  # both layouts are exercised
    assert groups.whole == (limit == 99.0 and bool((index != depth).any()))


@settings(max_examples=30, deadline=None)
@given(conv1d=st.booleans(), kernel=st.integers(1, 3), cin=st.integers(1, 3),
       stride=st.integers(1, 2), padding=st.sampled_from(["same", "valid", "causal"]),
       dilation=st.integers(1, 2), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_conv_reader_equals_patch_products(conv1d, kernel, cin, stride, padding, dilation, n,
                                           seed):
  """A convolution read whole (`ConvReader`) gives the patch products and row sums of its
  `RowGroups`, whatever the strides, padding and dilation."""
  from xbar_tfmot.models import crossbar_model as cm
  if padding == "causal" and not conv1d:
    padding = "same"
  if stride > 1 and dilation > 1:
    dilation = 1
  rng = np.random.default_rng(seed)
  window = (kernel,) if conv1d else (kernel, kernel)
  kernel_shape = (*window, cin, 2)
  depth = int(np.prod(kernel_shape[:-1]))
  rows = np.stack([rng.permutation(depth) for _ in range(n)])  # distinct rows, any order
  rows[rng.random(rows.shape) < 0.3] = -1  # unused rows, so some groups skip taps or channels
  rows[:, 0] = rng.integers(0, depth, n)
  rows[rng.random(n) < 0.5] = rows[0]  # crossbars that share their rows
  conv = {"strides": (stride,) * len(window), "padding": padding,
          "dilation_rate": (dilation,) * len(window)}
  kind = "Conv1D" if conv1d else "Conv2D"
  groups = crossbar_matmul.RowGroups(cm.input_index(kernel_shape, rows), depth, whole_limit=0)
  reader = cm.ConvReader(groups, kind, kernel_shape, conv)
  x = tf.constant(rng.standard_normal((2, *(7,) * len(window), cin)).astype(np.float32))
  w = tf.constant(rng.standard_normal((n, depth, 3)).astype(np.float32))
  patches = cm.gather_inputs(x, kind, kernel_shape, groups, conv)
  np.testing.assert_allclose(reader.products(x, reader.weights(w)).numpy(),
                             groups.products(patches, groups.weights(w)).numpy(),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(reader.row_sums(tf.square(x)).numpy(),
                             groups.row_sums(tf.square(patches)).numpy(), rtol=1e-4, atol=1e-4)


def _matmuls(model, x):
  """`(op type, input shapes)` of every matmul-like op in the traced model."""
  graph = tf.function(lambda b: model(b, training=False)).get_concrete_function(
      tf.TensorSpec((None, *x.shape[1:]), tf.float32)).graph
  return [(op.type, [tuple(i.shape.as_list()) if i.shape.rank is not None else None
                     for i in op.inputs])
          for op in graph.get_operations() if "MatMul" in op.type or op.type == "Einsum"]


@pytest.mark.parametrize("flavour", _models.FLAVOURS)
def test_models_run_only_plain_matmuls(flavour):
  """No einsum, no batched matmul above rank 3, no broadcasting over batch axes: oneDNN's
  kernel for those corrupts memory on some CPUs (docs/reliability.md)."""
  spec = CrossbarSpec(rows=36, cols=8, weight_bits=4, cell_bits=2, differential=True)
  model = _models.vgg(flavour)
  _models.prune(model, spec, 0.5, "column")
  mapping = build_mapping(model, spec, "column")
  x = _models.random_inputs(model, n=5)
  chips = [crossbar_model(model, mapping),
           am.analog_model(model, mapping, HardwareSpec(quantize_weights=False), 0),
           am.analog_model(model, mapping, HardwareSpec(input_bits=8, adc_bits=8), 0, x),
           am.analog_model(model, mapping, HardwareSpec(input_bits=8, dac_bits=4, adc_bits=8,
                                                        bit_serial=True, read_noise=0.01), 0, x)]
  for chip in chips:
    ops = _matmuls(chip, x)
    assert ops, "no matmul traced: the check would pass vacuously"
    for kind, shapes in ops:
      assert kind in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"), (kind, shapes)
      assert all(s is not None and len(s) <= 3 for s in shapes), (kind, shapes)
      if kind != "MatMul":
        assert len(shapes[0]) == len(shapes[1]) == 3 and shapes[0][0] == shapes[1][0], shapes
