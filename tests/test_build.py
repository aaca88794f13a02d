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


# The tiers, lowest first. A module may import its own tier and lower ones; `xbar_tfmot`
# (the public API in __init__.py) sits above export; nothing but app imports app.
TIERS = {"compat": 0, "quiet": 0, "core": 0, "models": 1, "pruning": 2, "export": 3,
         "xbar_tfmot": 4, "app": 5}
KERAS = ("keras", "tf_keras", "tensorflow_model_optimization")
APP_ONLY = ("absl", "ml_collections", "matplotlib", "sklearn")


def tier_of(module: str) -> str:
  """`xbar_tfmot.models.reorder` -> `models`, `xbar_tfmot._compat` -> `compat`
  (`_quiet` -> `quiet`), and the
  package itself or a public name of it (`xbar_tfmot.prune_crossbar`) -> `xbar_tfmot`."""
  parts = module.split(".") + [""]
  if parts[1] in ("_compat", "_quiet"):
    return parts[1][1:]
  return parts[1] if parts[1] in TIERS else "xbar_tfmot"


def imports_of(path: pathlib.Path, module: str) -> set[str]:
  """Every module a file imports, at module level or inside functions."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      if node.level:
        base = ".".join(module.split(".")[:-node.level] + [node.module])
      out |= {f"{base}.{alias.name}" for alias in node.names}
  return out


def package_imports() -> dict[str, set[str]]:
  """`{module: imported modules}` for every module of the xbar_tfmot package."""
  out = {}
  for path in (ROOT / "xbar_tfmot").rglob("*.py"):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    module = ".".join(parts)
    out[module] = imports_of(path, module)
  return out


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
  """What breaks the tiers in a module graph (see TIERS, KERAS, APP_ONLY)."""
  out = []
  for module, imported in sorted(graph.items()):
    tier = tier_of(module)
    for name in sorted(imported):
      root = name.split(".")[0]
      if tier == "core" and root in KERAS:
        out.append(f"{module} (core) imports {name}")
      if tier != "app" and root in APP_ONLY:
        out.append(f"{module} imports the application dependency {name}")
      if root != "xbar_tfmot":
        continue
      target = tier_of(name)
      if target == "app" and tier != "app":
        out.append(f"{module} ({tier}) imports the application tier: {name}")
      elif TIERS[target] > TIERS[tier]:
        out.append(f"{module} ({tier}) imports the higher tier {target}: {name}")
  return out


def test_the_package_keeps_its_tiers():
  graph = package_imports()
  assert {tier_of(m) for m in graph} <= set(TIERS), sorted({tier_of(m) for m in graph})
  assert layering_violations(graph) == []


@pytest.mark.parametrize("module, imported, expected", [
    ("xbar_tfmot.core.spec", {"keras"}, "(core) imports keras"),
    ("xbar_tfmot.core.policy", {"tensorflow_model_optimization.python"}, "(core) imports"),
    ("xbar_tfmot.core.mapping", {"xbar_tfmot.models.introspection"}, "higher tier models"),
    ("xbar_tfmot.models.report", {"xbar_tfmot.pruning.api"}, "higher tier pruning"),
    ("xbar_tfmot.pruning.api", {"xbar_tfmot.export.exporter"}, "higher tier export"),
    ("xbar_tfmot.export.exporter", {"xbar_tfmot.app.datasets"}, "imports the application tier"),
    ("xbar_tfmot", {"xbar_tfmot.app.pipeline"}, "imports the application tier"),
    ("xbar_tfmot.models.channels", {"matplotlib.pyplot"}, "application dependency"),
    ("xbar_tfmot._compat", {"xbar_tfmot.models.introspection"}, "higher tier models"),
])
def test_the_checker_finds_planted_violations(module, imported, expected):
  graph = {module: imported, "xbar_tfmot.app.pipeline": {"xbar_tfmot.core.spec", "absl"}}
  found = layering_violations(graph)
  assert len(found) == 1 and expected in found[0], found


def test_build_deps_follow_the_tiers():
  """Each subpackage's py_library depends on exactly the tiers its modules import."""
  deps = {}
  tree = ast.parse((ROOT / "BUILD").read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "py_library":
      kwargs = {k.arg: k.value for k in node.keywords}
      name = ast.literal_eval(kwargs["name"])
      if name in TIERS:
        deps[name] = {d.lstrip(":") for d in ast.literal_eval(kwargs.get("deps", ast.List([])))}
  assert set(deps) == set(TIERS)
  used: dict[str, set[str]] = {name: set() for name in TIERS}
  for module, imported in package_imports().items():
    for name in imported:
      if name.split(".")[0] == "xbar_tfmot":
        used[tier_of(module)].add(tier_of(name))
  for name in TIERS:
    used[name].discard(name)
    assert deps[name] == used[name], f"BUILD :{name} deps {sorted(deps[name])}, imports " \
                                     f"{sorted(used[name])}"


# tools/ are clients of the package (docs/contributing.md, "The layering rule"): they import the
# public API (`xbar_tfmot`) and public names of the library tiers, and of the application only
# its services below; never a private name (a leading underscore) of xbar_tfmot.
TOOLS_MAY_IMPORT_APP = {
    "datasets": "the offline data loaders",
    "zoo": "the model builders",
    "training": "compile, fit, accuracy and the run folder's JSON and model I/O",
    "plots": "the figures the report draws, drawn alike for a benchmark",
    "workdir_lock": "the project's one lock (`FileLock`), for a results file runs share",
}
# A tool whose subject is an application module may import it too.
TOOL_SUBJECTS = {"fuzz_spec.py": {"configuration"}}


def tool_violations(source: str, tool: str) -> list[str]:
  """What breaks the tools' rule in one tool's source: an app module outside
  TOOLS_MAY_IMPORT_APP (and the tool's TOOL_SUBJECTS), or a private name of xbar_tfmot,
  imported or read as an attribute of an imported xbar_tfmot name."""
  out, bound = [], set()
  allowed = set(TOOLS_MAY_IMPORT_APP) | TOOL_SUBJECTS.get(tool, set())
  tree = ast.parse(source)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [(a.name, (a.asname or a.name).split(".")[0]) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [(f"{node.module}.{a.name}", a.asname or a.name) for a in node.names]
    else:
      continue
    for name, local in names:
      parts = name.split(".")
      if parts[0] != "xbar_tfmot":
        continue
      bound.add(local)
      private = [p for p in parts[1:] if p.startswith("_")]
      if private:
        out.append(f"{tool}:{node.lineno} imports the private name {private[0]} ({name})")
      if len(parts) > 1 and parts[1] == "app" and (len(parts) < 3 or parts[2] not in allowed):
        out.append(f"{tool}:{node.lineno} imports the application module {name}; tools may "
                   f"import only app.{', app.'.join(sorted(allowed))}")
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
        and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
        and node.value.id in bound):
      out.append(f"{tool}:{node.lineno} reads the private name {node.value.id}.{node.attr}")
  return out


def test_tools_are_clients_of_the_public_api():
  found = []
  for path in sorted((ROOT / "tools").glob("*.py")):
    found += tool_violations(path.read_text(), path.name)
  assert found == []


@pytest.mark.parametrize("source, expected", [
    ("from xbar_tfmot.app.pipeline import _something", "private name _something"),
    ("from xbar_tfmot.app.pipeline import Pipeline", "application module xbar_tfmot.app.pipeline"),
    ("from xbar_tfmot.app import run_report", "application module xbar_tfmot.app.run_report"),
    ("import xbar_tfmot.app.configuration", "application module"),
    ("from xbar_tfmot import _compat", "private name _compat"),
    ("from xbar_tfmot.app.training import _check_input", "private name _check_input"),
    ("from xbar_tfmot.app import training\ntraining._check_input('x')", "reads the private name"),
    ("import xbar_tfmot as xt\nxt._keras3", "reads the private name xt._keras3"),
])
def test_the_tools_checker_finds_planted_imports(source, expected):
  found = tool_violations(source, "planted.py")
  assert found and all("planted.py:" in f for f in found), found
  assert any(expected in f for f in found), found


def test_the_tools_checker_allows_the_public_api():
  source = ("import xbar_tfmot as xt\nfrom xbar_tfmot.app import datasets, training, zoo\n"
            "from xbar_tfmot.models.hardware_sweep import parse_values\nxt.prune_crossbar\n"
            "from xbar_tfmot.app.configuration import check\n")
  assert tool_violations(source, "fuzz_spec.py") == []
  assert len(tool_violations(source, "bench_quality.py")) == 1
