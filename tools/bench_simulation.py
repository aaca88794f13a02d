"""Simulation speed (issue 26, item 8): plain Keras, the crossbar-explicit model and simulated
chips, side by side on the same Fashion-MNIST test images in one run.

Each model is a zoo VGG8 one-shot pruned to `--reduction` fewer crossbars (global_score,
column grain) from its initial weights: how fast a model simulates depends on its shapes and
its mapping, not on what it learned (an untrained model's accuracy is not measured here). Two
settings:

- `default`: the default `xbar-prune` run's model (VGG8 width 0.25, `semi_folded_k16x4`, as
  mapped by its crossbar spec: 8-bit weights in 8-bit cells);
- `w05`: VGG8 width 0.5 on 128x128 crossbars with 8-bit weights in 2-bit differential cells
  (8 cells per weight).

Chips: `isaac_32nm` with one multi-bit analog input (`bit_serial=false`) and as published
(bit-serial, 16 one-bit input cycles); the issue's goals are the explicit model at most 2x
Keras, the multi-bit-input chip at most 12x, the bit-serial one at most 16 x 12 = 192x.
Each model is traced once, warmed up, then timed in `--rounds` interleaved rounds (Keras,
explicit, chips, Keras, ...); the ratios are of the medians, and their spread over rounds is
printed. Prints one markdown table.

  .venv/bin/python tools/bench_simulation.py --images 2000 --rounds 3
  .venv/bin/python tools/bench_simulation.py --settings w05 --models multi-bit --images 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

SETTINGS = {"default": (0.25, "semi_folded_k16x4"),
            "w05": (0.5, "128x128,weight_bits=8,cell_bits=2,differential=true")}
GOALS = {"explicit": 2.0, "chip, multi-bit input": 12.0, "chip, bit-serial": 192.0}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--settings", default="default,w05", help="comma list of default, w05")
  p.add_argument("--images", type=int, default=2000, help="test images timed")
  p.add_argument("--batch", type=int, default=250)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--reduction", type=float, default=0.85)
  p.add_argument("--calibration", type=int, default=256, help="training images calibrating "
                 "the chips' converters")
  p.add_argument("--models", default="explicit,multi-bit,bit-serial",
                 help="comma list of the models timed against plain Keras: explicit, multi-bit, "
                 "bit-serial")
  args = p.parse_args()
  names = [n for n in args.models.split(",") if n]
  unknown = sorted(set(names) - {"explicit", "multi-bit", "bit-serial"})
  if unknown or not names:
    p.error(f"--models={args.models!r}: unknown {unknown}; valid: a comma list of explicit, "
            f"multi-bit, bit-serial")
  import numpy as np
  import tensorflow as tf

  import xbar_tfmot as xt
  from xbar_tfmot.app import zoo
  from xbar_tfmot.app.datasets import load_fashion_mnist
  from xbar_tfmot.core.spec import parse_spec

  (x_train, _), (x_test, _) = load_fashion_mnist()
  x = x_test[:args.images]
  print(f"| setting | model | seconds per round | x plain Keras (rounds) | goal |")
  print("|---|---|---|---|---|")
  for setting in args.settings.split(","):
    width, spec_text = SETTINGS[setting]
    spec = parse_spec(spec_text)
    model = zoo.build_model("vgg8", x.shape[1:], 10, width=width, flavour="keras3", seed=0)
    xt.apply_masks(model, xt.one_shot_masks(model, spec, xt.CrossbarPolicy(mode="global_score"),
                                            args.reduction, granularity="column"))
    mapping = xt.build_mapping(model, spec)
    isaac = xt.HardwareSpec.preset("isaac_32nm")
    calibration = x_train[:args.calibration]
    build = {"explicit": lambda: ("explicit", xt.crossbar_model(model, mapping)),
             "multi-bit": lambda: ("chip, multi-bit input", xt.analog_model(
                 model, mapping, isaac.replace(bit_serial=False), 0, calibration)),
             "bit-serial": lambda: ("chip, bit-serial",
                                    xt.analog_model(model, mapping, isaac, 0, calibration))}
    models = {"plain Keras": model}
    models.update(build[name]() for name in names)
    signature = [tf.TensorSpec((None, *x.shape[1:]), tf.float32)]
    runs = {k: tf.function(lambda t, m=m: m(t, training=False), input_signature=signature)
            for k, m in models.items()}

    def timed(name: str) -> float:
      start = time.perf_counter()
      for i in range(0, len(x), args.batch):
        runs[name](tf.constant(x[i:i + args.batch])).numpy()
      return time.perf_counter() - start

    for name in runs:
      timed(name)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
      for name in runs:
        seconds[name].append(timed(name))
    base = seconds["plain Keras"]
    for name, s in seconds.items():
      ratios = [a / b for a, b in zip(s, base)]
      goal = GOALS.get(name)
      totals = mapping.totals
      print(f"| {setting} ({totals['crossbars']} of {totals['dense']} crossbars) | {name} | {', '.join(f'{v:.2f}' for v in s)} | "
            f"**{statistics.median(s) / statistics.median(base):.1f}** "
            f"({min(ratios):.1f}-{max(ratios):.1f}) | "
            f"{'' if goal is None else f'<= {goal:g}x'} |", flush=True)
  load = os.getloadavg()
  print(f"\n{len(x)} test images, batches of {args.batch}, {args.rounds} rounds; load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs at the end, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")


if __name__ == "__main__":
  main()
