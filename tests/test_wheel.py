"""A built wheel, installed into a fresh virtual environment, runs a tool on a real photo.

The environment shares the already installed dependencies (--system-site-packages) but not
delf-ret: the package, its configs and the default model come from the wheel alone.
"""

import subprocess
import sys
import venv

import pytest

from conftest import REPO


@pytest.mark.slow  # Builds the wheel and installs it in a fresh environment.
def test_wheel_in_a_fresh_environment_extracts_a_real_photo(tmp_path, shared_data):
  wheels = tmp_path / "wheels"
  build = subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "--no-build-isolation",
      "-q",
      "-w",
      str(wheels),
      str(REPO),
    ],
    capture_output=True,
    text=True,
    stdin=subprocess.DEVNULL,
    timeout=600,
  )
  assert build.returncode == 0, build.stderr[-2000:]
  (wheel,) = wheels.glob("delf_ret-*.whl")
  env_dir = tmp_path / "env"
  venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  install = subprocess.run(
    [python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
    capture_output=True,
    text=True,
    stdin=subprocess.DEVNULL,
    timeout=600,
  )
  assert install.returncode == 0, install.stderr[-2000:]
  where = subprocess.run(
    [python, "-c", "import delf_ret, sys; print(delf_ret.__file__)"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
  )
  assert str(env_dir) in where.stdout, where.stdout + where.stderr
  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "graf1.png").write_bytes((shared_data / "pairs" / "graf1.png").read_bytes())
  result = subprocess.run(
    [
      env_dir / "bin" / "extract_features",
      f"--images_dir={photos}",
      f"--output_dir={tmp_path / 'features'}",
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    stdin=subprocess.DEVNULL,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / "features" / "graf1.delf").stat().st_size > 10_000
