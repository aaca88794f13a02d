"""Command-line programs installed as console scripts (`xbar-report`, ...)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from xbar_tfmot.spec import CrossbarSpec


def parse_spec(text: str) -> CrossbarSpec:
  """A spec from a JSON preset file (see configs/hardware/) or the short form `128x128,...`."""
  if text.endswith(".json"):
    if not os.path.exists(text):
      raise ValueError(f"crossbar preset {text!r} does not exist.")
    with open(text, encoding="utf-8") as f:
      return CrossbarSpec.from_dict(json.load(f))
  return CrossbarSpec.from_string(text)


def report_main(argv: list[str] | None = None) -> int:
  """`xbar-report MODEL --crossbar 128x128`: crossbars per layer and in total."""
  parser = argparse.ArgumentParser(
      prog="xbar-report", description="Count the crossbars a Keras model takes, per layer.")
  parser.add_argument("model", help="a .keras or .h5 file, a SavedModel folder, or builtin:NAME "
                      "(vgg16, vgg19, resnet50, resnet101, mobilenet_v2; weights=None)")
  parser.add_argument("--crossbar", default="128x128",
                      help="ROWSxCOLS[,field=value...] or a preset .json (default: 128x128)")
  parser.add_argument("--mapping", choices=("kernel_aligned", "flat", "direct"),
                      help="override the crossbar mapping mode")
  parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
  args = parser.parse_args(argv)
  try:
    spec = parse_spec(args.crossbar)
    if args.mapping:
      spec = CrossbarSpec.from_dict({**spec.to_dict(), "mapping": args.mapping})
    from xbar_tfmot.model_io import load_model
    from xbar_tfmot.report import crossbar_report
    report = crossbar_report(load_model(args.model), spec)
  except (ValueError, FileNotFoundError) as err:
    print(f"xbar-report: error: {err}", file=sys.stderr)
    return 2
  print(report.format_table())
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(report.to_dict(), f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(report_main())
