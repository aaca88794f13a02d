"""Dead output channels after a one-shot column-grain cut, and the crossbars removing them frees
(issue 28, item 4; docs/design.md, "Dead output channels (issue 28, item 4)").

Trains a zoo model briefly on Fashion-MNIST (Debian's `dataset-fashion-mnist`, nothing is
downloaded), cuts it once with `xt.one_shot_masks` at column grain under a `global_score`
policy (magnitude score), applies the masks, fine-tunes `--finetune-epochs` with the masks held
(BatchNorm re-estimated after each training), then runs `xt.find_dead_channels` and
`xt.remove_dead_channels` (`how="remove"` and `how="zero"`): how many output channels are
dead, how many are removable exactly, and the whole model's dense and packed crossbar counts
before and after, with the test accuracy of each model (equal up to float rounding).

  .venv/bin/python tools/bench_dead_channels.py [--model vgg8 --width 0.25] [--spec 72x16]
      [--reduction 0.85] [--train-limit 12000] [--epochs 2] [--finetune-epochs 1] [--seed 0]
      [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

import xbar_tfmot as xt  # noqa: E402
from xbar_tfmot.app import datasets, training, zoo  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="vgg8")
  parser.add_argument("--width", type=float, default=0.25)
  parser.add_argument("--flavour", default="tf_keras", choices=("tf_keras", "keras3"))
  parser.add_argument("--spec", default="72x16", help="CrossbarSpec string or preset name")
  parser.add_argument("--reduction", type=float, default=0.85)
  parser.add_argument("--train-limit", type=int, default=12000)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--finetune-epochs", type=int, default=1,
                      help="epochs after the cut with the masks re-applied after every batch")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="write the numbers as JSON here too")
  args = parser.parse_args(argv)
  start = time.time()
  spec = (xt.CrossbarSpec.from_string(args.spec) if any(c.isdigit() for c in args.spec[:1])
          else xt.CrossbarSpec.preset(args.spec))
  (x, y), (xt_test, yt_test) = datasets.load_fashion_mnist(limit=args.train_limit)
  model = zoo.build_model(args.model, x.shape[1:], 10, args.width, args.flavour, args.seed)
  if args.flavour == "tf_keras":
    import tf_keras as keras
  else:
    import keras
  training.compile_classifier(model, keras, 1e-3)
  model.fit(x, y, batch_size=128, epochs=args.epochs, verbose=0, shuffle=True)
  # a short training leaves BatchNorm's moving statistics behind: re-estimate them (training
  # images), here and after the cut, so that the accuracies mean something
  xt.recalibrate_batchnorm(model, x[:4096])
  dense_accuracy = training.accuracy(model, xt_test, yt_test)
  policy = xt.CrossbarPolicy(mode="global_score", score="magnitude")
  masks = xt.one_shot_masks(model, spec, policy, args.reduction, "column")
  xt.apply_masks(model, masks)
  one_shot_accuracy = training.accuracy(model, xt_test, yt_test)
  if args.finetune_epochs:  # biases and BatchNorm move; the pruned (and dead) columns stay 0
    hold = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: xt.apply_masks(model, masks))
    model.fit(x, y, batch_size=128, epochs=args.finetune_epochs, verbose=0, shuffle=True,
              callbacks=[hold])
  xt.recalibrate_batchnorm(model, x[:4096])
  pruned_accuracy = training.accuracy(model, xt_test, yt_test)
  found = xt.find_dead_channels(model, spec)
  result = {
      "model": f"{args.model}:{args.width}", "flavour": args.flavour, "spec": spec.to_string(),
      "reduction": args.reduction, "train_images": int(len(x)), "epochs": args.epochs,
      "finetune_epochs": args.finetune_epochs,
      "accuracy": {"dense": dense_accuracy, "one_shot": one_shot_accuracy,
                   "pruned": pruned_accuracy},
      "dead": found.dead, "removable": found.removable,
      "kept": {f"{'+'.join(c.producers)}[{c.channel}]": c.reason
               for c in found.channels if not c.removable},
      "partly_dead": {k: list(v) for k, v in found.partly_dead.items()},
      "crossbars": {"pruned": {"dense": found.total("dense"), "packed": found.total("packed")}},
  }
  summaries = []
  for how in ("remove", "zero"):
    new, report = xt.remove_dead_channels(model, spec, how=how)
    summaries.append(f"how={how}: {report.summary()}")
    result["crossbars"][how] = {"dense": report.total("dense", True),
                                "packed": report.total("packed", True),
                                "grown": list(report.grown)}
    result["accuracy"][how] = training.accuracy(new, xt_test, yt_test)
    per_layer = result.setdefault(  # {layer: [[dense, packed] pruned, remove, zero]}
        "per_layer_dense_packed", {n: [[c.dense, c.packed]] for n, c in
                                   report.counts_before.items()})
    for n, c in report.counts_after.items():
      per_layer[n].append([c.dense, c.packed])
    outputs = np.abs(new.predict(xt_test[:256], verbose=0) - model.predict(xt_test[:256],
                                                                          verbose=0))
    result[f"max_abs_diff_{how}"] = float(outputs.max())
  result["per_layer_dead"] = {}
  for c in found.channels:
    key = "+".join(c.producers)
    result["per_layer_dead"][key] = result["per_layer_dead"].get(key, 0) + 1
  result["wall_s"] = round(time.time() - start, 1)
  print(json.dumps(result, indent=1))
  print("\n".join(summaries))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
