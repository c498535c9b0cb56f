"""The default model shipped in the package: loads offline, extracts, its attention ranks matches."""

import numpy as np
import pytest

from delf_ret import config as config_lib
from delf_ret.default_model import CONFIG_FILE
from delf_ret.default_model import PCA_FILES
from delf_ret.default_model import WEIGHTS_FILE
from delf_ret.default_model import default_config_path
from delf_ret.default_model import default_model_dir


@pytest.fixture(scope="module")
def default_extractor():
  from delf_ret.extract.extractor import DelfExtractor

  return DelfExtractor(config_lib.load_config(default_config_path()))


def test_files_ship_inside_the_package_and_the_weights_fit_the_budget():
  folder = default_model_dir()
  for name in (CONFIG_FILE, WEIGHTS_FILE, "MODEL_CARD.md", *PCA_FILES):
    assert (folder / name).is_file(), name
  assert (folder / WEIGHTS_FILE).stat().st_size <= 25 * 2**20
  config = config_lib.load_config(default_config_path())
  # Relative paths resolve inside the package folder: nothing outside it is needed.
  assert config.model_path == str(folder / WEIGHTS_FILE)
  assert config.delf_local_config.pca_parameters.mean_path == str(folder / PCA_FILES[0])


@pytest.mark.slow  # Extracts with the shipped model (fixture 9 s, tests 10-12 s).
def test_features_of_a_real_photo(default_extractor, shared_data):
  from delf_ret.images import load_image

  image = load_image(shared_data / "landmarks" / "sacre_coeur_lightglue1.jpg")
  features = default_extractor.extract(image)
  assert 100 <= features.num_features <= 1000
  assert features.descriptor_dim == 40
  np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)
  assert np.all(np.diff(features.attention) <= 0)  # Sorted by decreasing attention.
  height, width = image.shape[:2]
  assert features.locations[:, 0].max() < height and features.locations[:, 1].max() < width


@pytest.mark.slow  # Extracts with the shipped model (fixture 9 s, tests 10-12 s).
def test_top_half_by_attention_matches_better_than_a_random_half(default_extractor, shared_data):
  """graf1/graf3: share of putative matches within 10 px of the ground-truth homography."""
  import cv2

  from delf_ret.extract.extractor import DelfExtractor
  from delf_ret.extract.geometry import apply_homography
  from delf_ret.images import load_image
  from delf_ret.match import RansacParams
  from delf_ret.match import putative_matches

  storage = cv2.FileStorage(str(shared_data / "pairs" / "H1to3p.xml"), cv2.FILE_STORAGE_READ)
  homography = storage.getNode("H13").mat()
  storage.release()
  config = config_lib.load_config(default_config_path(), ["delf_local_config.score_threshold=0"])
  # All 1000 cells by attention, not only those above the threshold.
  extractor = DelfExtractor(config, model=default_extractor.model)
  a = extractor.extract(load_image(shared_data / "pairs" / "graf1.png"))
  b = extractor.extract(load_image(shared_data / "pairs" / "graf3.png"))
  params = RansacParams.from_config(config.retrieval_config)

  def correct_share(keep_a, keep_b):
    matches = putative_matches(
      a.descriptors[keep_a],
      b.descriptors[keep_b],
      params.distance_threshold,
      params.ratio_threshold,
      params.mutual,
    )
    projected = apply_homography(homography, a.locations[keep_a][matches[:, 0]])
    errors = np.linalg.norm(projected - b.locations[keep_b][matches[:, 1]], axis=1)
    return float(np.mean(errors < 10))

  half_a, half_b = a.num_features // 2, b.num_features // 2
  top = correct_share(np.arange(half_a), np.arange(half_b))  # Features come sorted by attention.
  rng = np.random.default_rng(0)
  random = np.mean(
    [
      correct_share(
        rng.permutation(a.num_features)[:half_a], rng.permutation(b.num_features)[:half_b]
      )
      for _ in range(10)
    ]
  )
  assert top > random
