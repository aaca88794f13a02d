"""Keras Applications through the whole chain: report, reorder, prune, strip, export, verify.

Each application is built with `weights=None`, a small input, 10 classes and logits out
(`classifier_activation=None`: with the default softmax the first run's MobileNetV2 agreed to
a relative difference of exactly 0, a saturated output on which any artefact agrees; the
`logit_spread` of the JSON rows shows that the compared outputs vary), in each Keras flavour,
and goes through:

  report   `crossbar_report` on the dense model (mapped and unmapped layers, dense crossbars)
  reorder  `reorder_model` at 50% (materialised; a short swap search)
  prune    `prune_crossbar` (column grain, exact projection to 50% of every layer's crossbars)
           and `fit` for a few steps on Fashion-MNIST images (padded to 32x32, three channels,
           resized to the application's input)
  strip    `strip_crossbar_pruning`
  export   `xt.export` (SavedModel, TFLite, JSON)
  verify   `xt.verify` (Keras, crossbar-explicit, SavedModel and TFLite outputs agree)

A step that fails stops the row and records its error. Every case runs in its own process
(with a time limit), so one application's crash or memory does not end the run:

  nice -n 10 .venv/bin/python tools/check_applications.py              # every application
  .venv/bin/python tools/check_applications.py --apps MobileNetV2 --flavours keras3
  .venv/bin/python tools/check_applications.py --cases ResNet50:keras3,VGG16:tf_keras
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

# name: (constructor arguments, input size); the smallest sizes the applications accept.
APPLICATIONS: dict[str, tuple[dict[str, Any], int]] = {
    "MobileNetV2": ({"alpha": 0.35}, 32),
    "MobileNet": ({"alpha": 0.25}, 32),
    "MobileNetV3Small": ({"minimalistic": True}, 32),
    "ResNet50": ({}, 32),
    "ResNet50V2": ({}, 32),
    "VGG16": ({}, 32),
    "DenseNet121": ({}, 32),
    "EfficientNetB0": ({}, 32),
    "EfficientNetV2B0": ({}, 32),
    "NASNetMobile": ({}, 32),
    "Xception": ({}, 71),
    "InceptionV3": ({}, 75),
    "ConvNeXtTiny": ({}, 32),
    "RegNetX002": ({}, 32),  # tf_keras only
}
FLAVOURS = ("tf_keras", "keras3")
STEPS = ("report", "reorder", "prune", "strip", "export", "verify")
CLASSES = 10
REDUCTION = 0.5


def _images(count: int, size: int):
  """`count` Fashion-MNIST training images and labels, as `(count, size, size, 3)` in [0, 1]."""
  import numpy as np
  import tensorflow as tf

  from xbar_tfmot.app.datasets import load_fashion_mnist
  (x, y), _ = load_fashion_mnist(limit=count)
  x = np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
  if size != 32:
    x = tf.image.resize(x, (size, size)).numpy()
  return x.astype(np.float32), y


def check(name: str, flavour: str, spec: str = "128x128", steps: int = 2, batch: int = 8,
          workdir: str | None = None) -> dict[str, Any]:
  """One application in one flavour through the chain; `{column: value}` of its table row
  (each step `ok`, its error, or `-` once an earlier step failed)."""
  import numpy as np

  from xbar_tfmot.core.schedules import CrossbarConstant
  from xbar_tfmot.core.spec import parse_spec
  from xbar_tfmot.export.exporter import export
  from xbar_tfmot.export.verification import random_inputs, verify
  from xbar_tfmot.models.introspection import keras_module
  from xbar_tfmot.models.reorder import reorder_model
  from xbar_tfmot.models.report import crossbar_report
  from xbar_tfmot.pruning.api import prune_crossbar, strip_crossbar_pruning

  kwargs, size = APPLICATIONS[name]
  crossbar = parse_spec(spec)
  row: dict[str, Any] = {"application": name, "flavour": flavour, "input": size,
                         "mapped": None, "unmapped": None, "dense": None, "pruned": None,
                         **{s: "-" for s in STEPS}}
  state: dict[str, Any] = {}
  K = keras_module(flavour)
  if not hasattr(K.applications, name):
    row["report"] = f"not in {flavour}"
    return row

  def report():
    K.utils.set_random_seed(0)
    model = getattr(K.applications, name)(weights=None, input_shape=(size, size, 3),
                                          classes=CLASSES, classifier_activation=None, **kwargs)
    result = crossbar_report(model, crossbar)
    row.update(mapped=len(result.mapped), unmapped=len(result.unmapped),
               dense=result.total("dense"))
    state["model"] = model

  def reorder():
    state["model"], result = reorder_model(state["model"], crossbar, REDUCTION, "column",
                                           rounds=10, patience=3)
    return f"ok ({len(result.permutations)} layers, {len(result.skipped)} skipped)"

  def prune():
    pruned = prune_crossbar(state["model"], crossbar, "column", projection="topk", seed=0,
                            schedule=CrossbarConstant(REDUCTION, 0, steps - 1, 1))
    pruned.compile(K.optimizers.SGD(1e-3), K.losses.SparseCategoricalCrossentropy(True))
    from xbar_tfmot.pruning import UpdateCrossbarPruning
    x, y = _images(steps * batch, size)
    pruned.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
               callbacks=[UpdateCrossbarPruning(flavour=flavour)])
    state["model"] = pruned

  def strip():
    state["model"] = strip_crossbar_pruning(state["model"])

  def do_export():
    folder = pathlib.Path(workdir or tempfile.mkdtemp()) / f"{name}_{flavour}"
    result = export(state["model"], folder, crossbar, "column", overwrite=True)
    row["pruned"] = result.mapping.totals["crossbars"]
    state["folder"] = folder

  def do_verify():
    result = verify(str(state["folder"]), samples=2)
    worst = max(rel for _, rel in result.differences.values())
    row["worst_abs"] = max(abs_diff for abs_diff, _ in result.differences.values())
    logits = np.asarray(state["model"](random_inputs(state["model"], 2)["input_0"]))
    # how much the logits vary between the inputs compared: the comparison means something
    # only where this is far above worst_abs
    row["logit_spread"] = float(np.ptp(logits))
    return f"ok (rel {worst:.1g})" if result.ok else f"MISMATCH (rel {worst:.2g})"

  for step, run in zip(STEPS, (report, reorder, prune, strip, do_export, do_verify)):
    start = time.perf_counter()
    try:
      verdict = run() or "ok"
    except Exception as err:  # noqa: BLE001 - the table records what failed and why
      row[step] = f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
      break
    row[step] = verdict
    row[f"{step}_s"] = round(time.perf_counter() - start, 1)
    if verdict.startswith("MISMATCH"):
      break
  return row


def _run_case(name: str, flavour: str, timeout: float, workdir: str) -> dict[str, Any]:
  cmd = [sys.executable, __file__, "--case", name, flavour, "--workdir", workdir]
  start = time.perf_counter()
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"application": name, "flavour": flavour, "report": f"timed out after {timeout:.0f} s"}
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if done.returncode or not lines:
    tail = " ".join(done.stderr.split()[-30:])
    return {"application": name, "flavour": flavour,
            "report": f"process exited {done.returncode}: {tail[:200]}"}
  row = json.loads(lines[-1])
  row["seconds"] = round(time.perf_counter() - start)
  return row


def format_table(rows: list[dict[str, Any]]) -> str:
  """A Markdown table: application, flavour, mapped layers, crossbars dense/pruned, steps."""
  head = ["application", "flavour", "input", "mapped (unmapped)", "crossbars dense / pruned",
          *STEPS, "s"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    mapped = "" if r.get("mapped") is None else f"{r['mapped']} ({r['unmapped']})"
    xbars = "" if r.get("dense") is None else f"{r['dense']} / {r.get('pruned') or '-'}"
    cells = [r["application"], r["flavour"], str(r.get("input", "")), mapped, xbars,
             *[str(r.get(s, "-")).replace("|", "/") for s in STEPS], str(r.get("seconds", ""))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--apps", default=",".join(APPLICATIONS),
                      help="comma-separated application names (default: all)")
  parser.add_argument("--flavours", default=",".join(FLAVOURS))
  parser.add_argument("--cases", help="comma-separated APP:FLAVOUR pairs, instead of every "
                      "application in every flavour of --apps and --flavours")
  parser.add_argument("--timeout", type=float, default=900, help="seconds per case")
  parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON lines")
  parser.add_argument("--case", nargs=2, metavar=("APP", "FLAVOUR"), help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.case:
    print(json.dumps(check(*args.case, workdir=args.workdir)), flush=True)
    return 0
  if args.cases:
    cases = [tuple(c.split(":", 1)) for c in args.cases.split(",") if c]
  else:
    cases = [(a, f) for a in args.apps.split(",") if a for f in args.flavours.split(",") if f]
  bad = sorted({c for c in cases if len(c) != 2 or c[0] not in APPLICATIONS or
                c[1] not in FLAVOURS})
  if bad:
    parser.error(f"unknown cases {bad}; valid: applications {', '.join(APPLICATIONS)} and "
                 f"flavours {', '.join(FLAVOURS)}")
  rows = []
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    for app, flavour in cases:
      rows.append(_run_case(app, flavour, args.timeout, workdir))
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
      if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
          f.write(json.dumps(rows[-1]) + "\n")
      for folder in pathlib.Path(workdir).iterdir():  # exports are large: keep none
        shutil.rmtree(folder, ignore_errors=True)
  print(format_table(rows))
  failed = sum(1 for r in rows if r.get("verify", "-").split(" ")[0] != "ok")
  print(f"\n{len(rows)} cases, {len(rows) - failed} through every step, "
        f"{time.perf_counter() - start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
