"""One worker of a `multi_worker` xbar-prune run, in its own process (TF_CONFIG must be set
before TensorFlow starts). argv: workdir, index, ports (comma-separated; index 0 is the chief),
then `field=value` overrides of the tiny config (`train__baseline_epochs=1`). With one port the
run is the single-device one (no TF_CONFIG, strategy default). Prints one JSON line (the
chief's crossbars per layer and accuracy; `{}` on a worker); a lost worker exits 5."""

import json
import os
import pathlib
import sys

workdir, index, ports, *fields = sys.argv[1:]
ports = ports.split(",")
if len(ports) > 1:
  os.environ["TF_CONFIG"] = json.dumps({
      "cluster": {"worker": [f"localhost:{p}" for p in ports]},
      "task": {"type": "worker", "index": int(index)}})

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _configs import load_config  # noqa: E402
from xbar_tfmot.app import distribution, pipeline  # noqa: E402


def value(text: str):
  try:
    return json.loads(text)
  except ValueError:
    return text


overrides = dict(f.split("=", 1) for f in fields)
config = load_config(workdir=workdir, train__verbose=0, report__plots=False,
                     export__formats="json", export__verify=False,
                     **({"train__strategy": "multi_worker"} if len(ports) > 1 else {}),
                     **{k: value(v) for k, v in overrides.items()})
try:
  metrics = pipeline.run(config, log=lambda s: print(s, file=sys.stderr, flush=True))
except distribution.WorkerLost as e:
  print(f"worker lost: {e}", file=sys.stderr, flush=True)
  sys.exit(5)
out = {}
if metrics:
  out = {"crossbars": {row["name"]: row["pruned"] for row in metrics["layers"]},
         "accuracy": metrics["accuracy"]["pruned"],
         "dense_accuracy": metrics["accuracy"]["dense"],
         "reduction": metrics["crossbars"]["reduction"]}
print(json.dumps(out), flush=True)
