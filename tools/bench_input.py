"""The fit phase of the default `xbar-prune` run with numpy input against the tf.data input.

Times `training.fit_epochs` (what the pipeline's baseline, pruning and fine-tuning call) on the
default config's model, data, batch and learning rate (`configs/fashion_mnist_vgg8.py`: VGG8
at width 0.25 on Fashion-MNIST, batch 128), once with `input="numpy"` (the arrays handed to Keras, as before the tf.data
pipeline) and once with `input="tf_data"` (`datasets.input_pipeline`), in interleaved rounds
so that drift of a shared machine hits both alike. Every round trains a fresh compiled model
for `--epochs` epochs (the first epoch of each includes tracing, as in the pipeline) and
reports wall time and process CPU time; the summary gives the median of the per-round ratios
tf_data / numpy with their range.

  python tools/bench_input.py [--rounds 3] [--epochs 1] [--train-size 60000] [--flavour tf_keras]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--epochs", type=int, default=1)
  p.add_argument("--train-size", type=int, default=60000, help="first N training images")
  p.add_argument("--flavour", choices=("tf_keras", "keras3"), default="tf_keras")
  p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: Debian's)")
  args = p.parse_args(argv)
  for flag in ("rounds", "epochs", "train_size"):
    if getattr(args, flag) < 1:
      p.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} is invalid; valid: >= 1")
  return args


CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_vgg8.py"


def default_config():
  """`get_config()` of the default run's config file."""
  namespace: dict = {}
  exec(compile(CONFIG.read_text(), str(CONFIG), "exec"), namespace)
  return namespace["get_config"]()


def main(argv=None) -> None:
  args = parse(argv)
  c = default_config()
  from xbar_tfmot.app import datasets, training, zoo
  from xbar_tfmot.models import introspection
  keras = introspection.keras_module(args.flavour)
  (x, y), _ = datasets.load_fashion_mnist(args.data, limit=args.train_size)
  print(f"{c.model.name} (width {c.model.width}) on {len(y)} Fashion-MNIST images, batch "
        f"{c.train.batch_size}, {args.epochs} "
        f"epoch(s) a round, {args.flavour}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at start")
  times: dict[str, list[tuple[float, float]]] = {"numpy": [], "tf_data": []}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for name in (("numpy", "tf_data") if r % 2 == 0 else ("tf_data", "numpy")):
        model = zoo.build_model(c.model.name, x.shape[1:], 10, c.model.width, args.flavour,
                                seed=c.seed)
        training.compile_classifier(model, keras, c.train.learning_rate, c.train.optimizer)
        folder = training.RunFolder(pathlib.Path(tmp) / f"{name}{r}", keras.models.load_model)
        wall, cpu = time.perf_counter(), time.process_time()
        training.fit_epochs(model, x, y, keras, epochs=args.epochs,
                            batch_size=c.train.batch_size, seed=c.seed, phase=0,
                            run_folder=folder, learning_rate=lambda e: c.train.learning_rate,
                            input=name)
        times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        print(f"round {r + 1} {name:8s} wall {times[name][-1][0]:7.1f} s  cpu "
              f"{times[name][-1][1]:7.1f} s", flush=True)
  print("\n| input | wall s (median) | cpu s (median) |\n|---|---|---|")
  for name, rows in times.items():
    print(f"| {name} | {statistics.median(w for w, _ in rows):.1f} | "
          f"{statistics.median(c for _, c in rows):.1f} |")
  for i, label in ((0, "wall"), (1, "cpu")):
    ratios = [t[i] / n[i] for t, n in zip(times["tf_data"], times["numpy"])]
    print(f"tf_data / numpy {label}: median {statistics.median(ratios):.3f}, range "
          f"{min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds")
  print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
  main()
