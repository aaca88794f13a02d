"""SIGKILL at random points of `xt.export` (tools/kill_export.py): the target is absent or a
complete export that passes verification, and no temporary folder survives the next export.
A few kills here; the full run is the tool's (docs/reliability.md)."""

import importlib.util
import pathlib

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "kill_export.py"


def load_tool():
  spec = importlib.util.spec_from_file_location("kill_export", TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_killed_exports_leave_a_complete_target_or_none(tmp_path):
  counts = load_tool().run(kills=5, seed=1, workdir=tmp_path)
  assert sum(counts.values()) == 5
