"""Issue 27's goal conditions on the bit-serial `isaac_32nm` (16 one-bit input cycles, the
preset as published), for models `tools/bench_hardware.py` trained and cached
(docs/hardware.md, "Measured: the sweep with hardware-aware rows, drift and compensation").

Same images, chips and calibration as that benchmark's sweep: the first `--test-size` test
images, chips of seeds 0..`--instances`-1 (one for the noiseless chip), the first 256 of the
benchmark's training subset (seed 0) calibrating the converters and compensating. Prints one
line per condition and writes `<out>/bitserial.json`.

  .venv/bin/python tools/bench_bitserial_goal.py --out out/bench_hw27c \
      --models rpp-column-0.85-hwa,rpp-column-0.85
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

STEPS = ("adc", "column_gain", "batchnorm")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="a bench_hardware --out folder (its cache/)")
  p.add_argument("--models", required=True, help="comma list of cached model labels")
  p.add_argument("--width", type=float, default=0.5, help="vgg8 width the models were built at")
  p.add_argument("--train-size", type=int, default=10000)
  p.add_argument("--test-size", type=int, default=1000)
  p.add_argument("--instances", type=int, default=3)
  args = p.parse_args()
  out = pathlib.Path(args.out)
  labels = [m for m in args.models.split(",") if m]
  missing = [m for m in labels if not (out / "cache" / f"{m}.weights.h5").is_file()]
  if missing or not labels:
    p.error(f"--models: no cached weights for {missing} in {out / 'cache'}; valid: labels "
            f"that tools/bench_hardware.py trained there")
  import xbar_tfmot as xt
  from xbar_tfmot.app.datasets import load_fashion_mnist
  from xbar_tfmot.app.zoo import build_model
  from xbar_tfmot.core.spec import parse_spec

  (x, y), (x_test, y_test) = load_fashion_mnist(None)
  x = x[np.random.default_rng(0).permutation(len(y))[:args.train_size]]
  x_test, y_test = x_test[:args.test_size], y_test[:args.test_size]
  spec, hw = parse_spec("isaac_128x128"), xt.HardwareSpec.preset("isaac_32nm")
  results = {}
  for label in labels:
    model = build_model("vgg8", x.shape[1:], 10, args.width, "tf_keras", seed=0)
    model.load_weights(str(out / "cache" / f"{label}.weights.h5"))
    mapping = xt.build_mapping(model, spec, "column")
    for variation, steps in ((0.0, ()), (0.05, ()), (0.1, ()), (0.1, STEPS)):
      start = time.perf_counter()
      seeds = list(range(args.instances)) if variation else [0]
      accs = xt.analog_accuracy(model, mapping, hw.replace(variation=variation), x_test, y_test,
                                seeds, x[:256], batch_size=250, compensation=steps)
      results[f"{label}|{variation}|{','.join(steps)}"] = accs
      print(f"{label} variation {variation}{' compensated' if steps else ''}: "
            f"{np.mean(accs):.4f} ± {np.std(accs):.4f} ({time.perf_counter() - start:.0f} s)",
            flush=True)
      (out / "bitserial.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
