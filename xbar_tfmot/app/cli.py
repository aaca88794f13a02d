"""Command-line programs installed as console scripts (`xbar-report`, ...)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from xbar_tfmot._quiet import TF_LOG_FLAG, TF_LOG_HELP
from xbar_tfmot.core.spec import CrossbarSpec, parse_spec, preset_names

PROGRAMS = ("xbar-prune", "xbar-report", "xbar-verify")
CUSTOM_OBJECTS_FLAG = "--custom-objects"
CUSTOM_OBJECTS_HELP = ("importable module(s) defining the model's own layers (their classes and "
                       "functions are passed to Keras as custom objects)")


def report_main(argv: list[str] | None = None) -> int:
  """`xbar-report MODEL --crossbar 128x128`: crossbars per layer and in total."""
  parser = argparse.ArgumentParser(
      prog="xbar-report", description="Count the crossbars a Keras model takes, per layer.")
  parser.add_argument("model", help="a .keras or .h5 file, a SavedModel folder, or builtin:NAME "
                      "(vgg16, vgg19, resnet50, resnet101, mobilenet_v2; weights=None)")
  parser.add_argument("--crossbar",
                      help="a preset name (" + ", ".join(preset_names()) + "), "
                      "ROWSxCOLS[,field=value...] or a preset .json (default: the export's spec "
                      "for an export folder, else 128x128)")
  parser.add_argument("--mapping", choices=("kernel_aligned", "flat", "direct"),
                      help="override the crossbar mapping mode")
  parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
  parser.add_argument("--cost", metavar="HW", help="add energy/area/latency per layer on a "
                      "hardware preset (isaac_32nm, puma_128x128) or JSON file")
  parser.add_argument(CUSTOM_OBJECTS_FLAG, metavar="MODULE[,MODULE]", help=CUSTOM_OBJECTS_HELP)
  parser.add_argument(TF_LOG_FLAG, action="store_true", help=TF_LOG_HELP)
  args = parser.parse_args(argv)
  from xbar_tfmot.export.model_io import load_custom_objects, load_model
  from xbar_tfmot.models.report import crossbar_report
  try:
    mapping, source = None, args.model
    if os.path.isfile(os.path.join(args.model, "model.keras")):
      from xbar_tfmot.export.exporter import read_mapping
      mapping, source = read_mapping(args.model), os.path.join(args.model, "model.keras")
    spec = parse_spec(args.crossbar) if args.crossbar else (
        mapping.spec if mapping else CrossbarSpec(rows=128, cols=128))
    if args.mapping:
      spec = CrossbarSpec.from_dict({**spec.to_dict(), "mapping": args.mapping})
    model = load_model(source, load_custom_objects(args.custom_objects or ""))
    report = crossbar_report(model, spec)
    cost = _cost_table(model, spec, mapping, args.cost) if args.cost else None
  except (ValueError, FileNotFoundError) as err:
    print(f"xbar-report: error: {err}", file=sys.stderr)
    return 2
  print(report.format_table())
  if cost:
    print(cost.format_table())
  if mapping:
    t = mapping.totals
    print(f"export mapping ({mapping.granularity} grain, {mapping.spec}): {t['crossbars']} of "
          f"{t['dense']} crossbars, reduction {t['reduction']:.1%}, utilization "
          f"{t['utilization']:.1%}")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report.to_dict(), f, indent=2)
  return 0


def _cost_table(model, spec, mapping, hardware: str):
  """The cost report of the export's mapping, or of the model mapped at column grain on `spec`."""
  from xbar_tfmot.core.cost import estimate_cost
  from xbar_tfmot.core.hardware import parse_hardware
  from xbar_tfmot.models.analog_model import output_positions
  from xbar_tfmot.models.model_mapping import build_mapping
  if mapping is None or mapping.spec != spec:
    mapping = build_mapping(model, spec, "column")
  return estimate_cost(mapping, parse_hardware(hardware),
                       output_positions(model, mapping.layer_names))


def verify_main(argv: list[str] | None = None) -> int:
  """`xbar-verify EXPORT_DIR`: exported artefacts and crossbar-explicit model agree."""
  parser = argparse.ArgumentParser(
      prog="xbar-verify", description="Check an export folder of xbar_tfmot.export().")
  parser.add_argument("export_dir")
  parser.add_argument("--samples", type=int, default=8, help="random inputs to compare on")
  parser.add_argument("--tolerance", type=float, default=1e-4,
                      help="largest relative difference accepted (default 1e-4)")
  parser.add_argument(CUSTOM_OBJECTS_FLAG, metavar="MODULE[,MODULE]", help=CUSTOM_OBJECTS_HELP)
  parser.add_argument(TF_LOG_FLAG, action="store_true", help=TF_LOG_HELP)
  args = parser.parse_args(argv)
  from xbar_tfmot.export.model_io import load_custom_objects
  from xbar_tfmot.export.verification import verify
  try:
    result = verify(args.export_dir, args.samples, args.tolerance,
                    custom_objects=load_custom_objects(args.custom_objects or ""))
  except (ValueError, FileNotFoundError) as err:
    print(f"xbar-verify: error: {err}", file=sys.stderr)
    return 1
  print(result.format())
  return 0 if result.ok else 1


if __name__ == "__main__":
  sys.exit(report_main())
