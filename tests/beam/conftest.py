"""The Beam tests' virtual environment: apache-beam and protobuf 6 beside this interpreter's packages.

apache-beam requires protobuf < 7, the main test environment has protobuf 7: the Beam tests run
delf-ret in a virtual environment of their own, which also exercises the lowest protobuf delf-ret
supports. The environment is built once and kept in a cache folder keyed by the requirement set,
this interpreter and this checkout and its setup.py (``$XDG_CACHE_HOME`` or ``~/.cache``, ``delf-ret-tests/``);
delete the folder to rebuild it. TensorFlow, faiss and the rest come from this interpreter's
site-packages through a .pth file listed after the environment's own site-packages, so that
the environment's apache-beam and protobuf 6 win and nothing large is installed twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import shutil
import sys
import venv

import pytest
from test_wheel import dependency_folders

from conftest import BUNDLED_IMAGES
from conftest import REPO
from conftest import installed_script
from conftest import run_command
from conftest import tool_env

# What the environment installs besides delf-ret (the "beam" extra of setup.py, and protobuf
# pinned to the lowest minor delf-ret's generated modules support).
BEAM_REQUIREMENTS = ("apache-beam>=2.60", "protobuf==6.31.*")
_COMPLETE = "complete.txt"


def _cache_root() -> pathlib.Path:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "delf-ret-tests"


def _environment_key() -> str:
  """A short hash of everything the environment's content depends on (setup.py: its console
  scripts)."""
  setup = (REPO / "setup.py").read_text()
  parts = [*BEAM_REQUIREMENTS, sys.executable, sys.version, str(REPO), setup, *dependency_folders()]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def pip_env() -> dict[str, str]:
  """This environment without PYTHONPATH (the checkout comes from the editable install)."""
  env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
  env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
  return env


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  """An exclusive lock on ``path``: two test sessions never build one environment at once."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _pip(python: pathlib.Path, *args: str, timeout: float = 1200):
  """This interpreter's pip, installing into the environment of ``python``."""
  return run_command(
    [sys.executable, "-m", "pip", "--python", str(python), *args], timeout=timeout, env=pip_env()
  )


def _registry_reachable() -> bool:
  found = run_command(
    [sys.executable, "-m", "pip", "index", "versions", "apache-beam"], timeout=300, env=pip_env()
  )
  return found.returncode == 0


def _build(env_dir: pathlib.Path) -> None:
  """Creates the environment, lists this interpreter's site-packages in a .pth file (after the
  environment's own), installs the requirements and an editable delf-ret without dependencies."""
  venv.EnvBuilder(with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  found = run_command(
    [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], timeout=120
  )
  assert found.returncode == 0, found.stderr[-2000:]
  site_packages = pathlib.Path(found.stdout.strip())
  # A .pth file's folders come after site-packages itself; their own .pth files (such as the
  # hook of this interpreter's editable delf-ret) do not run.
  (site_packages / "base_dependencies.pth").write_text(
    "".join(f"{folder}\n" for folder in dependency_folders())
  )
  install = _pip(python, "install", "-q", *BEAM_REQUIREMENTS)
  if install.returncode != 0:
    if not _registry_reachable():
      pytest.skip(f"the package registry cannot be reached to install {BEAM_REQUIREMENTS}")
    raise AssertionError(f"pip install {BEAM_REQUIREMENTS} failed: {install.stderr[-3000:]}")
  # Without build isolation: setuptools comes from this interpreter, nothing is downloaded.
  editable = _pip(python, "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO))
  assert editable.returncode == 0, editable.stderr[-3000:]


@pytest.fixture(scope="session")
def beam_venv() -> pathlib.Path:
  """The ``bin/`` folder of a virtual environment with apache-beam, protobuf 6.31 and an editable
  delf-ret (its console scripts are there); TensorFlow etc. come from this interpreter."""
  env_dir = _cache_root() / f"beam-venv-{_environment_key()}"
  record = "\n".join(BEAM_REQUIREMENTS) + "\n"
  with _locked(env_dir.with_suffix(".lock")):
    complete = env_dir / _COMPLETE
    if not (complete.is_file() and complete.read_text() == record):
      shutil.rmtree(env_dir, ignore_errors=True)
      _build(env_dir)
      complete.write_text(record)
  return env_dir / "bin"


# The shipped default model on photos capped at 256 px (a fraction of a second per photo), with
# global descriptors (1024-d: the default model has no global PCA): .delf and .delg_global files.
GLOBAL_OVERRIDES = (
  "--config_override=max_image_size=256",
  "--config_override=use_global_features=true",
  "--config_override=delf_global_config.use_pca=false",
)
GLOBAL_PHOTOS = ("leuven_a", "leuven_b", "river_2", "roofs_1", "sacre_coeur_1", "sacre_coeur_2")


@pytest.fixture(scope="session")
def global_photos(tmp_path_factory) -> pathlib.Path:
  """A folder of copies of the bundled GLOBAL_PHOTOS."""
  photos = tmp_path_factory.mktemp("global_photos")
  for name in GLOBAL_PHOTOS:
    shutil.copy(BUNDLED_IMAGES / f"{name}.jpg", photos)
  return photos


@pytest.fixture(scope="session")
def global_features(global_photos, tmp_path_factory) -> pathlib.Path:
  """The feature folder the single-machine extract_features (this interpreter, protobuf 7)
  writes for GLOBAL_PHOTOS with GLOBAL_OVERRIDES: a .delf and a .delg_global file per photo,
  and the settings record."""
  output = tmp_path_factory.mktemp("global_features")
  command = [installed_script("extract_features"), f"--images_dir={global_photos}"]
  result = run_command(
    [*command, *GLOBAL_OVERRIDES, f"--output_dir={output}"], timeout=600, env=tool_env()
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return output
