"""End-to-end test of scripts/extract_with_pca.sh."""

import shutil

import pytest

from conftest import REPO
from conftest import landmark_images
from conftest import run_command
from conftest import tool_env
from delf_ret.features import read_features

# Every test here runs a script in a subprocess.
pytestmark = pytest.mark.slow


def run_script(*args):
  script = REPO / "scripts" / "extract_with_pca.sh"
  return run_command(["bash", str(script), *map(str, args)], timeout=600, env=tool_env())


def test_usage_on_bad_arguments(tmp_path):
  result = run_script("only_one")
  assert result.returncode == 2 and "Usage:" in result.stdout
  result = run_script(tmp_path / "missing.keras", tmp_path, tmp_path / "out")
  assert result.returncode == 2 and "model not found" in result.stderr


def test_learns_pca_then_extracts(model_path, config_path, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for path in landmark_images()[:3]:
    shutil.copy(path, images)
  out = tmp_path / "out"
  result = run_script(model_path, images, out, config_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(p.name for p in (out / "pca").iterdir()) == [
    "pca_mean.npy",
    "pca_projection.npy",
    "pca_variances.npy",
  ]
  features = sorted((out / "features").glob("*.delf"))
  assert len(features) == 3
  assert read_features(features[0]).descriptor_dim == 40
