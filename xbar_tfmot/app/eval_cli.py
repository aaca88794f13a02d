"""`xbar-eval EXPORT_DIR --data NAME --hw PRESET_OR_FILE --instances N`: accuracy on analog chips.

Loads an export folder of `xbar_tfmot.export()` (its `model.keras` and `mapping.json`), runs
the test split of a dataset through `--instances` chip instances of the hardware description
(seeds `--seed`, `--seed + 1`, ...) and prints the accuracy mean ± std over instances, the
float accuracy, and the energy/area estimate of the mapping. With `--dense MODEL`, the dense
model is mapped on the same crossbars and evaluated the same way, as a reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="xbar-eval", description="Accuracy of an exported model on non-ideal crossbars.")
  parser.add_argument("export_dir")
  parser.add_argument("--data", required=True, help="dataset name (fashion_mnist, cifar10, "
                      "digits, synthetic)")
  parser.add_argument("--data-path", help="folder of the dataset files")
  parser.add_argument("--hw", required=True, help="hardware preset name or JSON file")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a hardware field, e.g. --set variation=0.05 (repeatable)")
  parser.add_argument("--instances", type=int, default=10, help="chip instances (seeds)")
  parser.add_argument("--seed", type=int, default=0, help="first chip seed")
  parser.add_argument("--limit", type=int, help="evaluate the first N test images only")
  parser.add_argument("--calibration", type=int, default=256,
                      help="training images used to calibrate the DAC/ADC ranges")
  parser.add_argument("--dense", help="the dense model (.keras) as a reference")
  parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
  args = parser.parse_args(argv)
  from xbar_tfmot.app.datasets import load_dataset
  from xbar_tfmot.core.cost import estimate_cost
  from xbar_tfmot.core.errors import XbarError
  from xbar_tfmot.core.hardware import parse_hardware, parse_override
  from xbar_tfmot.export.exporter import read_mapping
  from xbar_tfmot.export.model_io import load_model
  from xbar_tfmot.models import analog_model as am
  from xbar_tfmot.models.model_mapping import build_mapping
  try:
    if args.instances < 1:
      raise ValueError(f"--instances={args.instances}: valid: an integer >= 1.")
    hw = parse_hardware(args.hw, **dict(parse_override(s) for s in args.set))
    mapping = read_mapping(args.export_dir)
    model = load_model(os.path.join(args.export_dir, "model.keras"))
    (x_train, _), (x, y) = load_dataset(args.data, args.data_path)
    if args.limit:
      x, y = x[:args.limit], y[:args.limit]
    calibration = x_train[:args.calibration]
    seeds = range(args.seed, args.seed + args.instances)
    runs = {"pruned": (model, mapping)}
    if args.dense:
      dense = load_model(args.dense)
      runs["dense"] = (dense, build_mapping(dense, mapping.spec, mapping.granularity))
    results = {"hardware": hw.to_dict(), "instances": args.instances, "images": int(len(x))}
    for label, (net, net_mapping) in runs.items():
      float_acc = float(np.mean(np.argmax(net.predict(x, verbose=0), -1) == y))
      accs = am.analog_accuracy(net, net_mapping, hw, x, y, seeds, calibration)
      cost = estimate_cost(net_mapping, hw, am.output_positions(net, net_mapping.layer_names))
      results[label] = {"float_accuracy": float_acc, "accuracies": accs,
                        "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                        "crossbars": net_mapping.totals["crossbars"],
                        "energy_nj": cost.pruned.energy_pj / 1e3,
                        "area_mm2": cost.pruned.area_mm2}
  except (XbarError, ValueError, FileNotFoundError) as err:
    print(f"xbar-eval: error: {err}", file=sys.stderr)
    return 2
  print(f"hardware {hw.name}: variation {hw.variation} ({hw.variation_model}), stuck-on "
        f"{hw.stuck_on_rate}, stuck-off {hw.stuck_off_rate}, read noise {hw.read_noise}, "
        f"input {hw.input_bits} bits, ADC {hw.adc_bits} bits; {args.instances} instances, "
        f"{len(x)} images")
  for label in runs:
    r = results[label]
    print(f"{label:<7} accuracy {r['mean']:.4f} ± {r['std']:.4f} (float {r['float_accuracy']:.4f})"
          f"  crossbars {r['crossbars']}  energy {r['energy_nj']:.1f} nJ  area "
          f"{r['area_mm2']:.4f} mm2 per inference")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
