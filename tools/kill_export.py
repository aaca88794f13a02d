"""SIGKILL `xt.export` at random points and check what a user finds afterwards.

A child process exports one small model again and again into one folder (`overwrite=True`);
the parent kills it at a random moment of an export, then checks that the folder is absent
or a complete export that passes `xt.verify`, and that the next export leaves no temporary
or replaced folder beside it. The suite runs a few kills (tests/test_export_kill.py); the
full run, whose result docs/reliability.md quotes, is

  .venv/bin/python tools/kill_export.py --kills 30
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

SPEC_TEXT = "36x8"


def small_model():
  import keras
  import numpy as np
  keras.utils.set_random_seed(0)
  model = keras.Sequential([
      keras.Input((8, 8, 4)),
      keras.layers.Conv2D(8, 3, name="conv"),
      keras.layers.Flatten(),
      keras.layers.Dense(10, name="fc"),
  ], name="small")
  fc = model.get_layer("fc").kernel
  fc.assign(fc * (np.arange(fc.shape[0])[:, None] % 72 < 36))  # every second crossbar empty
  return model


def child(target: str) -> None:
  import xbar_tfmot as xt
  model, spec = small_model(), xt.CrossbarSpec.from_string(SPEC_TEXT)
  start = time.perf_counter()
  xt.export(model, target, spec, overwrite=True)
  print(f"ready {time.perf_counter() - start:.3f}", flush=True)
  while True:
    xt.export(model, target, spec, overwrite=True)


def _start(target: pathlib.Path) -> tuple[subprocess.Popen, float]:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen([sys.executable, __file__, "--child", str(target)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
  line = proc.stdout.readline()
  if not line.startswith("ready"):
    proc.kill()
    raise RuntimeError(f"the exporting child died before its first export: {line!r}")
  return proc, float(line.split()[1])


def run(kills: int, seed: int, workdir: pathlib.Path) -> dict[str, int]:
  """Kills `kills` children; raises AssertionError on a broken target or a leftover folder."""
  import xbar_tfmot as xt
  rng = random.Random(seed)
  target = workdir / "export"
  model, spec = small_model(), xt.CrossbarSpec.from_string(SPEC_TEXT)
  counts = {"complete": 0, "absent": 0}
  for _ in range(kills):
    proc, seconds = _start(target)
    time.sleep(rng.uniform(0.0, 1.5 * seconds))  # anywhere in the next export or two
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if target.exists():
      result = xt.verify(str(target), samples=2)
      assert result.ok, f"a killed export left a target that fails verification:\n{result.format()}"
      counts["complete"] += 1
    else:
      counts["absent"] += 1
    xt.export(model, target, spec, overwrite=True)
    left = sorted(p.name for p in workdir.iterdir() if p.name != target.name)
    assert not left, f"a killed export's folders survived the next export: {left}"
  return counts


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=30)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--child", metavar="TARGET", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child)
    return
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    counts = run(args.kills, args.seed, pathlib.Path(tmp))
  print(f"{args.kills} kills (seed {args.seed}): target complete and verified {counts['complete']}, "
        f"absent {counts['absent']}, broken 0, leftover folders 0; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
