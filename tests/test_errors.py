"""The error hierarchy: every `XbarError` subclass defined in the package is listed in
xbar_tfmot/core/errors.py's docstring (the one place it is documented) and keeps its built-in
type; the public API raises `XbarError`s that are also the built-in type they always were."""

import ast
import builtins
import importlib
import pathlib
import re

import _pruning_models as pm
import pytest

import xbar_tfmot as xt
from xbar_tfmot.core import errors
from xbar_tfmot.models import introspection

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "xbar_tfmot"
# "- `Name` (`BuiltinType`, folder/file.py): what it means", one entry per subclass
ENTRY = re.compile(r"^- `(\w+)` \(`(\w+)`, ([\w/]+\.py)\):", re.M)


def defined_subclasses(root: pathlib.Path) -> dict[str, str]:
  """`{class name: file under root}` of every class deriving, directly or not, from
  `XbarError`, read from the source (a subclass is found without importing its module)."""
  classes = []
  for path in sorted(root.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.ClassDef):
        bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None)
                 for b in node.bases}
        classes.append((node.name, bases, path.relative_to(root).as_posix()))
  found: dict[str, str] = {}
  changed = True
  while changed:
    changed = False
    for name, bases, rel in classes:
      if name not in found and bases & ({"XbarError"} | set(found)):
        found[name] = rel
        changed = True
  return found


def documented(doc: str) -> dict[str, tuple[str, str]]:
  """`{class name: (built-in type, file)}` of the entries of the errors docstring."""
  return {name: (base, rel) for name, base, rel in ENTRY.findall(doc)}


def test_every_subclass_is_documented_in_the_errors_docstring():
  defined, listed = defined_subclasses(PACKAGE), documented(errors.__doc__)
  assert len(defined) >= 20  # the check reads the source: it did find the package's classes
  assert set(defined) - set(listed) == set(), "add these to xbar_tfmot/core/errors.py's docstring"
  assert set(listed) - set(defined) == set(), "listed in the docstring but defined nowhere"
  for name, rel in defined.items():
    assert listed[name][1] == rel, f"{name} is defined in {rel}, documented as {listed[name][1]}"


def test_every_subclass_keeps_its_documented_built_in_type():
  for name, (base, rel) in documented(errors.__doc__).items():
    module = importlib.import_module("xbar_tfmot." + rel[:-len(".py")].replace("/", "."))
    cls = getattr(module, name)
    assert issubclass(cls, errors.XbarError), name
    assert issubclass(cls, getattr(builtins, base)), f"{name} is no longer a {base}"


def test_the_check_finds_an_undocumented_subclass(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "new.py").write_text(
      "from xbar_tfmot.core import errors\n"
      "class NewError(errors.XbarError, ValueError):\n  pass\n"
      "class NarrowError(NewError):\n  pass\n"
      "class Unrelated(ValueError):\n  pass\n")
  found = defined_subclasses(tmp_path)
  assert found == {"NewError": "sub/new.py", "NarrowError": "sub/new.py"}
  assert not set(found) & set(documented(errors.__doc__))


def _mapping():
  model = pm.cnn(seed=0, flavour="keras3")
  return xt.build_mapping(model, pm.SPEC)


# (call with bad input, the XbarError subclass, the built-in type it has always been)
BAD_CALLS = [
    (lambda: xt.prune_crossbar(object(), spec="128x128", granularity="block"),
     xt.PruningConfigError, ValueError),
    (lambda: xt.prune_crossbar(object(), spec="128x128"), xt.PruningConfigError, ValueError),
    (lambda: xt.prune_crossbar([], spec="128x128"), xt.PruningConfigError, ValueError),
    (lambda: xt.crossbar_pruning_scope("jax"), xt.PruningConfigError, ValueError),
    (lambda: xt.DistillationLoss(temperature=0), xt.PruningConfigError, ValueError),
    (lambda: xt.CrossbarSpec(rows=0, cols=128), xt.SpecError, ValueError),
    (lambda: xt.CrossbarSpec.preset("nope"), xt.SpecError, ValueError),
    (lambda: xt.CrossbarSpec.from_string("128by128"), xt.SpecError, ValueError),
    (lambda: xt.CrossbarPolicy(mode="best"), xt.PolicyError, ValueError),
    (lambda: xt.CrossbarPolicy(targets={"conv2": 1.5}), xt.PolicyError, ValueError),
    (lambda: xt.CrossbarPolynomialDecay(final_reduction=1.5, begin_step=0, end_step=10),
     xt.ScheduleError, ValueError),
    (lambda: xt.crossbar_budget(10, 1.5), xt.GeometryError, ValueError),
    (lambda: xt.LayerGeometry("fc", "Dense", (3, 3, 4, 8), pm.SPEC), xt.GeometryError,
     ValueError),
    (lambda: xt.HardwareSpec.preset("nope"), xt.HardwareError, ValueError),
    (lambda: introspection.flavour(object()), xt.NotKerasObjectError, TypeError),
    (lambda: _mapping().layer("nope"), xt.UnknownLayerError, KeyError),
]


@pytest.mark.parametrize("call, error, builtin", BAD_CALLS)
def test_bad_input_raises_an_xbar_error_of_the_old_built_in_type(call, error, builtin):
  with pytest.raises(error) as caught:
    call()
  assert isinstance(caught.value, xt.XbarError) and isinstance(caught.value, builtin)
