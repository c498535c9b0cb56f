"""The package layout rules: stage folders, front doors only in cli/, one error base class."""

import ast
import importlib
import inspect
import pathlib
import pkgutil
import re
import sys

import pytest

import delf_ret
from conftest import REPO
from conftest import run_command
from delf_ret.errors import DelfRetError

PACKAGE = pathlib.Path(delf_ret.__file__).parent
ROOT_MODULES = {
  "__init__",
  "atomic",
  "config",
  "errors",
  "features",
  "images",
  "provenance",
  "timing",
}
# Packages that take a second or more to import on 2 cores (TensorFlow 10-20 s); the rest
# (numpy, Pillow, OpenCV, faiss, protobuf, absl, tqdm) is light (CONTRIBUTING.md, imports).
HEAVY_PACKAGES = {
  "tensorflow",
  "keras",
  "tensorflow_datasets",
  "sklearn",
  "skimage",
  "scipy",
  "matplotlib",
}
# Modules that import without TensorFlow, Keras or scikit-learn (a package: with its submodules).
LIGHT_MODULES = [
  "delf_ret.atomic",
  "delf_ret.config",
  "delf_ret.datasets",
  "delf_ret.default_model",
  "delf_ret.errors",
  "delf_ret.evaluation",
  "delf_ret.extract.geometry",
  "delf_ret.extract.global_features",
  "delf_ret.extract.pca",
  "delf_ret.extract.selection",
  "delf_ret.extract.settings",
  "delf_ret.features",
  "delf_ret.images",
  "delf_ret.index",
  "delf_ret.match",
  "delf_ret.provenance",
  "delf_ret.retrieval.dataset_runner",
  "delf_ret.retrieval.indexing",
  "delf_ret.retrieval.ranking",
  "delf_ret.timing",
  "delf_ret.train.pair_verification",
  "delf_ret.train.photos",
  "delf_ret.train.real_pairs",
  "delf_ret.train.recipe",
  "delf_ret.train.views",
]


def library_files() -> list[pathlib.Path]:
  return [
    path for path in sorted(PACKAGE.rglob("*.py")) if "cli" not in path.relative_to(PACKAGE).parts
  ]


def imported_modules(path: pathlib.Path) -> set[str]:
  """Every module an ``import`` or ``from ... import`` statement of the file names."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def test_package_root_holds_only_the_shared_library_modules():
  assert {path.stem for path in PACKAGE.glob("*.py")} == ROOT_MODULES
  for stage in ("model", "extract", "match", "index", "retrieval", "evaluation", "cli"):
    assert (PACKAGE / stage / "__init__.py").is_file(), stage


def test_no_library_module_imports_the_command_line_tools():
  offenders = [
    str(path.relative_to(PACKAGE))
    for path in library_files()
    if any(
      name == "delf_ret.cli" or name.startswith("delf_ret.cli.") for name in imported_modules(path)
    )
  ]
  assert offenders == []


def test_no_package_module_reads_the_repository():
  pattern = re.compile(r"parents\[|\.parent\.parent|\bREPO|__file__")
  offenders = [
    str(path.relative_to(PACKAGE))
    for path in PACKAGE.rglob("*.py")
    if pattern.search(path.read_text())
  ]
  assert offenders == []


@pytest.mark.slow
def test_light_modules_import_without_tensorflow():
  code = (
    "import importlib, pkgutil, sys\n"
    "def loaded(*names):\n"
    "  return sorted({m.split('.')[0] for m in sys.modules} & set(names))\n"
    "import delf_ret.match\n"
    "print(loaded('skimage', 'scipy'))\n"
    f"for name in {LIGHT_MODULES!r}:\n"
    "  module = importlib.import_module(name)\n"
    "  for info in pkgutil.walk_packages(getattr(module, '__path__', []), name + '.'):\n"
    "    importlib.import_module(info.name)\n"
    "print(loaded('tensorflow', 'keras', 'sklearn'))\n"
  )
  result = run_command([sys.executable, "-c", code], timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr
  # scikit-image (and SciPy under it) only when its RANSAC backend runs; TensorFlow never.
  assert result.stdout.split("\n")[:2] == ["[]", "[]"]


def module_paths() -> dict[str, pathlib.Path]:
  """Every module of the package by dotted name (a package by its name, not __init__)."""
  paths = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return paths


def module_level_imports(path: pathlib.Path) -> set[str]:
  """Modules the file imports when it is imported (not those imported inside functions)."""
  names = set()
  pending = list(ast.parse(path.read_text(), str(path)).body)
  while pending:
    node = pending.pop()
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
    elif isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
      pending += node.orelse  # Imports for type checkers only: not run.
    elif isinstance(node, (ast.If, ast.Try, ast.With)):
      pending += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
      pending += [
        statement for handler in getattr(node, "handlers", []) for statement in handler.body
      ]
  return names


def test_function_local_imports_are_heavy_ones():
  """A function imports only what is heavy: a heavy package, or a module that loads one.

  The rule (CONTRIBUTING.md): imports at module level, except a heavy package in a
  module that must stay light, or in a front door's main().
  """
  paths = module_paths()
  heavy_cache: dict[str, bool] = {}

  def loads_heavy(name: str) -> bool:
    """True if importing ``name`` (its parent packages first) loads a heavy package."""
    parts = name.split(".")
    if parts[0] != "delf_ret":
      return parts[0] in HEAVY_PACKAGES
    modules = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for module in (m for m in modules if m in paths):
      if module not in heavy_cache:
        heavy_cache[module] = False  # An import cycle adds nothing.
        heavy_cache[module] = any(loads_heavy(n) for n in module_level_imports(paths[module]))
      if heavy_cache[module]:
        return True
    return False

  assert loads_heavy("delf_ret.extract.extractor") and loads_heavy("sklearn.decomposition")
  assert not loads_heavy("delf_ret.extract.settings") and not loads_heavy("delf_ret.match")
  offenders = []
  for path in PACKAGE.rglob("*.py"):
    relative = str(path.relative_to(PACKAGE))
    tree = ast.parse(path.read_text(), str(path))
    for function in ast.walk(tree):
      if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(function):
        if isinstance(node, ast.Import):
          names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
          names = [node.module]
        else:
          continue
        offenders += [f"{relative}:{node.lineno} {name}" for name in names if not loads_heavy(name)]
  assert offenders == []


@pytest.mark.slow  # Imports every module, TensorFlow included.
def test_every_package_error_derives_from_the_base_class():
  errors = {}
  for info in pkgutil.walk_packages(delf_ret.__path__, "delf_ret."):
    if info.name.startswith("delf_ret.cli."):
      continue  # Front doors define flags at import; they define no error class.
    module = importlib.import_module(info.name)
    for name, value in inspect.getmembers(module, inspect.isclass):
      if issubclass(value, Exception) and value.__module__.startswith("delf_ret"):
        errors[name] = value
  assert {
    "ConfigError",
    "InputError",
    "FeatureFileError",
    "LocalIndexError",
    "GroundTruthError",
    "ImageReadError",
    "ImageTooSmallError",
    "PcaError",
    "ModelFileError",
    "BackboneWeightsError",
    "DownloadError",
    "GldDataError",
    "TrainingError",
  } <= set(errors)
  assert [name for name, error in errors.items() if not issubclass(error, DelfRetError)] == []


def test_each_console_script_is_its_cli_module():
  setup = (REPO / "setup.py").read_text()
  scripts = re.findall(r'"(\w+)=delf_ret\.cli\.(\w+):run"', setup)
  assert len(scripts) == 19 and all(script == module for script, module in scripts)
  modules = {path.stem for path in (PACKAGE / "cli").glob("*.py")}
  assert {script for script, _ in scripts} | {"__init__", "common", "inputs"} == modules


def test_no_function_of_the_package_is_80_lines_or_more():
  """CONTRIBUTING.md, style: a function over 80 lines is split (generated protos aside)."""
  long = []
  for path in PACKAGE.rglob("*.py"):
    if path.name.endswith("_pb2.py"):
      continue
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length >= 80:
          long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
  assert long == []
