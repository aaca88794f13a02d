"""The tools/ scripts as modules, for the tests that run a small part of them."""

import importlib.util
import os
import pathlib
import subprocess
import sys

TOOLS = pathlib.Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str):
  """`tools/NAME.py` loaded as a module (tools/ is not a package)."""
  spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_tool(name: str, *args: str, check: bool = True, timeout: int = 1800):
  """`tools/NAME.py ARGS` in a subprocess on the CPU from the project root; `check`: assert it
  succeeded, showing the end of its output otherwise."""
  env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
  result = subprocess.run([sys.executable, str(TOOLS / f"{name}.py"), *args], cwd=TOOLS.parent,
                          env=env, capture_output=True, text=True, timeout=timeout)
  if check:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result
