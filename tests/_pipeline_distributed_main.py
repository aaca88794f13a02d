"""Run in its own process (logical devices must be set before TensorFlow initialises): the
tiny xbar-prune config once on one device and once mirrored over two logical CPUs.

argv: flavour, workdir. Prints one JSON line: each run's crossbars per layer and accuracy.
"""

import json
import pathlib
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _configs import load_config  # noqa: E402
from xbar_tfmot.app import pipeline  # noqa: E402  (after the device set-up)


def tiny(flavour: str, workdir: pathlib.Path, **train):
  return load_config(workdir=str(workdir), flavour=flavour, train__verbose=0,
                     train__baseline_epochs=2, report__plots=False,
                     export__formats="saved_model,json",
                     **{f"train__{k}": v for k, v in train.items()})


def main(flavour: str, workdir: str) -> None:
  out = {}
  for name, train in (("default", {}), ("mirrored", {"strategy": "mirrored",
                                                     "devices": "/cpu:0,/cpu:1"})):
    metrics = pipeline.run(tiny(flavour, pathlib.Path(workdir) / name, **train), log=lambda s: None)
    out[name] = {"crossbars": {row["name"]: row["pruned"] for row in metrics["layers"]},
                 "accuracy": metrics["accuracy"]["pruned"],
                 "verified": metrics["export"]["verified"]}
  out["replicas"] = pipeline.Pipeline(tiny(flavour, pathlib.Path(workdir) / "x", strategy="mirrored",
                                           devices="/cpu:0,/cpu:1"))._strategy().num_replicas_in_sync
  print(json.dumps(out))


if __name__ == "__main__":
  main(*sys.argv[1:])
