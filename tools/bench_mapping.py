"""Speed of building the crossbar mapping and its JSON for ImageNet-sized Keras models.

Not a test. Random weights (`weights=None`), every mapped layer pruned to its exact projection
at 70% crossbar reduction, then `build_mapping`, `to_json` and `from_json` are timed. ResNet101
and ResNet152 show how the time grows with depth against ResNet50.

  .venv/bin/python tools/bench_mapping.py [--models resnet50,resnet101,vgg16] [--crossbar 128x128]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from xbar_tfmot.models import introspection as layers_lib
from xbar_tfmot.core.mapping import CrossbarMapping  # noqa: E402
from xbar_tfmot.models.model_mapping import build_mapping  # noqa: E402
from xbar_tfmot.core.projection import crossbar_budget, project  # noqa: E402
from xbar_tfmot.core.spec import CrossbarSpec  # noqa: E402

MODELS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "resnet152": keras.applications.ResNet152,
    "vgg16": keras.applications.VGG16,
}


def prune(model, spec, reduction, granularity):
  for _, inner in ((l, layers_lib.unwrap(l)) for l in layers_lib.iter_layers(model)):
    if layers_lib.layer_kind(inner) in ("Conv2D", "Dense") and not layers_lib.unmapped_reason(inner):
      geometry = layers_lib.geometry_of(inner, spec)
      budget = crossbar_budget(geometry.dense_crossbars, reduction)
      inner.kernel.assign(inner.kernel * project(geometry, inner.kernel, budget, granularity))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet50,resnet101,resnet152,vgg16")
  parser.add_argument("--crossbar", default="128x128")
  parser.add_argument("--reduction", type=float, default=0.7)
  args = parser.parse_args()
  spec = CrossbarSpec.from_string(args.crossbar)
  print(f"crossbar {spec}, reduction {args.reduction}")
  print(f"{'model':10} {'gran':8} {'layers':>6} {'dense':>7} {'after':>7} {'build s':>8} "
        f"{'to_json s':>9} {'from_json s':>11} {'MB':>6}")
  times = {}
  for name in args.models.split(","):
    model = MODELS[name](weights=None)
    for granularity in ("crossbar", "column"):
      prune(model, spec, args.reduction, granularity)
      t0 = time.perf_counter()
      mapping = build_mapping(model, spec, granularity)
      t1 = time.perf_counter()
      text = mapping.to_json()
      t2 = time.perf_counter()
      CrossbarMapping.from_json(text)
      t3 = time.perf_counter()
      times[name, granularity] = t3 - t0
      print(f"{name:10} {granularity:8} {len(mapping.layer_names):6d} "
            f"{mapping.totals['dense']:7d} {mapping.totals['crossbars']:7d} {t1 - t0:8.2f} "
            f"{t2 - t1:9.2f} {t3 - t2:11.2f} {len(text) / 1e6:6.2f}")
    del model
    keras.backend.clear_session()
  for deeper in ("resnet101", "resnet152"):
    for granularity in ("crossbar", "column"):
      if (deeper, granularity) in times and ("resnet50", granularity) in times:
        ratio = times[deeper, granularity] / times["resnet50", granularity]
        print(f"{deeper}/resnet50 total time ({granularity}): {ratio:.2f}x")


if __name__ == "__main__":
  main()
