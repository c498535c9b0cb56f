"""End-to-end tests of `python -m delf_ret.cli.extract_features` on real photos."""

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import landmark_images
from conftest import run_cli
from conftest import tool_env
from delf_ret.features import read_features

# Every test runs a tool in a subprocess.
pytestmark = pytest.mark.slow


def extract(config_path, *flags):
  """extract_features with the small test config."""
  return run_cli("delf_ret.cli.extract_features", f"--config_path={config_path}", *flags)


def test_help_lists_flags():
  result = run_cli("delf_ret.cli.extract_features", "--help")
  assert "Extracts DELF features" in result.stdout
  for flag in (
    "--config_path",
    "--images_dir",
    "--list_images_path",
    "--output_dir",
    "--config_override",
  ):
    assert flag in result.stdout


def test_missing_required_flag_is_a_usage_error(tmp_path):
  result = run_cli("delf_ret.cli.extract_features", f"--images_dir={tmp_path}")
  assert result.returncode != 0
  assert "--output_dir is required" in result.stderr + result.stdout


@pytest.fixture
def mixed_folder(tmp_path, shared_data):
  """Two real photos plus one of each kind of bad input."""
  folder = tmp_path / "images"
  folder.mkdir()
  photo = shared_data / "landmarks" / "sacre_coeur_lightglue1.jpg"
  shutil.copy(photo, folder / "good1.jpg")
  shutil.copy(shared_data / "distractors" / "left01.jpg", folder / "good2_gray.jpg")
  data = photo.read_bytes()
  (folder / "bad_truncated.jpg").write_bytes(data[: len(data) // 3])
  (folder / "bad_empty.jpg").write_bytes(b"")
  (folder / "bad_text.png").write_text("not an image")
  (folder / "bad_corrupt.jpg").write_bytes(data[:400] + bytes(range(256)) * 40)
  from PIL import Image

  Image.new("RGB", (6, 6), (200, 10, 10)).save(folder / "bad_tiny.png")
  return folder


def test_bad_inputs_reported_and_others_extracted(mixed_folder, config_path, tmp_path):
  out = tmp_path / "features"
  result = extract(config_path, f"--images_dir={mixed_folder}", f"--output_dir={out}")
  assert result.returncode == 1, result.stderr
  lines = result.stdout.splitlines()
  reasons = {
    "bad_truncated": "truncated",
    "bad_empty": "empty",
    "bad_text": "not an image",
    "bad_corrupt": "corrupt",
    "bad_tiny": "too small",
  }
  for stem, reason in reasons.items():
    matching = [line for line in lines if "ERROR" in line and stem in line]
    assert len(matching) == 1, (stem, result.stdout)
    assert reason in matching[0]
  assert sorted(p.name for p in out.iterdir()) == [
    "extraction_settings.json",
    "good1.delf",
    "good2_gray.delf",
  ]
  assert read_features(out / "good1.delf").descriptor_dim == 40


def test_missing_file_in_list_is_reported(config_path, tmp_path, shared_data):
  listing = tmp_path / "list.txt"
  listing.write_text(f"{shared_data / 'pairs' / 'graf1.png'}\nmissing_photo.jpg\n")
  out = tmp_path / "features"
  result = extract(config_path, f"--list_images_path={listing}", f"--output_dir={out}")
  assert result.returncode == 1
  assert "missing_photo.jpg: file not found" in result.stdout
  assert sorted(p.name for p in out.iterdir()) == ["extraction_settings.json", "graf1.delf"]


def test_empty_folder_and_bad_config(config_path, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  args = [f"--images_dir={empty}", f"--output_dir={tmp_path / 'o'}"]
  result = extract(config_path, *args)
  assert result.returncode == 2 and "no image files" in result.stderr
  result = extract(config_path, *args, "--config_override=delf_local_config.nonsense=1")
  assert result.returncode == 2 and "unknown field 'nonsense'" in result.stderr


def test_interrupted_run_resumes_to_same_files(config_path, tmp_path):
  images = landmark_images()[:6]
  listing = tmp_path / "list.txt"
  listing.write_text("\n".join(str(p) for p in images) + "\n")
  args = [f"--config_path={config_path}", f"--list_images_path={listing}"]

  reference = tmp_path / "reference"
  assert (
    run_cli("delf_ret.cli.extract_features", *args, f"--output_dir={reference}").returncode == 0
  )

  resumed = tmp_path / "resumed"
  process = subprocess.Popen(
    [sys.executable, "-m", "delf_ret.cli.extract_features", *args, f"--output_dir={resumed}"],
    env=tool_env(),
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while time.time() < deadline and not (resumed.exists() and list(resumed.glob("*.delf"))):
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  written = len(list(resumed.glob("*.delf")))
  assert 0 < written < len(images), "the kill should land mid-run"

  result = run_cli("delf_ret.cli.extract_features", *args, f"--output_dir={resumed}")
  assert result.returncode == 0
  assert result.stdout.count("skipped") == written
  names = sorted(p.name for p in reference.glob("*.delf"))
  assert names == sorted(p.name for p in resumed.glob("*.delf"))
  for name in names:
    assert (reference / name).read_bytes() == (resumed / name).read_bytes(), name
  # A rerun with every file made says so before it loads TensorFlow and the model (it
  # never reaches the per-image loop that logs "skipped").
  again = run_cli("delf_ret.cli.extract_features", *args, f"--output_dir={resumed}")
  assert again.returncode == 0 and "skipped" not in again.stdout + again.stderr
  assert again.stdout.strip().splitlines()[-1] == (
    f"done: nothing left to do, all {len(images)} feature files are in {resumed} with the "
    "same settings"
  )
  assert "tensorflow" not in again.stderr.lower()


def test_learn_pca_cli_writes_loadable_files(config_path, tmp_path, shared_data):
  from delf_ret.extract.pca import load_pca
  from delf_ret.extract.pca import pca_paths

  out = tmp_path / "pca"
  result = run_cli(
    "delf_ret.cli.learn_pca",
    f"--config_path={config_path}",
    f"--images_dir={shared_data / 'pairs'}",
    "--max_images=3",
    f"--output_dir={out}",
  )
  assert result.returncode == 0, result.stderr
  assert "pca_parameters {" in result.stdout
  model = load_pca(*pca_paths(out))
  assert model.projection.shape[1] == 1024
  assert np.all(np.diff(model.variances) <= 1e-6)


def test_create_model_cli(tmp_path):
  from delf_ret.model import load_delf_model

  path = tmp_path / "m.keras"
  result = run_cli(
    "delf_ret.cli.create_delf_model",
    f"--output_path={path}",
    "--backbone_weights=random",
    "--num_classes=4",
    "--seed=3",
  )
  assert result.returncode == 0, result.stderr
  assert load_delf_model(path).num_classes == 4
  result = run_cli(
    "delf_ret.cli.create_delf_model",
    f"--output_path={path}",
    f"--backbone_weights={tmp_path / 'none.h5'}",
  )
  assert result.returncode == 2 and "not found" in result.stderr
