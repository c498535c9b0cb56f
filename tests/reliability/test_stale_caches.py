"""Feature folders remember their settings: other settings are refused or recomputed, never reused."""

import json

import pytest

from conftest import installed_script
from conftest import run_command
from delf_ret.features import read_features

# Runs the retrieval tools in subprocesses (2 min).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_data):
  from PIL import Image

  folder = tmp_path_factory.mktemp("photos")
  for name in ("graf1.png", "box.png"):
    with Image.open(shared_data / "pairs" / name) as image:
      image.convert("RGB").resize((240, 180)).save(folder / name)
  return folder


def test_features_of_other_settings_are_refused_then_recomputed_with_overwrite(photos, tmp_path):
  out = tmp_path / "features"
  command = [installed_script("extract_features"), f"--images_dir={photos}", f"--output_dir={out}"]
  run = lambda *extra: run_command([*command, *extra], timeout=600)  # noqa: E731
  first = run("--config_override=delf_local_config.max_feature_num=50")
  assert first.returncode == 0, first.stderr
  assert read_features(out / "graf1.delf").num_features == 50
  assert (
    "max_feature_num: 50" in json.loads((out / "extraction_settings.json").read_text())["config"]
  )
  other = run("--config_override=delf_local_config.max_feature_num=80")
  assert other.returncode == 2
  assert "made with other settings" in other.stderr and "max_feature_num: 80" in other.stderr
  assert read_features(out / "graf1.delf").num_features == 50  # Untouched.
  again = run("--config_override=delf_local_config.max_feature_num=80", "--overwrite")
  assert again.returncode == 0, again.stderr
  assert read_features(out / "graf1.delf").num_features == 80
  # The same settings again: the files are reused.
  same = run("--config_override=delf_local_config.max_feature_num=80")
  assert same.returncode == 0 and "done: nothing left to do, all 2 feature files" in same.stdout
