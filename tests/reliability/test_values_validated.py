"""Values that used to pass validation and give silent wrong results: each is refused by name."""

import numpy as np
import pytest

from conftest import installed_script
from conftest import run_command
from delf_ret.config import ConfigError
from delf_ret.config import load_config
from delf_ret.default_model import default_config_path
from delf_ret.extract.pca import PcaError
from delf_ret.extract.pca import apply_pca
from delf_ret.extract.pca import learn_pca
from delf_ret.extract.pca import load_pca
from delf_ret.extract.pca import save_pca


@pytest.mark.parametrize(
  "override, message",
  [
    ("delf_local_config.score_threshold=nan", "delf_local_config.score_threshold must be a finite"),
    ("delf_local_config.score_threshold=inf", "delf_local_config.score_threshold must be a finite"),
    ("image_scales=nan", "image_scales must be a finite"),
    ("image_scales=inf", "image_scales must be a finite"),
    ("retrieval_config.match_distance_threshold=nan", "match_distance_threshold must be a finite"),
    (
      "retrieval_config.ransac_residual_threshold=inf",
      "ransac_residual_threshold must be a finite",
    ),
    ("retrieval_config.ransac_residual_threshold=-3", "ransac_residual_threshold must be positive"),
    ("retrieval_config.ransac_stop_probability=1.5", "ransac_stop_probability must be in"),
    ("retrieval_config.ransac_stop_probability=nan", "ransac_stop_probability must be a finite"),
    ("retrieval_config.ransac_max_trials=0", "ransac_max_trials must be positive"),
    ("retrieval_config.ransac_seed=-1", "ransac_seed must not be negative"),
    ("max_image_size=0", "max_image_size must be positive or -1"),
  ],
)
def test_bad_numbers_are_refused_with_the_field_named(override, message):
  with pytest.raises(ConfigError, match=message):
    load_config(default_config_path(), [override])


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--seed=-1", "ransac_seed must not be negative"),
    ("--stop_probability=2", "ransac_stop_probability must be in"),
    ("--residual_threshold=nan", "ransac_residual_threshold must be a finite"),
    ("--max_trials=0", "ransac_max_trials must be positive"),
  ],
)
@pytest.mark.slow  # Runs match_images in a subprocess.
def test_match_images_refuses_bad_ransac_flags_instead_of_printing_zero_inliers(
  flag, message, shared_data, tmp_path
):
  script = installed_script("match_images")
  pairs = shared_data / "pairs"
  result = run_command(
    [script, str(pairs / "graf1.png"), str(pairs / "graf3.png"), flag], timeout=300
  )
  assert result.returncode == 2 and "inliers" not in result.stdout
  assert result.stderr.strip().splitlines()[-1].startswith("error:") and message in result.stderr


def test_whitening_with_bad_or_missing_variances_is_refused(tmp_path):
  rng = np.random.default_rng(0)
  model = learn_pca(rng.normal(size=(200, 16)).astype(np.float32))
  descriptors = rng.normal(size=(5, 16)).astype(np.float32)
  assert np.all(np.isfinite(apply_pca(descriptors, model, 8, use_whitening=True)))
  bad = model.variances.copy()
  bad[2] = np.nan
  paths = [tmp_path / "mean.npy", tmp_path / "projection.npy", tmp_path / "variances.npy"]
  save_pca(model, *paths)
  np.save(paths[2], bad)
  with pytest.raises(PcaError, match="NaN or infinite"):
    load_pca(*paths)
  np.save(paths[2], -np.abs(model.variances))
  with pytest.raises(PcaError, match="negative variances"):
    load_pca(*paths)
  without = load_pca(paths[0], paths[1])  # No variances file: whitening is impossible.
  with pytest.raises(PcaError, match="whitening needs the PCA variances"):
    apply_pca(descriptors, without, 8, use_whitening=True)
  paths[0].write_bytes(b"not an npy file")
  with pytest.raises(PcaError, match="not a readable .npy array"):
    load_pca(*paths)
