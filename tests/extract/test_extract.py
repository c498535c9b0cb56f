"""Extraction on real photos with a random-weight model."""

import numpy as np
import pytest

from conftest import landmark_images
from conftest import make_config_text
from delf_ret.config import load_config
from delf_ret.config import parse_config_text
from delf_ret.extract.extractor import DelfExtractor
from delf_ret.extract.extractor import ImageTooSmallError
from delf_ret.extract.extractor import pyramid_levels
from delf_ret.extract.pca import PcaError
from delf_ret.images import load_image

# Every test extracts with the random-weight model (fixtures: 20 s, tests: 5-13 s).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos():
  return [load_image(path) for path in landmark_images()[:3]]


@pytest.fixture(scope="module")
def extractor(config_path, delf_model):
  return DelfExtractor(load_config(config_path), model=delf_model)


def test_features_inside_image_with_pca_dimension_and_unit_norm(extractor, photos):
  for image in photos:
    features = extractor.extract(image)
    height, width = image.shape[:2]
    assert 0 < features.num_features <= 1000
    assert features.descriptor_dim == 40
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)
    y, x = features.locations[:, 0], features.locations[:, 1]
    assert (y >= 0).all() and (y < height).all() and (x >= 0).all() and (x < width).all()
    # Keypoints are in original pixels although the image was capped at 256 px.
    assert max(y.max(), x.max()) > 256
    assert np.all(np.diff(features.attention) <= 0)  # Sorted by decreasing score.
    assert set(np.unique(features.scales)) <= {0.5, 1.0}


def test_max_feature_num_and_threshold(model_path, pca_dir, delf_model, photos):
  config = parse_config_text(make_config_text(model_path, pca_dir, max_feature_num=37))
  features = DelfExtractor(config, model=delf_model).extract(photos[0])
  assert features.num_features == 37
  config.delf_local_config.score_threshold = float(np.median(features.attention))
  high = DelfExtractor(config, model=delf_model).extract(photos[0])
  assert (high.attention >= config.delf_local_config.score_threshold).all()
  config.delf_local_config.score_threshold = 1e9
  assert DelfExtractor(config, model=delf_model).extract(photos[0]).num_features == 0


def test_whitening_changes_descriptors(model_path, pca_dir, delf_model, photos):
  plain = DelfExtractor(parse_config_text(make_config_text(model_path, pca_dir)), model=delf_model)
  white = DelfExtractor(
    parse_config_text(make_config_text(model_path, pca_dir, use_whitening=True)), model=delf_model
  )
  a, b = plain.extract(photos[0]), white.extract(photos[0])
  np.testing.assert_array_equal(a.locations, b.locations)
  assert np.abs(a.descriptors - b.descriptors).max() > 1e-3
  np.testing.assert_allclose(np.linalg.norm(b.descriptors, axis=1), 1.0, atol=1e-5)


def test_compiled_matches_eager_baseline(config_path, delf_model, photos):
  config = load_config(config_path)
  fast = DelfExtractor(config, model=delf_model, backend="compiled").extract(photos[1])
  slow = DelfExtractor(config, model=delf_model, backend="eager").extract(photos[1])
  np.testing.assert_array_equal(fast.locations, slow.locations)
  np.testing.assert_allclose(fast.descriptors, slow.descriptors, atol=1e-4)
  np.testing.assert_allclose(fast.attention, slow.attention, rtol=1e-4)


def test_saved_then_loaded_checkpoint_gives_identical_features(
  config_path, model_path, delf_model, photos
):
  config = load_config(config_path)
  original = DelfExtractor(config, model=delf_model).extract(photos[2])
  reloaded = DelfExtractor(config).extract(photos[2])  # Loads config.model_path.
  np.testing.assert_array_equal(original.descriptors, reloaded.descriptors)
  np.testing.assert_array_equal(original.locations, reloaded.locations)


def test_pyramid_levels_and_tiny_images(config_path, extractor):
  config = load_config(config_path)
  levels = pyramid_levels(731, 1024, config)
  assert [size for _, _, size in levels] == [(91, 128), (183, 256)]
  assert levels[1][1] == (183 / 731, 256 / 1024)
  assert len(pyramid_levels(40, 40, config)) == 2
  assert len(pyramid_levels(20, 40, config)) == 1  # 0.5 -> 10 px, below min_scaled_side.
  with pytest.raises(ImageTooSmallError, match="too small"):
    extractor.extract(np.zeros((8, 8, 3), np.uint8))


def test_missing_pca_files_are_reported(model_path, tmp_path, delf_model):
  config = parse_config_text(make_config_text(model_path, tmp_path))
  with pytest.raises(PcaError, match="PCA mean file not found"):
    DelfExtractor(config, model=delf_model)


def test_too_small_image_file_error_names_the_file(extractor, tmp_path):
  from PIL import Image

  path = tmp_path / "tiny.png"
  Image.new("RGB", (8, 8), (10, 200, 10)).save(path)
  for method in (extractor.extract_file, extractor.extract_raw_file):
    with pytest.raises(ImageTooSmallError, match="too small") as error:
      method(path)
    assert str(error.value).startswith(f"{path}: ")
