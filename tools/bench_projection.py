"""Projection speed vs one pass of `reduce_sum(square(w))` over the same kernels.

Projects every mapped layer of Keras VGG16 and ResNet50 (weights=None) onto a budget of 30%
of its dense crossbars (both granularities, exact and sampled) inside one `tf.function`, and
times it beside a `tf.function` that only sums the squares of the same kernels, and beside
the column-grain projection as it was before the threshold selection (`old column`: a full
sort with indices and a scatter, kept here as the reference). Calls are interleaved over
`--repeats` rounds so that load on a shared machine hits all alike; the table gives the
median, the spread (min..max) and the ratio of the medians to the energy pass.

  .venv/bin/python tools/bench_projection.py [--crossbar 128x128] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from xbar_tfmot.core import projection  # noqa: E402
from xbar_tfmot.core.spec import CrossbarSpec  # noqa: E402
from xbar_tfmot.models import introspection  # noqa: E402


def old_segment_mask(geometry, kernel, budget):
  """The exact column-grain selection before the threshold formulation (320dc2a)."""
  energy = geometry.segment_energy(kernel)
  ordered, order = tf.math.top_k(energy, k=geometry.cout)
  padded = tf.pad(ordered, [[0, 0], [0, geometry.g_out * geometry.kout - geometry.cout]])
  chunks = tf.reduce_sum(tf.reshape(padded, (geometry.g_in, geometry.g_out, geometry.kout)), 2)
  chosen = projection.top_k_mask(chunks, projection.check_budget(geometry, budget))
  kept_per_group = tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1) * geometry.kout
  kept_in_order = tf.range(geometry.cout)[None, :] < kept_per_group[:, None]
  group = tf.broadcast_to(tf.range(geometry.g_in)[:, None], tf.shape(order))
  seg = tf.scatter_nd(tf.stack([group, order], axis=-1), kept_in_order, tf.shape(order))
  return geometry.segment_to_kernel_mask(tf.cast(seg, kernel.dtype))


def interleaved_times(fns, repeats: int) -> list[list[float]]:
  """Wall times of each function, run interleaved so load changes hit all alike."""
  for fn in fns:
    fn()  # trace and warm up
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, out in zip(fns, times):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return times


def bench(model, spec: CrossbarSpec, repeats: int) -> None:
  mapped = [layer for layer in introspection.iter_layers(model) if introspection.is_mapped(layer)]
  geometries = [introspection.geometry_of(layer, spec) for layer in mapped]
  kernels = [layer.kernel for layer in mapped]
  budgets = [projection.crossbar_budget(g.dense_crossbars, 0.7) for g in geometries]

  @tf.function
  def energy():
    return [tf.reduce_sum(tf.square(k)) for k in kernels]

  def projector(granularity, temperature):
    @tf.function
    def run():
      return [projection.project(g, k, n, granularity, temperature,
                                 projection.stateless_seed(0, i, 1) if temperature else None)
              for i, (g, k, n) in enumerate(zip(geometries, kernels, budgets))]
    return run

  @tf.function
  def old_column():
    return [old_segment_mask(g, k, n) for g, k, n in zip(geometries, kernels, budgets)]

  for new, old in zip(projector("column", 0.0)(), old_column()):
    tf.debugging.assert_equal(new, old, message="the column projection changed")
  variants = [(g, t) for g in ("crossbar", "column") for t in (0.0, 1.0)]
  names = [f"project {g:8s} {'exact' if t == 0 else 'sampled':7s}" for g, t in variants]
  base, *times = interleaved_times(
      [energy] + [projector(g, t) for g, t in variants] + [old_column], repeats)
  names.append("old column exact (reference)")
  weights = sum(int(tf.size(k)) for k in kernels)
  b = statistics.median(base)
  print(f"{model.name}: {len(kernels)} mapped layers, {weights / 1e6:.1f}M weights, "
        f"reduce_sum(square(w)): median {b * 1e3:.1f} ms ({min(base) * 1e3:.1f}.."
        f"{max(base) * 1e3:.1f})")
  for name, t in zip(names, times):
    m = statistics.median(t)
    print(f"  {name:30s}: median {m * 1e3:7.1f} ms ({min(t) * 1e3:.1f}..{max(t) * 1e3:.1f})  "
          f"ratio {m / b:4.2f}x")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--crossbar", default="128x128")
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  spec = CrossbarSpec.from_string(args.crossbar)
  print(f"crossbar {spec}, TensorFlow {tf.__version__}, {args.repeats} interleaved rounds")
  for build in (keras.applications.VGG16, keras.applications.ResNet50):
    bench(build(weights=None), spec, args.repeats)


if __name__ == "__main__":
  main()
