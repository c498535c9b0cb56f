"""End-to-end tests of `python -m delf_ret.cli.match_images` on the real graffiti pair."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import installed_script
from conftest import run_cli
from conftest import run_command
from delf_ret.features import LocalFeatures
from delf_ret.features import write_features

# Every test runs the tool in a subprocess.
pytestmark = pytest.mark.slow


def test_images_to_png_and_json(config_path, shared_data, tmp_path):
  png, report = tmp_path / "m.png", tmp_path / "m.json"
  result = run_cli(
    "delf_ret.cli.match_images",
    str(shared_data / "pairs" / "graf1.png"),
    str(shared_data / "pairs" / "graf3.png"),
    f"--config_path={config_path}",
    f"--output_image={png}",
    f"--output_json={report}",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "putative matches:" in result.stdout and "inliers:" in result.stdout
  with Image.open(png) as image:
    assert image.format == "PNG" and image.width > 2 * 256
  data = json.loads(report.read_text())
  assert len(data["inliers"]) == data["num_putative_matches"] == len(data["matches"])
  assert sum(data["inliers"]) == data["num_inliers"]


def test_feature_files_of_different_dimensions(tmp_path):
  def write(name, dim):
    n = 5
    features = LocalFeatures(
      np.zeros((n, 2)), np.ones(n), np.ones((n, dim)), np.ones(n), np.zeros(n)
    )
    write_features(tmp_path / name, features)
    return str(tmp_path / name)

  result = run_cli("delf_ret.cli.match_images", write("a.delf", 40), write("b.delf", 128))
  assert result.returncode == 2
  assert "descriptor dimensions differ" in result.stderr and "40" in result.stderr


def write_identical_pair(folder, n: int, seed: int, extent: float) -> None:
  """a.delf and b.delf with the same n features: every putative match is an inlier."""
  rng = np.random.default_rng(seed)
  points = rng.uniform(0, extent, (n, 2))
  descriptors = rng.normal(size=(n, 8))
  for name in ("a.delf", "b.delf"):
    write_features(
      folder / name, LocalFeatures(points, np.ones(n), descriptors, np.ones(n), np.zeros(n))
    )


def test_feature_files_need_images_to_draw(tmp_path, shared_data):
  write_identical_pair(tmp_path, 30, seed=0, extent=400)
  args = [
    str(tmp_path / "a.delf"),
    str(tmp_path / "b.delf"),
    f"--output_image={tmp_path / 'x.png'}",
  ]
  result = run_cli("delf_ret.cli.match_images", *args)
  assert result.returncode == 2 and "--image_paths" in result.stderr
  pair = shared_data / "pairs"
  result = run_cli(
    "delf_ret.cli.match_images",
    *args,
    f"--image_paths={pair / 'box.png'},{pair / 'box_in_scene.png'}",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "putative matches: 30; inliers: 30" in result.stdout
  assert (tmp_path / "x.png").stat().st_size > 0


def test_settings_come_from_retrieval_config_and_flags_override_fields(tmp_path):
  rng = np.random.default_rng(1)
  points, descriptors = rng.uniform(0, 400, (20, 2)), rng.normal(size=(20, 8))
  for name in ("a.delf", "b.delf"):
    write_features(
      tmp_path / name, LocalFeatures(points, np.ones(20), descriptors, np.ones(20), np.zeros(20))
    )
  config = tmp_path / "c.pbtxt"
  config.write_text(
    "image_scales: 1.0 delf_local_config { use_pca: false }\n"
    "retrieval_config { ransac_residual_threshold: 5.0 ransac_max_trials: 50 }"
  )
  inputs = [str(tmp_path / "a.delf"), str(tmp_path / "b.delf")]
  report = tmp_path / "m.json"
  result = run_cli(
    "delf_ret.cli.match_images",
    *inputs,
    f"--config_path={config}",
    "--seed=3",
    "--max_trials=70",
    "--transform=homography",
    f"--output_json={report}",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  params = json.loads(report.read_text())["params"]
  assert (
    params["residual_threshold"],
    params["max_trials"],
    params["seed"],
    params["transform"],
  ) == (5.0, 70, 3, "homography")
  assert params["distance_threshold"] == pytest.approx(0.8)  # The .proto default.
  assert params["stop_probability"] == 1.0 and params["mutual"] is False
  bad = run_cli("delf_ret.cli.match_images", *inputs, "--residual_threshold=-1")
  assert bad.returncode == 2 and "ransac_residual_threshold must be positive" in bad.stderr


def test_wrong_number_of_inputs():
  result = run_cli("delf_ret.cli.match_images", "only_one.png")
  assert result.returncode != 0 and "exactly two inputs" in result.stderr + result.stdout


def test_official_flags_through_the_installed_script(tmp_path, shared_data):
  """The official DELF example's command line: --image_*_path and --features_*_path."""
  script = installed_script("match_images")
  write_identical_pair(tmp_path, 25, seed=1, extent=300)
  pair = shared_data / "pairs"
  run = lambda *args: run_command([script, *args], timeout=600)  # noqa: E731
  official = run(
    f"--image_1_path={pair / 'box.png'}",
    f"--image_2_path={pair / 'box_in_scene.png'}",
    f"--features_1_path={tmp_path / 'a.delf'}",
    f"--features_2_path={tmp_path / 'b.delf'}",
    f"--output_image={tmp_path / 'official.png'}",
  )
  assert official.returncode == 0, official.stderr[-2000:]
  assert "putative matches: 25; inliers: 25" in official.stdout
  with Image.open(tmp_path / "official.png") as image:
    assert image.format == "PNG"
  # Images only: extracted with the default model, as positional inputs would be.
  images_only = run(
    f"--image_1_path={pair / 'graf1.png'}",
    f"--image_2_path={pair / 'graf3.png'}",
    f"--output_image={tmp_path / 'extracted.png'}",
  )
  assert images_only.returncode == 0, images_only.stderr[-2000:]
  assert (tmp_path / "extracted.png").is_file()
  both = run(
    str(pair / "graf1.png"),
    str(pair / "graf3.png"),
    f"--image_1_path={pair / 'graf1.png'}",
    f"--image_2_path={pair / 'graf3.png'}",
  )
  assert both.returncode != 0 and "not both" in both.stderr
  half = run(f"--image_1_path={pair / 'graf1.png'}")
  assert half.returncode != 0 and "--image_2_path" in half.stderr
