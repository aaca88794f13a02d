"""The tools/ scripts as modules, for the tests that run a small part of them."""

import importlib.util
import pathlib

TOOLS = pathlib.Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str):
  """`tools/NAME.py` loaded as a module (tools/ is not a package)."""
  spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
