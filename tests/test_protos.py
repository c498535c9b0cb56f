"""The committed *_pb2.py modules must be what protoc makes of protos/*.proto."""

import importlib.util
import re

import pytest

from conftest import REPO

_SPEC = importlib.util.spec_from_file_location(
  "regenerate_protos", REPO / "scripts" / "regenerate_protos.py"
)
regenerate = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(regenerate)


def _without_version_lines(text: str) -> str:
  # The protoc version stamp and runtime check vary with grpcio-tools' version.
  text = re.sub(r"# Protobuf Python Version: .*\n", "", text)
  return re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n", "", text)


def test_generated_modules_match_protos(tmp_path):
  pytest.importorskip("grpc_tools")
  for path in regenerate.regenerate(tmp_path):
    committed = (regenerate.PACKAGE_DIR / path.name).read_text()
    assert _without_version_lines(path.read_text()) == _without_version_lines(committed), (
      f"{path.name} is stale: run python scripts/regenerate_protos.py"
    )
