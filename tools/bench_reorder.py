"""Input feature-map reorder on a CNN trained on real data (Fashion-MNIST), issue 4.

Trains a small VGG-style tf_keras CNN (conv 32-32-pool-64-64-pool-dense 128-10) on a subset of
Fashion-MNIST (Debian package `dataset-fashion-mnist`; nothing is downloaded), then reports:

(a) the kept-energy ratio of the exact projection (docs/design.md, "The projection") of the pruned layers
    before and after `reorder_model`, at several reductions, column and crossbar grain, on
    crossbars where grouping matters;
(b) test accuracy of LGD-RPP pruning (column grain) with and without a materialised reorder
    before it, with the same fine-tuning budget, plus the dense accuracy and the accuracy of
    the one-shot exact projection (no fine-tuning) with and without reorder.

Layers pruned: every mapped layer but the first convolution (the default `CrossbarPolicy`).
"Kept energy" is weighted over those layers: sum of kept energies / sum of total energies.

  python tools/bench_reorder.py --out /tmp/bench_reorder.md \
      [--train-limit 24000] [--epochs 6] [--prune-epochs 3] [--prune-seeds 0,1,2]

Writes the markdown table to `--out` and the full numbers to the same path with `.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from xbar_tfmot.app.datasets import load_fashion_mnist  # noqa: E402
from xbar_tfmot.core.projection import crossbar_budget, project  # noqa: E402
from xbar_tfmot.core.schedules import CrossbarPolynomialDecay  # noqa: E402
from xbar_tfmot.core.spec import CrossbarSpec  # noqa: E402
from xbar_tfmot.models import introspection
from xbar_tfmot.models.reorder import reorder_model  # noqa: E402
from xbar_tfmot.pruning.api import prune_crossbar, strip_crossbar_pruning  # noqa: E402
from xbar_tfmot.pruning.callbacks import UpdateCrossbarPruning  # noqa: E402

SPECS = {
    "72x16 (Kin 8 ch, Kout 16)": CrossbarSpec(rows=72, cols=16),
    "direct Kin 16 / Kout 4": CrossbarSpec(rows=144, cols=4, mapping="direct", kin=16, kout=4),
}


def vgg(seed: int) -> keras.Model:
  """conv 32-32-pool-64-64-pool-dense 128-10 for 28x28x1 inputs."""
  keras.utils.set_random_seed(seed)
  L = keras.layers
  inp = keras.Input((28, 28, 1), name="image")
  x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)
  x = L.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
  x = L.MaxPooling2D(name="pool1")(x)
  x = L.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
  x = L.Conv2D(64, 3, padding="same", activation="relu", name="conv4")(x)
  x = L.MaxPooling2D(name="pool2")(x)
  x = L.Flatten(name="flatten")(x)
  x = L.Dense(128, activation="relu", name="fc1")(x)
  return keras.Model(inp, L.Dense(10, name="fc2")(x), name="fmnist_vgg")


def compile_model(model: keras.Model, lr: float) -> keras.Model:
  model.compile(keras.optimizers.Adam(lr),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
  logits = model.predict(x, batch_size=500, verbose=0)
  return float(np.mean(np.argmax(logits, axis=1) == y))


def copy_model(model: keras.Model) -> keras.Model:
  copy = keras.models.clone_model(model)
  copy.set_weights(model.get_weights())
  return copy


def pruned_layers(model: keras.Model) -> list[str]:
  """Mapped layers the default policy prunes: all but the first convolution."""
  mapped = [l.name for l in model.layers
            if introspection.layer_kind(l) in ("Conv2D", "Dense")
            and not introspection.unmapped_reason(l)]
  return mapped[1:]


def weighted_kept(model: keras.Model, ratios: dict[str, float]) -> float:
  energy = {n: float(np.sum(np.square(model.get_layer(n).kernel.numpy(), dtype=np.float64)))
            for n in ratios}
  return sum(ratios[n] * energy[n] for n in ratios) / sum(energy.values())


def kept_energy_table(model, names, reductions, seed):
  rows = []
  for label, spec in SPECS.items():
    for grain in ("column", "crossbar"):
      for r in reductions:
        start = time.perf_counter()
        _, res = reorder_model(model, spec, {n: r for n in names}, grain, materialize=True,
                               seed=seed)
        rows.append({
            "spec": label, "spec_string": spec.to_string(), "granularity": grain,
            "reduction": r, "kept_before": weighted_kept(model, res.kept_before),
            "kept_after": weighted_kept(model, res.kept_after),
            "per_layer_before": res.kept_before, "per_layer_after": res.kept_after,
            "skipped": res.skipped, "seconds": time.perf_counter() - start})
        print(f"  kept energy {label:26s} {grain:8s} r={r}: {rows[-1]['kept_before']:.4f} -> "
              f"{rows[-1]['kept_after']:.4f} ({rows[-1]['seconds']:.1f} s)", flush=True)
  return rows


def one_shot(model, names, spec, reduction, grain) -> keras.Model:
  """A copy with the exact projection applied once to every pruned layer (no fine-tuning)."""
  copy = copy_model(model)
  for n in names:
    layer = copy.get_layer(n)
    g = introspection.geometry_of(layer, spec)
    kernel = layer.kernel.numpy()
    mask = project(g, tf.constant(kernel), crossbar_budget(g.dense_crossbars, reduction), grain)
    layer.kernel.assign(kernel * mask.numpy())
  return copy


def prune_and_finetune(model, names, spec, args, data, seed: int) -> tuple[keras.Model, float]:
  (x, y), _ = data
  steps_per_epoch = -(-len(y) // args.batch)
  total = steps_per_epoch * args.prune_epochs
  end = max(1, int(total * args.prune_fraction))
  pruned = prune_crossbar(
      model, spec=spec, granularity="column", projection="rpp", seed=seed,
      schedule=CrossbarPolynomialDecay(final_reduction=args.reduction, begin_step=0, end_step=end,
                                       frequency=args.frequency))
  wrapped = sorted(l.name.removeprefix("crossbar_prune_") for l in pruned.layers
                   if type(l).__name__ == "CrossbarPrune")
  if wrapped != sorted(names):
    raise RuntimeError(f"prune_crossbar wrapped {wrapped}, expected {sorted(names)}")
  compile_model(pruned, args.finetune_lr)
  start = time.perf_counter()
  pruned.fit(x, y, batch_size=args.batch, epochs=args.prune_epochs, shuffle=True, verbose=0,
             callbacks=[UpdateCrossbarPruning()])
  return strip_crossbar_pruning(pruned), time.perf_counter() - start


def crossbars(model, names, spec) -> tuple[int, int]:
  used = dense = 0
  for n in names:
    layer = model.get_layer(n)
    c = introspection.geometry_of(layer, spec).counts(layer.kernel.numpy())
    used, dense = used + c.packed, dense + c.dense
  return used, dense


def markdown(result: dict) -> str:
  a = result["args"]
  lines = [
      f"Fashion-MNIST, {a['train_limit']} training images ({a['epochs']} epochs dense), "
      f"full 10k test set; model `{result['model']}`; seed {a['seed']}; "
      f"pruned layers {', '.join(result['pruned_layers'])} (first conv left dense).", "",
      "(a) Kept energy of the exact projection, weighted over the pruned layers", "",
      "| crossbar | grain | reduction | kept, no reorder | kept, reorder | gain |",
      "|---|---|---|---|---|---|"]
  for r in result["kept_energy"]:
    lines.append(f"| {r['spec']} | {r['granularity']} | {r['reduction']:.1f} | "
                 f"{r['kept_before']:.4f} | {r['kept_after']:.4f} | "
                 f"{100 * (r['kept_after'] - r['kept_before']):+.2f} pp |")
  acc = result["accuracy"]
  lines += [
      "", f"(b) Test accuracy, {acc['spec']} crossbar, column grain, reduction "
      f"{a['reduction']} of the pruned layers (LGD-RPP, {a['prune_epochs']} epochs, mask frozen "
      f"after {a['prune_fraction']:.0%} of them; mean ± std over seeds {a['prune_seeds']})", "",
      "| variant | test accuracy | crossbars (pruned layers) |", "|---|---|---|"]
  for row in acc["rows"]:
    value = f"{row['accuracy']:.4f}"
    if "per_seed" in row:
      value += (f" ± {row['std']:.4f} (seeds "
                + ", ".join(f"{k}: {v:.4f}" for k, v in row["per_seed"].items()) + ")")
    lines.append(f"| {row['variant']} | {value} | {row['crossbars']} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="markdown output; numbers go to <out>.json")
  parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: Debian's)")
  parser.add_argument("--train-limit", type=int, default=24000)
  parser.add_argument("--epochs", type=int, default=6, help="dense training epochs")
  parser.add_argument("--prune-epochs", type=int, default=3, help="pruning + fine-tuning epochs")
  parser.add_argument("--prune-fraction", type=float, default=0.5,
                      help="share of the pruning epochs over which the budget falls")
  parser.add_argument("--frequency", type=int, default=20, help="mask update every N steps")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--finetune-lr", type=float, default=5e-4)
  parser.add_argument("--reduction", type=float, default=0.7)
  parser.add_argument("--reductions", default="0.5,0.7,0.8")
  parser.add_argument("--seed", type=int, default=0,
                      help="model init, data subset, reorder search, dense fine-tuning")
  parser.add_argument("--prune-seeds", default="0,1,2",
                      help="RPP and fine-tuning shuffle seeds; accuracy is their mean +- std")
  args = parser.parse_args()
  t0 = time.perf_counter()
  print(f"seed {args.seed} (model init, shuffling, reorder search, RPP); tf {tf.__version__}, "
        f"python {platform.python_version()}", flush=True)

  (x, y), (x_test, y_test) = load_fashion_mnist(args.data)
  order = np.random.default_rng(args.seed).permutation(len(y))[: args.train_limit]
  x, y = x[order], y[order]
  data = ((x, y), (x_test, y_test))
  model = compile_model(vgg(args.seed), args.lr)
  model.fit(x, y, batch_size=args.batch, epochs=args.epochs, shuffle=True, verbose=0)
  names = pruned_layers(model)
  dense_acc = accuracy(model, x_test, y_test)
  print(f"dense: test accuracy {dense_acc:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

  reductions = [float(r) for r in args.reductions.split(",")]
  kept = kept_energy_table(model, names, reductions, args.seed)

  label, spec = next(iter(SPECS.items()))
  rows = [{"variant": "dense", "accuracy": dense_acc,
           "crossbars": "{1}/{1}".format(*crossbars(model, names, spec))}]
  reordered, res = reorder_model(model, spec, {n: args.reduction for n in names}, "column",
                                 materialize=True, seed=args.seed)
  same = float(np.max(np.abs(reordered.predict(x_test[:500], verbose=0)
                             - model.predict(x_test[:500], verbose=0))))
  pair = (weighted_kept(model, res.kept_before), weighted_kept(model, res.kept_after))
  print(f"reordered copy: max |output difference| {same:.2e}; kept {pair[0]:.4f} -> "
        f"{pair[1]:.4f}", flush=True)
  for variant, base in (("no reorder", model), ("reorder", reordered)):
    shot = one_shot(base, names, spec, args.reduction, "column")
    rows.append({"variant": f"one-shot exact projection, {variant}",
                 "accuracy": accuracy(shot, x_test, y_test),
                 "crossbars": "{0}/{1}".format(*crossbars(shot, names, spec))})
    print(f"  {rows[-1]['variant']}: {rows[-1]['accuracy']:.4f}", flush=True)
  keras.utils.set_random_seed(args.seed)
  tuned = compile_model(copy_model(model), args.finetune_lr)
  tuned.fit(x, y, batch_size=args.batch, epochs=args.prune_epochs, shuffle=True, verbose=0)
  rows.insert(1, {"variant": f"dense + the same {args.prune_epochs} fine-tuning epochs",
                  "accuracy": accuracy(tuned, x_test, y_test),
                  "crossbars": "{1}/{1}".format(*crossbars(tuned, names, spec))})
  print(f"  {rows[1]['variant']}: {rows[1]['accuracy']:.4f}", flush=True)
  seeds = [int(s) for s in args.prune_seeds.split(",")]
  for variant, base in (("no reorder", model), ("reorder", reordered)):
    accs, counts, seconds = [], set(), 0.0
    for seed in seeds:
      keras.utils.set_random_seed(seed)  # fine-tuning shuffle; RPP takes `seed` too
      stripped, took = prune_and_finetune(copy_model(base), names, spec, args, data, seed)
      accs.append(accuracy(stripped, x_test, y_test))
      counts.add("{0}/{1}".format(*crossbars(stripped, names, spec)))
      seconds += took
      print(f"  LGD-RPP, {variant}, seed {seed}: {accs[-1]:.4f} ({took:.0f} s)", flush=True)
    rows.append({"variant": f"LGD-RPP + fine-tune, {variant}", "accuracy": float(np.mean(accs)),
                 "std": float(np.std(accs)), "per_seed": dict(zip(seeds, accs)),
                 "crossbars": " ".join(sorted(counts)), "seconds": seconds})

  result = {"model": model.name, "args": vars(args), "pruned_layers": names,
            "kept_energy": kept,
            "accuracy": {"spec": label, "spec_string": spec.to_string(), "rows": rows,
                         "reorder_output_max_abs_diff": same},
            "seconds": time.perf_counter() - t0}
  text = markdown(result)
  print(text)
  out = pathlib.Path(args.out)
  out.write_text(text)
  out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
  print(f"wrote {out} and {out.with_suffix('.json')} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
