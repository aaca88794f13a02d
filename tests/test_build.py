"""BUILD mirrors the tree: every test file has a py_test, and `bazel query //...` passes."""

import ast
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def build_calls():
  """(rule, name, srcs) of every rule call in BUILD, read with Python's parser."""
  tree = ast.parse((ROOT / "BUILD").read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      kwargs = {k.arg: k.value for k in node.keywords}
      name = ast.literal_eval(kwargs["name"]) if "name" in kwargs else None
      srcs = kwargs.get("srcs")
      yield node.func.id, name, ast.literal_eval(srcs) if isinstance(srcs, ast.List) else None


def test_every_test_file_has_a_py_test():
  tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py")}
  targets = {}
  for rule, name, srcs in build_calls():
    if rule == "py_test":
      assert srcs and len(srcs) == 1, f"py_test {name} must list its one test file"
      targets[srcs[0]] = name
  assert tests == set(targets), f"missing: {tests - set(targets)}, stale: {set(targets) - tests}"
  for src, name in targets.items():
    assert name == pathlib.Path(src).stem


@pytest.mark.skipif(shutil.which("bazel") is None, reason="bazel is not installed")
def test_bazel_query_passes(tmp_path):
  result = subprocess.run(
      ["bazel", f"--output_user_root={tmp_path}", "--batch", "query", "//...", "--noshow_progress"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  listed = set(result.stdout.split())
  assert "//:xbar_tfmot" in listed
  assert {f"//:{name}" for rule, name, _ in build_calls() if rule == "py_test"} <= listed
