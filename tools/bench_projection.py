"""Projection speed vs one pass of `reduce_sum(square(w))` over the same kernels.

Projects every mapped layer of Keras VGG16 and ResNet50 (weights=None) onto a budget of 30%
of its dense crossbars (both granularities, exact and sampled) inside one `tf.function`, and
times it beside a `tf.function` that only sums the squares of the same kernels.

  .venv/bin/python tools/bench_projection.py [--crossbar 128x128] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from xbar_tfmot.models import introspection as layers_lib
from xbar_tfmot.core import projection
from xbar_tfmot.core.spec import CrossbarSpec  # noqa: E402


def best_times(fns, repeats: int) -> list[float]:
  """Best wall time of each function, run interleaved so load changes hit all alike."""
  for fn in fns:
    fn()  # trace and warm up
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, out in zip(fns, times):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return [min(t) for t in times]


def bench(model, spec: CrossbarSpec, repeats: int) -> None:
  mapped = [layer for layer in layers_lib.iter_layers(model) if layers_lib.is_mapped(layer)]
  geometries = [layers_lib.geometry_of(layer, spec) for layer in mapped]
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

  variants = [(g, t) for g in ("crossbar", "column") for t in (0.0, 1.0)]
  base, *times = best_times([energy] + [projector(g, t) for g, t in variants], repeats)
  weights = sum(int(tf.size(k)) for k in kernels)
  print(f"{model.name}: {len(kernels)} mapped layers, {weights / 1e6:.1f}M weights, "
        f"reduce_sum(square(w)): {base * 1e3:.1f} ms")
  for (granularity, temperature), t in zip(variants, times):
    kind = "exact" if temperature == 0 else "sampled"
    print(f"  project {granularity:8s} {kind:7s}: {t * 1e3:7.1f} ms  ratio {t / base:4.2f}x")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--crossbar", default="128x128")
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  spec = CrossbarSpec.from_string(args.crossbar)
  print(f"crossbar {spec}, TensorFlow {tf.__version__}, best of {args.repeats}")
  for build in (keras.applications.VGG16, keras.applications.ResNet50):
    bench(build(weights=None), spec, args.repeats)


if __name__ == "__main__":
  main()
