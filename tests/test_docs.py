"""The documentation: README.md and docs/*.md link only to files and headings that exist, the
README stays short, and no file points outside the repository (the design document a user
gets is docs/design.md). Plain text checks: no TensorFlow import."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README_LIMIT = 8000
SCANNED = ("README.md", "docs", "xbar_tfmot", "tools", "tests", "configs")
# a relative path that climbs folders, e.g. `../x/y.md`; it must stay inside the repository
CLIMBING_PATH = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-]+(?:/[\w.-]+)*)")
TEXT_SUFFIXES = {".md", ".py", ".json", ".txt", ".sh", ".cfg", ".toml", ".ini", ".yaml", ".yml"}

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def doc_files():
  return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text):
  """The lines of a Markdown text outside fenced code blocks, with their line numbers."""
  fence = None
  for number, line in enumerate(text.splitlines(), 1):
    match = FENCE.match(line)
    if match:
      marker = match.group(1)
      if fence is None:
        fence = marker
      elif marker[0] == fence[0] and len(marker) >= len(fence):
        fence = None
      continue
    if fence is None:
      yield number, line


def github_slug(heading):
  """GitHub's anchor for a heading: its rendered text lower-cased, everything but word
  characters, hyphens and spaces removed, spaces turned into hyphens."""
  text = CODE_SPAN.sub(lambda m: m.group(2), heading)
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
  text = re.sub(r"<[^>]+>", "", text)  # inline HTML
  text = re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)  # emphasis markers, not snake_case
  text = text.strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path):
  """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
  seen = {}
  out = set()
  for _, line in prose_lines(path.read_text(encoding="utf-8")):
    match = HEADING.match(line)
    if not match:
      continue
    slug = github_slug(match.group(2))
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    out.add(slug if count == 0 else f"{slug}-{count}")
  return out


def links(path):
  """`(line number, target)` of every Markdown link outside code blocks and code spans."""
  for number, line in prose_lines(path.read_text(encoding="utf-8")):
    for match in LINK.finditer(CODE_SPAN.sub("", line)):
      yield number, match.group(1)


def broken_links(path):
  """Messages for the relative links of `path` whose file or heading does not exist."""
  problems = []
  for number, target in links(path):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
      continue  # absolute URL (https:, mailto:, ...)
    file_part, _, fragment = target.partition("#")
    where = f"{path.relative_to(ROOT)}:{number}: link {target!r}"
    destination = (path.parent / file_part).resolve() if file_part else path
    if not destination.exists():
      problems.append(f"{where}: {file_part} does not exist")
      continue
    if fragment and destination.suffix == ".md":
      if fragment.lower() not in anchors(destination):
        problems.append(f"{where}: no heading with anchor #{fragment} in "
                        f"{destination.relative_to(ROOT)}")
  return problems


def test_doc_files_exist():
  names = {p.name for p in doc_files()}
  for name in ("README.md", "design.md", "usage.md", "benchmarks.md", "contributing.md",
               "mapping_format.md"):
    assert name in names, f"{name} is missing"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
  problems = broken_links(path)
  assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_short():
  size = len((ROOT / "README.md").read_text(encoding="utf-8"))
  assert size < README_LIMIT, (
      f"README.md has {size} characters; keep it under {README_LIMIT} and move detail into docs/.")


def scanned_files():
  for name in SCANNED:
    path = ROOT / name
    if path.is_file():
      yield path
    elif path.is_dir():
      for child in sorted(path.rglob("*")):
        if child.is_file() and child.suffix in TEXT_SUFFIXES and "__pycache__" not in child.parts:
          yield child


def outside_paths(path: pathlib.Path, text: str) -> list[str]:
  """`file:line: path` for each relative path in `text` that leads out of the repository."""
  hits = []
  for number, line in enumerate(text.splitlines(), 1):
    for found in CLIMBING_PATH.findall(line):
      target = (path.parent / found).resolve()
      if target != ROOT and ROOT not in target.parents:
        hits.append(f"{path.relative_to(ROOT)}:{number}: {found}")
  return hits


def test_nothing_points_outside_the_repository():
  hits = [hit for path in scanned_files()
          for hit in outside_paths(path, path.read_text(encoding="utf-8", errors="replace"))]
  assert not hits, ("a clone holds only the repository; point into it (the design is "
                    "docs/design.md):\n" + "\n".join(hits))


def test_outside_paths_are_found():
  doc = ROOT / "docs" / "usage.md"
  assert outside_paths(doc, "see [the tiers](design.md) and ../README.md") == []
  outside = "../" * 2 + "elsewhere/notes.md"  # built, so this file itself stays clean
  assert outside_paths(doc, f"see {outside}") == [f"docs/usage.md:1: {outside}"]
  assert outside_paths(ROOT / "README.md", "(../x.md)") == ["README.md:1: ../x.md"]


def test_github_slug_rules():
  assert github_slug("Crossbar geometry (`CrossbarSpec`)") == "crossbar-geometry-crossbarspec"
  assert github_slug("The main job: `xbar-prune`") == "the-main-job-xbar-prune"
  assert github_slug("What is the paper's and what is ours") == "what-is-the-papers-and-what-is-ours"
  assert github_slug("Pruning Keras 3 models (`import keras`)") == "pruning-keras-3-models-import-keras"
  assert github_slug("`mapping_schema.json` fields") == "mapping_schemajson-fields"
  assert github_slug("Quality: accuracy against crossbars") == "quality-accuracy-against-crossbars"
