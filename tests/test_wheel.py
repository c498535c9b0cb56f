"""A built wheel, installed into a fresh virtual environment, runs a tool on a real photo.

The environment shares the already installed dependencies (--system-site-packages) but not
delf-ret: the package, its configs and the default model come from the wheel alone.
"""

import sys
import venv

import pytest

from conftest import REPO
from conftest import run_command


@pytest.mark.slow  # Builds the wheel and installs it in a fresh environment.
def test_wheel_in_a_fresh_environment_extracts_a_real_photo(tmp_path, shared_data):
  wheels = tmp_path / "wheels"
  build = run_command(
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
    timeout=600,
  )
  assert build.returncode == 0, build.stderr[-2000:]
  (wheel,) = wheels.glob("delf_ret-*.whl")
  env_dir = tmp_path / "env"
  venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  install = run_command(
    [python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], timeout=600
  )
  assert install.returncode == 0, install.stderr[-2000:]
  where = run_command(
    [python, "-c", "import delf_ret, sys; print(delf_ret.__file__)"], timeout=300, cwd=tmp_path
  )
  assert str(env_dir) in where.stdout, where.stdout + where.stderr
  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "graf1.png").write_bytes((shared_data / "pairs" / "graf1.png").read_bytes())
  script = env_dir / "bin" / "extract_features"
  features = tmp_path / "features"
  result = run_command(
    [script, f"--images_dir={photos}", f"--output_dir={features}"], timeout=600, cwd=tmp_path
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert (features / "graf1.delf").stat().st_size > 10_000
