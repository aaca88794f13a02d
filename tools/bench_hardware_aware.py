"""Hardware-aware training benchmark (issue 27, item 1): pruned with and without the chip's
weight noise in training, evaluated on simulated chips.

On Fashion-MNIST (a random training subset of `--train-size` images), a zoo `vgg8` of `--width`
is trained dense for `--dense-epochs`, then pruned at `--reduction` fewer crossbars (LGD-RPP,
column grain, the library's default policy) for `--epochs`, once per `--train-variations`
value: `none` (plain `prune_crossbar`) or a variation `t` (`prune_crossbar(...,
hardware_aware=xt.HardwareAware(hw.replace(variation=t)))`: weight quantisation and
programming noise of the `--preset` chip in every training step). `--dense-hat` adds the dense
model fine-tuned for `--epochs` with and without hardware-aware training at that variation
(`xt.hardware_aware_model`): the fair baseline. BatchNorm is re-estimated on training images;
every model is evaluated with `xt.analog_accuracy` on the first `--test-size` test images, on
`--instances` chips (seeds 0..n-1) of `--preset` at each `--eval-variations` value
(`--ideal-periphery`: float inputs and no ADC, the weights' non-idealities only). Models
are cached in `<out>/cache/`, results appended to `<out>/results.json` (a rerun resumes;
one folder per setting: the settings are not recorded).

  python tools/bench_hardware_aware.py --out out/bench_hat
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--train-size", type=int, default=10000)
  p.add_argument("--test-size", type=int, default=1000)
  p.add_argument("--dense-epochs", type=int, default=3)
  p.add_argument("--epochs", type=int, default=2, help="epochs of every pruned model")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--finetune-lr", type=float, default=5e-4)
  p.add_argument("--reduction", type=float, default=0.85)
  p.add_argument("--frequency", type=int, default=20)
  p.add_argument("--spec", default="isaac_128x128")
  p.add_argument("--preset", default="isaac_32nm")
  p.add_argument("--train-variations", default="none,0.05,0.1")
  p.add_argument("--eval-variations", default="0,0.05,0.1")
  p.add_argument("--dense-hat", type=float, default=None,
                 help="also the dense model fine-tuned plain and at this training variation")
  p.add_argument("--ideal-periphery", action="store_true",
                 help="float inputs and no ADC (the weights' non-idealities only; much faster)")
  p.add_argument("--instances", type=int, default=3)
  p.add_argument("--calibration", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  import xbar_tfmot as xt
  from xbar_tfmot.app import datasets, training, zoo
  from xbar_tfmot.core.spec import parse_spec

  import tf_keras as keras  # the zoo's default flavour
  out = pathlib.Path(args.out)
  (out / "cache").mkdir(parents=True, exist_ok=True)
  results_path = out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  (x, y), (x_test, y_test) = datasets.load_fashion_mnist()
  order = np.random.default_rng(args.seed).permutation(len(y))[:args.train_size]
  x, y = x[order], y[order]
  x_test, y_test = x_test[:args.test_size], y_test[:args.test_size]
  spec = parse_spec(args.spec)
  hw = xt.HardwareSpec.preset(args.preset)
  if args.ideal_periphery:
    hw = hw.replace(input_bits=None, adc_bits=None)
  steps = -(-len(y) // args.batch)

  def build():
    return zoo.build_model("vgg8", x.shape[1:], 10, args.width, "tf_keras", seed=args.seed)

  def compile_fit(model, lr, epochs, callbacks=()):
    schedule = keras.optimizers.schedules.CosineDecay(lr, epochs * steps)
    training.compile_classifier(model, keras, schedule)
    training.fit_seeded(model, x, y, keras, epochs, args.batch, args.seed, callbacks)

  def copy(model):
    c = keras.models.clone_model(model)
    c.set_weights(model.get_weights())
    return c

  def trained(label: str):
    path = out / "cache" / f"{label}.weights.h5"
    if not path.exists():
      start = time.perf_counter()
      if label == "dense":
        model = build()
        compile_fit(model, args.lr, args.dense_epochs)
      else:
        kind, _, level = label.partition("-hat-")
        aware = None if level == "none" else xt.HardwareAware(hw.replace(variation=float(level)),
                                                               seed=args.seed)
        base = copy(trained("dense"))
        if kind == "dense":
          wrapped = (xt.hardware_aware_model(base, spec, aware, seed=args.seed) if aware else
                     base)
        else:
          end = max(1, round(0.5 * args.epochs * steps))
          wrapped = xt.prune_crossbar(
              base, spec=spec, granularity="column", seed=args.seed, hardware_aware=aware,
              schedule=xt.CrossbarPolynomialDecay(args.reduction, 0, end,
                                                  frequency=args.frequency))
        pruned = wrapped is not base
        compile_fit(wrapped, args.finetune_lr, args.epochs,
                    [xt.UpdateCrossbarPruning()] if pruned else [])
        model = xt.strip_crossbar_pruning(wrapped) if pruned else wrapped
      xt.recalibrate_batchnorm(model, x[:2000], batch_size=500)
      model.save_weights(str(path))
      print(f"{label}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    model = build()
    model.load_weights(str(path))
    return model

  labels = [f"pruned-hat-{t}" for t in args.train_variations.split(",")]
  if args.dense_hat is not None:
    labels = ["dense-hat-none", f"dense-hat-{args.dense_hat}"] + labels
  for label in labels:
    model = trained(label)
    mapping = xt.build_mapping(model, spec, "column")
    training.compile_classifier(model, keras, 1e-3)
    for v in args.eval_variations.split(","):
      key = f"{label}|{v}"
      if key in results:
        continue
      start = time.perf_counter()
      accs = xt.analog_accuracy(model, mapping, hw.replace(variation=float(v)), x_test, y_test,
                                list(range(args.instances)), calibration=x[:args.calibration])
      results[key] = {"float": training.accuracy(model, x_test, y_test), "chip": accs,
                      "crossbars": mapping.totals.get("crossbars"),
                      "seconds": time.perf_counter() - start}
      results_path.write_text(json.dumps(results, indent=1))
      print(f"{key}: {results[key]['seconds']:.0f} s, float {results[key]['float']:.3f} "
            f"chip {statistics.mean(accs):.3f} ± {statistics.pstdev(accs):.3f}", flush=True)
  print(table(results, labels, args.eval_variations.split(",")))


def table(results: dict, labels, levels) -> str:
  """The markdown table: one row per model, one column per evaluation variation."""
  head = "| model (training variation) | float | " + " | ".join(
      f"chip, {float(v):.0%} variation" for v in levels) + " |"
  lines = [head, "|" + "---|" * (2 + len(levels))]
  for label in labels:
    row = [results.get(f"{label}|{v}") for v in levels]
    if not any(row):
      continue
    first = next(r for r in row if r)
    cells = [f"{statistics.mean(r['chip']):.3f} ± {statistics.pstdev(r['chip']):.3f}" if r
             else "" for r in row]
    lines.append(f"| {label} | {first['float']:.3f} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
