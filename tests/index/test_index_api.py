"""Callers use LocalFeatureIndex through its methods, never its fields (an AST check).

Outside delf_ret/index, code under delf_ret/, benchmarks/ and scripts/ may use
only the public methods and properties listed in PUBLIC_API on an index (a
variable or attribute named ``index`` or ``..._index``), never assigns to one
of its attributes, and never names the index's private fields on anything.
"""

import ast
import pathlib

from conftest import REPO
from delf_ret.index import LocalFeatureIndex

# What callers may use; adding a public method or property to the class means adding it here.
PUBLIC_API = {
  "add",
  "compact",
  "delete",
  "dim",
  "image_ids",
  "image_label",
  "image_path",
  "load",
  "needs_training",
  "num_descriptors",
  "params",
  "save",
  "search",
  "search_images",
  "serialized_bytes",
  "set_image_record",
  "set_search_breadth",
  "slot_of",
  "train",
}
SCANNED = ("delf_ret", "benchmarks", "scripts")
INDEX_PACKAGE = REPO / "delf_ret" / "index"


def private_fields() -> set[str]:
  """The ``self._name`` attributes that local_index.py assigns (the index's fields)."""
  tree = ast.parse((INDEX_PACKAGE / "local_index.py").read_text())
  return {
    node.attr
    for node in ast.walk(tree)
    if isinstance(node, ast.Attribute)
    and isinstance(node.ctx, ast.Store)
    and isinstance(node.value, ast.Name)
    and node.value.id in ("self", "index")
    and node.attr.startswith("_")
  }


def _is_index(node: ast.expr) -> bool:
  """A variable or attribute named ``index`` or ``<something>_index``."""
  name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
  return isinstance(name, str) and (name == "index" or name.endswith("_index"))


def offences(source: str, filename: str, fields: set[str]) -> list[str]:
  """``file:line: expression`` of each use of an index outside PUBLIC_API in ``source``."""
  found = []
  for node in ast.walk(ast.parse(source, filename)):
    if not isinstance(node, ast.Attribute):
      continue
    on_index = _is_index(node.value)
    if (
      node.attr in fields
      or (on_index and node.attr not in PUBLIC_API)
      or (on_index and isinstance(node.ctx, (ast.Store, ast.Del)))
    ):
      found.append((node.lineno, node.col_offset, f"{filename}:{node.lineno}: {ast.unparse(node)}"))
  return [line for _, _, line in sorted(found)]


def scanned_files() -> list[pathlib.Path]:
  return [
    path
    for folder in SCANNED
    for path in sorted((REPO / folder).rglob("*.py"))
    if INDEX_PACKAGE not in path.parents
  ]


def test_public_api_is_what_the_class_offers():
  offered = {name for name in vars(LocalFeatureIndex) if not name.startswith("_")}
  assert offered == PUBLIC_API


def test_the_check_catches_field_reads_and_writes():
  fields = private_fields()
  assert {"_faiss", "_slot_names", "_images", "_params", "_deleted_slots"} <= fields
  source = (
    "names = index.slot_names\n"
    "index.params = replace(index.params, nprobe=4)\n"
    "size = loaded_index._faiss.ntotal\n"
    "other = run.something._slot_names\n"
    "hits = index.search_images(query, 3)\n"
    "count = len(indexed.index.image_ids())\n"
  )
  assert offences(source, "x.py", fields) == [
    "x.py:1: index.slot_names",
    "x.py:2: index.params",
    "x.py:3: loaded_index._faiss",
    "x.py:4: run.something._slot_names",
  ]


def test_no_code_outside_the_index_package_reaches_into_an_index():
  fields = private_fields()
  files = scanned_files()
  assert any(path.name == "ranking.py" for path in files)  # The scan sees the callers.
  found = [
    line
    for path in files
    for line in offences(path.read_text(), str(path.relative_to(REPO)), fields)
  ]
  assert found == []
