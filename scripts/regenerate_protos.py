"""Regenerates ``delf_ret/protos/*_pb2.py`` and their type stubs (``*_pb2.pyi``) from ``protos/*.proto``.

With grpcio-tools' protoc; mypy reads the stubs.

Usage: ``python scripts/regenerate_protos.py [OUTPUT_DIR]`` (default:
delf_ret/protos of this repository). Needs the ``grpcio-tools`` package
(``pip install -e '.[test]'``). A repository tool, not part of the package.
"""

import pathlib
import subprocess
import sys

PROTO_NAMES = ("delf_config.proto", "delf_features.proto", "delf_train_config.proto")
REPO = pathlib.Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "protos"
PACKAGE_DIR = REPO / "delf_ret" / "protos"


def regenerate(output_dir: pathlib.Path) -> list[pathlib.Path]:
  """Runs protoc on every .proto file; returns the written module and stub paths.

  protoc runs in a child process: loaded next to TensorFlow's protobuf runtime
  in one process, grpc_tools' compiler can crash.
  """
  output_dir.mkdir(parents=True, exist_ok=True)
  args = [
    sys.executable,
    "-m",
    "grpc_tools.protoc",
    f"-I{PROTO_DIR}",
    f"--python_out={output_dir}",
    f"--pyi_out={output_dir}",
  ]
  args += [str(PROTO_DIR / name) for name in PROTO_NAMES]
  result = subprocess.run(args, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f"protoc failed on {PROTO_NAMES} in {PROTO_DIR}: {result.stderr}")
  return [
    output_dir / name.replace(".proto", suffix)
    for name in PROTO_NAMES
    for suffix in ("_pb2.py", "_pb2.pyi")
  ]


if __name__ == "__main__":
  target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR
  for path in regenerate(target):
    print(path)
