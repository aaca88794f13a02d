"""Speed of building the crossbar mapping and its JSON for ImageNet-sized Keras models.

Not a test. Random weights (`weights=None`), every mapped layer pruned to its exact projection
at 70% crossbar reduction, then `build_mapping`, `to_json` and `from_json` are timed, now and
as they were before the vectorised validation (the mapping module of `--baseline`, read from
git, against the same model and packing), interleaved in `--rounds` rounds so that load on a
shared machine hits both alike; medians and the spread (min..max) are printed side by side
with the ratio of the medians. ResNet101 and ResNet152 show how the time grows with depth.

  .venv/bin/python tools/bench_mapping.py [--models resnet50,vgg16] [--crossbar 128x128]
      [--rounds 3] [--baseline 320dc2a]
"""

import argparse
import importlib.util
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from xbar_tfmot.core import packing  # noqa: E402
from xbar_tfmot.core.mapping import CrossbarMapping  # noqa: E402
from xbar_tfmot.core.projection import crossbar_budget, project  # noqa: E402
from xbar_tfmot.core.spec import CrossbarSpec  # noqa: E402
from xbar_tfmot.models import introspection  # noqa: E402
from xbar_tfmot.models import model_mapping  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "resnet152": keras.applications.ResNet152,
    "vgg16": keras.applications.VGG16,
}
GOALS = {"resnet50": 1.0, "vgg16": 1.5}  # issue 16, build + to_json + from_json, seconds


def prune(model, spec, reduction, granularity):
  for _, inner in ((l, introspection.unwrap(l)) for l in introspection.iter_layers(model)):
    if introspection.layer_kind(inner) in ("Conv2D", "Dense") and not introspection.unmapped_reason(inner):
      geometry = introspection.geometry_of(inner, spec)
      budget = crossbar_budget(geometry.dense_crossbars, reduction)
      inner.kernel.assign(inner.kernel * project(geometry, inner.kernel, budget, granularity))


def legacy_module(commit: str):
  """The mapping module (and its schema) of `commit`, loaded from git under another name."""
  folder = pathlib.Path(tempfile.mkdtemp(prefix="legacy_mapping_"))
  for name in ("mapping.py", "mapping_schema.json"):
    text = subprocess.run(["git", "show", f"{commit}:xbar_tfmot/core/{name}"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout
    (folder / name).write_text(text, encoding="utf-8")
  spec = importlib.util.spec_from_file_location("legacy_mapping", folder / "mapping.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def build_with(lib, model, spec, granularity):
  """`build_mapping` with the layer entries and document of another mapping module."""
  entries = []
  for layer, inner in model_mapping.mapped_layers(model):
    kernel = introspection.effective_kernel(layer)
    geometry = introspection.geometry_of(inner, spec)
    entries.append(lib.layer_entry(packing.pack_layer(geometry, kernel, granularity), kernel))
  info = {"name": model.name, "input_shape": model_mapping.jsonable_shape(model.input_shape)}
  return lib.document(spec, granularity, info, entries, model_mapping.unmapped_layers(model))


def timed(build, from_json):
  t0 = time.perf_counter()
  mapping = build()
  t1 = time.perf_counter()
  text = mapping.to_json()
  t2 = time.perf_counter()
  again = from_json(text)
  t3 = time.perf_counter()
  return (t1 - t0, t2 - t1, t3 - t2, t3 - t0), mapping, again, text


def spread(values):
  return f"{statistics.median(values):5.2f} ({min(values):.2f}..{max(values):.2f})"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet50,vgg16")
  parser.add_argument("--crossbar", default="128x128")
  parser.add_argument("--reduction", type=float, default=0.7)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--baseline", default="320dc2a",
                      help="git commit whose mapping module is 'before' ('' to skip)")
  args = parser.parse_args()
  spec = CrossbarSpec.from_string(args.crossbar)
  legacy = legacy_module(args.baseline) if args.baseline else None
  print(f"crossbar {spec}, reduction {args.reduction}, {args.rounds} interleaved rounds, "
        f"median (min..max) seconds; before = mapping module of {args.baseline or '-'}")
  print(f"{'model':10} {'gran':8} {'layers':>6} {'after':>6} {'MB':>5} | "
        f"{'build':>17} {'to_json':>17} {'from_json':>17} {'total':>17} | "
        f"{'total before':>17} {'ratio':>6} {'goal':>5}")
  totals = {}
  for name in args.models.split(","):
    model = MODELS[name](weights=None)
    for granularity in ("crossbar", "column"):
      prune(model, spec, args.reduction, granularity)
      new, old = [], []
      for _ in range(args.rounds):
        times, mapping, again, text = timed(
            lambda: model_mapping.build_mapping(model, spec, granularity), CrossbarMapping.from_json)
        assert again.data == mapping.data
        new.append(times)
        if legacy is not None:
          times, before, _, before_text = timed(lambda: build_with(legacy, model, spec, granularity),
                                                legacy.CrossbarMapping.from_json)
          assert before_text == text, "the document changed"
          old.append(times)
      columns = list(zip(*new))
      totals[name, granularity] = statistics.median(columns[3])
      before = list(zip(*old))[3] if old else None
      goal = GOALS.get(name)
      print(f"{name:10} {granularity:8} {len(mapping.layer_names):6d} "
            f"{mapping.totals['crossbars']:6d} {len(text) / 1e6:5.2f} | "
            + " ".join(f"{spread(c):>17}" for c in columns) + " | "
            + (f"{spread(before):>17} {statistics.median(before) / totals[name, granularity]:5.1f}x"
               if before else f"{'-':>17} {'-':>6}")
            + (f" {'met' if totals[name, granularity] < goal else 'MISSED'} <{goal}s"
               if goal else ""), flush=True)
    del model
    keras.backend.clear_session()
  for deeper in ("resnet101", "resnet152"):
    for granularity in ("crossbar", "column"):
      if (deeper, granularity) in totals and ("resnet50", granularity) in totals:
        ratio = totals[deeper, granularity] / totals["resnet50", granularity]
        print(f"{deeper}/resnet50 total time ({granularity}): {ratio:.2f}x")


if __name__ == "__main__":
  main()
