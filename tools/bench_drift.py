"""Accuracy of a small digits CNN on `isaac_32nm` chips 1 s to 1 year after programming, with
and without compensation (docs/hardware.md, "Measured: drift and compensation").

Run from the repository root: `.venv/bin/python tools/bench_drift.py` (about 7 minutes on 2
cores: the chip is bit-serial, 16 input cycles).
"""

import time

import numpy as np

import xbar_tfmot as xt
from xbar_tfmot.app.datasets import load_digits

TIMES = (1.0, 3600.0, 86400.0, 3.15e7)
MODES = {"none": ((), False), "global drift compensation": ((), True),
         "global + adc,column_gain,batchnorm": (("adc", "column_gain", "batchnorm"), True)}


def main() -> None:
  import keras as K
  K.utils.set_random_seed(0)
  (x, y), (x_test, y_test) = load_digits()
  L = K.layers
  model = K.Sequential([L.Input(x.shape[1:]), L.Conv2D(16, 3, name="conv1"),
                        L.BatchNormalization(), L.ReLU(), L.Conv2D(32, 3, name="conv2"),
                        L.BatchNormalization(), L.ReLU(), L.Flatten(), L.Dense(10, name="fc")])
  model.compile("adam", K.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  model.fit(x, y, epochs=10, batch_size=32, verbose=0)
  spec = xt.CrossbarSpec(rows=128, cols=128, weight_bits=8, cell_bits=2, differential=True)
  mapping = xt.build_mapping(model, spec, "column")
  float_acc = model.evaluate(x_test, y_test, verbose=0)[1]
  hw = xt.HardwareSpec.preset("isaac_32nm")  # bit-serial, 8-bit ADC per slice, no variation
  calibration = x[:256]
  print(f"float accuracy {float_acc:.4f}; {len(x_test)} test digits; chip {hw.name}, "
        f"drift nu {hw.drift_nu} +- {hw.drift_nu_std}, t0 {hw.drift_t0} s; "
        f"3 chips; compensation on {len(calibration)} training digits")
  fresh = xt.analog_accuracy(model, mapping, hw, x_test, y_test, [0, 1, 2], calibration)
  print(f"| just programmed (no drift) | {np.mean(fresh):.4f} ± {np.std(fresh):.4f} |")
  for name, (steps, global_comp) in MODES.items():
    start = time.time()
    rows = xt.sweep_hardware(model, mapping, hw.replace(drift_compensation=global_comp),
                             x_test, y_test, calibration, instances=3, times=TIMES,
                             compensation=steps)
    cells = " | ".join(f"{r['mean']:.4f} ± {r['std']:.4f}" for r in rows)
    print(f"| {name} | {cells} |  ({time.time() - start:.0f} s)")


if __name__ == "__main__":
  main()
