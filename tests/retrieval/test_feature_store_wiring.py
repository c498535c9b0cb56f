"""The index's packed feature store in use: build_index / the demo write it beside the index,
reranking reads it, a stale store falls back to the .delf files, removal keeps it in step."""

import pathlib
import shutil

import numpy as np
import pytest

from conftest import copy_demo_folder
from delf_ret.features import read_features
from delf_ret.index.feature_store import STORE_FOLDER
from delf_ret.index.feature_store import FeatureStore
from delf_ret.retrieval.indexing import database_feature_loader
from delf_ret.retrieval.indexing import remove_from_database_store

pytestmark = pytest.mark.slow  # Uses the shared demo run (TensorFlow in a subprocess).


def _demo_folders(bundled_demo_run, tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
  folder, result = bundled_demo_run
  assert result.returncode == 0, result.stderr[-2000:]
  output = copy_demo_folder(folder, tmp_path / "copy") / "demo_output"
  return output / "index", output / "features"


def test_the_demo_index_holds_a_store_equal_to_its_feature_files(bundled_demo_run, tmp_path):
  index_dir, features_dir = _demo_folders(bundled_demo_run, tmp_path)
  store = FeatureStore.open(index_dir / STORE_FOLDER)
  ids = sorted(path.stem for path in features_dir.glob("*.delf"))
  assert sorted(store.image_ids()) == ids and len(ids) == 20
  logged: list[str] = []
  load = database_feature_loader(index_dir, features_dir, logged.append)
  assert logged == []
  for image_id in ids:
    stored, source = load(image_id), read_features(features_dir / f"{image_id}.delf")
    np.testing.assert_array_equal(stored.descriptors, source.descriptors)
    np.testing.assert_array_equal(stored.locations, source.locations)
  assert not load(ids[0]).descriptors.flags.writeable  # A view of the mapped file.


def test_a_stale_store_falls_back_to_the_feature_files(bundled_demo_run, tmp_path):
  index_dir, features_dir = _demo_folders(bundled_demo_run, tmp_path)
  first = sorted(features_dir.glob("*.delf"))[0]
  other = sorted(features_dir.glob("*.delf"))[1]
  shutil.copyfile(other, first)  # The .delf files are the truth: now another image's features.
  logged: list[str] = []
  load = database_feature_loader(index_dir, features_dir, logged.append)
  assert len(logged) == 1 and "stale" in logged[0] and "reads the .delf files" in logged[0]
  np.testing.assert_array_equal(load(first.stem).descriptors, read_features(other).descriptors)


def test_removal_keeps_the_store_in_step(bundled_demo_run, tmp_path):
  index_dir, features_dir = _demo_folders(bundled_demo_run, tmp_path)
  removed = sorted(path.stem for path in features_dir.glob("*.delf"))[:2]
  remove_from_database_store(index_dir, [*removed, "not_in_the_store"], log=lambda line: None)
  store = FeatureStore.open(index_dir / STORE_FOLDER)
  assert len(store) == 18 and not any(image_id in store for image_id in removed)


def test_no_store_reads_the_feature_files(tmp_path, bundled_demo_run):
  _, features_dir = _demo_folders(bundled_demo_run, tmp_path)
  load = database_feature_loader(tmp_path / "no_index", features_dir)
  image_id = sorted(features_dir.glob("*.delf"))[0].stem
  assert load(image_id).descriptors.flags.writeable


def test_an_index_of_two_feature_folders_keeps_working(bundled_demo_run, tmp_path):
  from delf_ret.retrieval.indexing import sync_database_store

  index_dir, features_dir = _demo_folders(bundled_demo_run, tmp_path)
  other = tmp_path / "other_features"
  other.mkdir()
  ids = sorted(path.stem for path in features_dir.glob("*.delf"))
  shutil.copyfile(features_dir / f"{ids[0]}.delf", other / f"{ids[0]}.delf")
  logged: list[str] = []
  sync_database_store(index_dir, other, ids, logged.append)  # 19 ids have no file there.
  assert len(logged) == 1 and "feature store not updated: 19 indexed images" in logged[0]
  assert len(FeatureStore.open(index_dir / STORE_FOLDER)) == 20  # Left as it was.
  logged.clear()
  database_feature_loader(index_dir, other, logged.append)
  assert len(logged) == 1 and "stale" in logged[0]
