"""SIGKILL at random points of `xt.export` (tools/kill_export.py): the target is absent or a
complete export that passes verification, and no temporary folder survives the next export.
A few kills here; the full run is the tool's (docs/reliability.md)."""

from _tools import load_tool


def test_killed_exports_leave_a_complete_target_or_none(tmp_path):
  counts = load_tool("kill_export").run(kills=5, seed=1, workdir=tmp_path)
  assert sum(counts.values()) == 5
