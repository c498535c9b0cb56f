"""The committed *_pb2.py modules are what the pinned protoc makes of protos/*.proto, and they
load silently under this environment's protobuf (7.x; tests/beam checks them under 6.31)."""

import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO
from conftest import run_command

_SPEC = importlib.util.spec_from_file_location(
  "regenerate_protos", REPO / "scripts" / "regenerate_protos.py"
)
regenerate = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(regenerate)


def _pinned_tools() -> None:
  """Installs the pinned grpcio-tools once (a cache folder); skips when the registry is away."""
  try:
    regenerate.install_tools()
  except RuntimeError as error:
    found = subprocess.run(
      [sys.executable, "-m", "pip", "index", "versions", "grpcio-tools"], capture_output=True
    )
    if found.returncode != 0:
      pytest.skip(f"the package registry cannot be reached: {error}")
    raise


@pytest.mark.slow  # Installs the pinned grpcio-tools on its first run; protoc in a child process.
def test_generated_modules_match_protos(tmp_path):
  _pinned_tools()
  for path in regenerate.regenerate(tmp_path):
    committed = (regenerate.PACKAGE_DIR / path.name).read_text()
    assert path.read_text() == committed, (
      f"{path.name} is stale: run python scripts/regenerate_protos.py"
    )


def test_generated_modules_accept_protobuf_6_31_and_newer():
  for name in regenerate.PROTO_NAMES:
    text = (regenerate.PACKAGE_DIR / name.replace(".proto", "_pb2.py")).read_text()
    assert "# Protobuf Python Version: 6.31.1\n" in text, name


@pytest.mark.slow  # A child Python importing protobuf and delf_ret.config.
def test_modules_load_silently_under_this_protobuf():
  code = (
    "import google.protobuf, delf_ret.config as c;"
    "from delf_ret.protos import delf_features_pb2, delf_train_config_pb2;"
    "print(google.protobuf.__version__, c.parse_config_text('max_image_size: 64').max_image_size)"
  )
  result = run_command([sys.executable, "-W", "error", "-c", code], timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split()[1] == "64"
  assert result.stderr == ""
