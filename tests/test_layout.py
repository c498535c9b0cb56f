"""The package layout rules: stage folders, front doors only in cli/, one error base class."""

import ast
import importlib
import inspect
import pathlib
import pkgutil
import re
import subprocess
import sys

import delf_ret
from conftest import REPO
from delf_ret.errors import DelfRetError

PACKAGE = pathlib.Path(delf_ret.__file__).parent
ROOT_MODULES = {"__init__", "atomic", "config", "errors", "features", "images", "provenance"}


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


def test_matching_and_evaluation_import_no_tensorflow():
  code = (
    "import importlib, pkgutil, sys\n"
    "import delf_ret.match, delf_ret.evaluation\n"
    "for package in (delf_ret.match, delf_ret.evaluation):\n"
    "  for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
    "    importlib.import_module(info.name)\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"


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
  assert len(scripts) == 12 and all(script == module for script, module in scripts)
  modules = {path.stem for path in (PACKAGE / "cli").glob("*.py")}
  assert {script for script, _ in scripts} | {"__init__", "common", "inputs"} == modules
