"""A built wheel, installed into a fresh virtual environment, runs a tool on a real photo.

The environment sees the dependencies where this test's interpreter has them (a virtual
environment, a conda environment, or the system's site-packages when run as root), but not
delf-ret: the package, its configs and the default model come from the wheel alone.
"""

import importlib.util
import os
import site
import sys
import sysconfig
import venv

import pytest

from conftest import REPO
from conftest import run_command


def dependency_folders() -> list[str]:
  """The folders this interpreter imports installed packages from: its site-packages (those
  of a virtual or conda environment, or the system's), and the user's when enabled."""
  folders = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
  if site.ENABLE_USER_SITE:
    folders.append(site.getusersitepackages())
  return [folder for folder in dict.fromkeys(folders) if os.path.isdir(folder)]


def fresh_environment(env_dir) -> str:
  """A new virtual environment whose Python also imports from dependency_folders(); returns
  its python. A .pth file lists the folders, so their own .pth files (such as the hook of an
  editable delf-ret) do not run there, and the environment's site-packages comes first."""
  venv.EnvBuilder(with_pip=False).create(env_dir)
  python = str(env_dir / "bin" / "python")
  found = run_command(
    [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], timeout=120
  )
  assert found.returncode == 0, found.stderr[-2000:]
  site_packages = found.stdout.strip()
  with open(os.path.join(site_packages, "dependencies.pth"), "w") as handle:
    handle.write("".join(f"{folder}\n" for folder in dependency_folders()))
  return python


@pytest.mark.slow  # Builds the wheel and installs it in a fresh environment.
def test_wheel_in_a_fresh_environment_extracts_a_real_photo(tmp_path, shared_data):
  # Without PYTHONPATH, which would put a checkout of delf-ret before the environment's.
  env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
  wheels = tmp_path / "wheels"
  # pip install -e built in an isolated environment where this one has no setuptools (a
  # virtual environment of Python 3.12 or later); the wheel is built the same way there.
  isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
  build = run_command(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", wheels, REPO],
    timeout=600,
    env=env,
  )
  assert build.returncode == 0, build.stderr[-2000:]
  (wheel,) = wheels.glob("delf_ret-*.whl")
  env_dir = tmp_path / "env"
  python = fresh_environment(env_dir)
  install = run_command(
    [python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], timeout=600, env=env
  )
  assert install.returncode == 0, install.stderr[-2000:]
  where = run_command(
    [python, "-c", "import delf_ret, sys; print(delf_ret.__file__)"],
    timeout=300,
    cwd=tmp_path,
    env=env,
  )
  assert str(env_dir) in where.stdout, where.stdout + where.stderr
  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "graf1.png").write_bytes((shared_data / "pairs" / "graf1.png").read_bytes())
  script = env_dir / "bin" / "extract_features"
  features = tmp_path / "features"
  result = run_command(
    [script, f"--images_dir={photos}", f"--output_dir={features}"],
    timeout=600,
    cwd=tmp_path,
    env=env,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert (features / "graf1.delf").stat().st_size > 10_000
