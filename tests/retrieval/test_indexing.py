"""index_database: images -> missing .delf files -> index, resumably; a dataset's database files."""

import shutil

import numpy as np
import pytest

from conftest import landmark_images
from conftest import make_features
from delf_ret.errors import InputError
from delf_ret.evaluation.ground_truth import GroundTruthError
from delf_ret.evaluation.ground_truth import RetrievalDataset
from delf_ret.features import read_features
from delf_ret.images import load_image
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.retrieval.indexing import database_feature_paths
from delf_ret.retrieval.indexing import database_image_paths
from delf_ret.retrieval.indexing import index_database


class SiftFiles:
  """image file -> up to 60 unit SIFT features of the photo at 200 px; counts its calls."""

  def __init__(self):
    self.calls = []

  def __call__(self, path):
    import cv2

    self.calls.append(path.name)
    image = load_image(path)
    factor = 200 / max(image.shape[:2])
    gray = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None, fx=factor, fy=factor)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=60).detectAndCompute(gray, None)
    points = np.array([(k.pt[1], k.pt[0]) for k in keypoints], np.float32) / factor
    return make_features(points, descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True))


@pytest.fixture
def photos(tmp_path):
  """Five real landmark photos and one unreadable image file, copied into tmp_path/images."""
  folder = tmp_path / "images"
  folder.mkdir()
  paths = []
  for path in landmark_images()[:5]:
    shutil.copy(path, folder / path.name)
    paths.append(folder / path.name)
  broken = folder / "broken.jpg"
  broken.write_bytes(b"\xff\xd8 not a jpeg")
  return paths, broken


def test_missing_features_are_extracted_then_the_index_resumes(tmp_path, photos):
  paths, broken = photos
  features, index_dir, extract, lines = tmp_path / "features", tmp_path / "index", SiftFiles(), []
  first = index_database(
    index_dir,
    features,
    IndexParams(),
    images=[*paths[:3], broken],
    extract=extract,
    log=lines.append,
  )
  assert extract.calls == [path.name for path in [*paths[:3], broken]]
  assert first.extracted == 3 and [path for path, _ in first.failures] == [broken]
  assert "broken.jpg" in first.failures[0][1] and any("ERROR" in line for line in lines)
  assert first.index.image_ids() == [path.stem for path in paths[:3]]
  assert first.feature_paths == [features / f"{path.stem}.delf" for path in paths[:3]]
  assert set(first.seconds) == {"extraction", "index"}
  # A second run extracts only the new photos and adds them to the saved index.
  extract.calls.clear()
  second = index_database(
    index_dir, features, IndexParams(), images=paths, extract=extract, log=lines.append
  )
  assert extract.calls == [path.name for path in paths[3:]]
  assert second.extracted == 2 and second.failures == []
  assert lines[-1].endswith("5 images (2 added now)")
  loaded = LocalFeatureIndex.load(index_dir)
  assert loaded.image_ids() == [path.stem for path in paths]
  stored = read_features(features / f"{paths[4].stem}.delf")
  hits = loaded.search_images(stored.descriptors, k=1)  # Exact index: each finds itself.
  assert hits.image_ids == [paths[4].stem] and (hits.images[:, 0] == 0).all()


def test_feature_files_are_indexed_as_given_or_the_whole_folder(tmp_path, photos):
  paths, _ = photos
  features = tmp_path / "features"
  index_database(tmp_path / "i0", features, IndexParams(), images=paths, extract=SiftFiles())
  files = sorted(features.glob("*.delf"))
  chosen = index_database(tmp_path / "i1", features, IndexParams(), feature_paths=files[1:3])
  assert chosen.index.image_ids() == [path.stem for path in files[1:3]] and chosen.extracted == 0
  whole = index_database(tmp_path / "i2", features, IndexParams(), log=lambda line: None)
  assert whole.index.image_ids() == [path.stem for path in files]


def test_input_errors_name_the_problem(tmp_path, photos):
  paths, broken = photos
  features = tmp_path / "features"
  with pytest.raises(InputError, match="no extractor"):
    index_database(tmp_path / "index", features, IndexParams(), images=paths)
  with pytest.raises(InputError, match="not both"):
    index_database(
      tmp_path / "index",
      features,
      IndexParams(),
      images=paths,
      extract=SiftFiles(),
      feature_paths=[],
    )
  with pytest.raises(InputError, match="no images to index"):
    index_database(tmp_path / "index", features, IndexParams(), images=[], extract=SiftFiles())
  with pytest.raises(InputError, match=r"no image could be extracted .*broken\.jpg"):
    index_database(
      tmp_path / "index", features, IndexParams(), images=[broken], extract=SiftFiles()
    )
  (tmp_path / "a_file").write_text("not a folder")
  with pytest.raises(InputError, match="cannot make the feature folder .*a_file"):
    index_database(
      tmp_path / "index", tmp_path / "a_file", IndexParams(), images=paths, extract=SiftFiles()
    )
  assert not (tmp_path / "index").exists()


def test_database_files_of_a_dataset(tmp_path, photos):
  paths, _ = photos
  names = [path.stem for path in paths]
  dataset = RetrievalDataset("toy", "revisited", names[:3], [names[0]], [{}], paths[0].parent)
  assert database_image_paths(dataset) == paths[:3]
  features = tmp_path / "features"
  index_database(
    tmp_path / "index", features, IndexParams(), images=paths[1:3], extract=SiftFiles()
  )
  present, missing = database_feature_paths(dataset, features)
  assert present == [features / f"{name}.delf" for name in names[1:3]]
  assert [path.name for path, _ in missing] == [f"{names[0]}.delf"]
  assert "feature file of database image not found" in missing[0][1]
  gone = RetrievalDataset("toy", "revisited", ["nowhere"], [], [], paths[0].parent)
  with pytest.raises(GroundTruthError, match=r"1 of 1 database images of toy are missing"):
    database_image_paths(gone)
  with pytest.raises(GroundTruthError, match="none of the 1 database feature files of toy"):
    database_feature_paths(gone, features)


@pytest.mark.slow  # Builds the DELF model (TensorFlow) and learns a PCA.
def test_a_delf_extractor_goes_through_the_batch_extractor(tmp_path, photos, config_path):
  from delf_ret.config import load_config
  from delf_ret.extract.extractor import DelfExtractor

  paths, broken = photos
  features = tmp_path / "features"
  config = load_config(config_path)
  result = index_database(
    tmp_path / "index",
    features,
    IndexParams(),
    images=[*paths[:2], broken],
    extract=DelfExtractor(config),
    dim=40,
    log=lambda line: None,
  )
  assert result.extracted == 2 and [path for path, _ in result.failures] == [broken]
  assert result.index.image_ids() == [path.stem for path in paths[:2]] and result.index.dim == 40
  # The batch extractor records its settings in the folder (extract.settings).
  assert any(path.suffix != ".delf" for path in features.iterdir())
