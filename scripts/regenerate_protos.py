"""Regenerates ``delf_ret/protos/*_pb2.py`` and their type stubs (``*_pb2.pyi``) from ``protos/*.proto``.

With one pinned protoc: grpcio-tools 1.74.0, whose protoc 31.1 writes gencode for protobuf
Python 6.31.1. Gencode runs on its own runtime and every newer one up to the next major (7.x
accepts 6.x gencode silently), so delf-ret works with protobuf 6.31 to 7.x; apache-beam (the
``beam`` extra) requires protobuf < 7. A newer protoc would raise the lowest protobuf the
package accepts. mypy reads the stubs.

The pinned grpcio-tools is installed once (``pip install --no-deps --target``, from the package
registry) into a cache folder, ``$XDG_CACHE_HOME`` or ``~/.cache``, ``delf-ret/``, and
runs from there with this interpreter, whatever grpcio-tools this environment has.

Usage: ``python scripts/regenerate_protos.py [OUTPUT_DIR]`` (default:
delf_ret/protos of this repository). A repository tool, not part of the package.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile

PROTO_NAMES = ("delf_config.proto", "delf_features.proto", "delf_train_config.proto")
REPO = pathlib.Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "protos"
PACKAGE_DIR = REPO / "delf_ret" / "protos"
# The protoc that makes the committed modules, and the version it reports.
GRPCIO_TOOLS = "grpcio-tools==1.74.0"
PROTOC_VERSION = "libprotoc 31.1"


def tools_dir() -> pathlib.Path:
  """The cache folder of the pinned grpcio-tools for this Python and platform."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
  return pathlib.Path(cache) / "delf-ret" / f"{GRPCIO_TOOLS.replace('==', '-')}-{tag}"


def install_tools() -> pathlib.Path:
  """Installs the pinned grpcio-tools into tools_dir() unless it is there; returns the folder.

  Raises RuntimeError (with pip's message) when pip cannot install it, e.g. offline.
  """
  target = tools_dir()
  if (target / "grpc_tools").is_dir():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  # Installed beside the target, then renamed: an interrupted install leaves no half folder.
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".grpcio-tools-", dir=target.parent))
  try:
    args = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(staging)]
    result = subprocess.run([*args, GRPCIO_TOOLS], capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"pip could not install {GRPCIO_TOOLS} into {staging}: {result.stderr}")
    try:
      staging.rename(target)
    except OSError:
      if not (target / "grpc_tools").is_dir():  # Not another process having installed it first.
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target


def _protoc(args: list[str], tools: pathlib.Path) -> subprocess.CompletedProcess:
  """Runs the pinned protoc in a child process: loaded next to TensorFlow's protobuf runtime in
  one process, grpc_tools' compiler can crash."""
  path = os.pathsep.join([str(tools), *filter(None, [os.environ.get("PYTHONPATH")])])
  env = dict(os.environ, PYTHONPATH=path)
  command = [sys.executable, "-m", "grpc_tools.protoc", *args]
  return subprocess.run(command, capture_output=True, text=True, env=env)


def regenerate(output_dir: pathlib.Path) -> list[pathlib.Path]:
  """Runs the pinned protoc on every .proto file; returns the written module and stub paths."""
  tools = install_tools()
  version = _protoc(["--version"], tools)
  if version.stdout.strip() != PROTOC_VERSION:
    raise RuntimeError(
      f"{tools} runs protoc {version.stdout.strip()!r}{version.stderr}, not {PROTOC_VERSION!r}: "
      "delete the folder and rerun"
    )
  output_dir.mkdir(parents=True, exist_ok=True)
  args = [f"-I{PROTO_DIR}", f"--python_out={output_dir}", f"--pyi_out={output_dir}"]
  result = _protoc([*args, *(str(PROTO_DIR / name) for name in PROTO_NAMES)], tools)
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
