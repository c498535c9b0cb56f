"""Building an index from feature files: resume, additions, bad files, type mismatch."""

import faiss
import numpy as np
import pytest

from conftest import make_features
from conftest import random_unit_descriptors
from delf_ret.features import read_features
from delf_ret.features import write_features
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.index import LocalIndexError
from delf_ret.index.builder import build_index
from delf_ret.index.builder import list_feature_files


@pytest.fixture(autouse=True)
def one_faiss_thread():
  """Tiny indexes: one faiss thread (no OpenMP spin-waiting on a busy machine)."""
  threads = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)
  yield
  faiss.omp_set_num_threads(threads)


def write_images(folder, names, rng, dim=16, n=30):
  folder.mkdir(exist_ok=True)
  for name in names:
    write_features(
      folder / f"{name}.delf",
      make_features(rng.uniform(0, 100, (n, 2)), random_unit_descriptors(rng, n, dim)),
    )


def test_build_resume_and_add(tmp_path):
  rng = np.random.default_rng(0)
  features, index_dir = tmp_path / "features", tmp_path / "index"
  write_images(features, ["a", "b", "c"], rng)
  lines = []
  index, failures = build_index(
    list_feature_files(features), index_dir, IndexParams(), save_every=2, log=lines.append
  )
  assert failures == [] and sorted(index.image_ids()) == ["a", "b", "c"]
  assert lines[-1].endswith("3 images (3 added now)")
  # New files are added to the saved index; indexed ones are skipped.
  write_images(features, ["d"], rng)
  index, _ = build_index(list_feature_files(features), index_dir, IndexParams(), log=lines.append)
  assert lines[-1].endswith("4 images (1 added now)")
  loaded = LocalFeatureIndex.load(index_dir)
  assert loaded.image_ids() == ["a", "b", "c", "d"] and loaded.num_descriptors == 120


def test_bad_files_are_reported_not_fatal(tmp_path):
  rng = np.random.default_rng(1)
  features = tmp_path / "features"
  write_images(features, ["a", "b"], rng)
  write_images(features, ["wrong_dim"], rng, dim=8)
  (features / "broken.delf").write_bytes(b"\xff\xff not a protobuf")
  write_features(features / "empty.delf", make_features(np.zeros((0, 2)), np.zeros((0, 16))))
  index, failures = build_index(
    list_feature_files(features), tmp_path / "index", IndexParams(), log=lambda line: None
  )
  assert sorted(index.image_ids()) == ["a", "b"]  # An image without features is not indexed.
  reasons = {path.name: reason for path, reason in failures}
  assert set(reasons) == {"broken.delf", "wrong_dim.delf", "empty.delf"}
  assert "no features" in reasons["empty.delf"]
  assert "8-d descriptors, but the index holds 16-d" in reasons["wrong_dim.delf"]


def test_type_mismatch_and_too_small_ivfpq(tmp_path):
  rng = np.random.default_rng(2)
  features = tmp_path / "features"
  write_images(features, ["a", "b"], rng)
  paths = list_feature_files(features)
  build_index(paths, tmp_path / "index", IndexParams(), log=lambda line: None)
  with pytest.raises(LocalIndexError, match="holds a 'flat' index"):
    build_index(paths, tmp_path / "index", IndexParams(index_type="hnsw"), log=lambda line: None)
  with pytest.raises(LocalIndexError, match="training descriptors"):
    build_index(
      paths,
      tmp_path / "ivf",
      IndexParams(index_type="ivfpq", nlist=256, pq_m=4),
      log=lambda line: None,
    )
  with pytest.raises(LocalIndexError, match="no .delf feature files"):
    list_feature_files(tmp_path)


def test_ivfpq_trained_on_a_sample(tmp_path):
  rng = np.random.default_rng(3)
  features = tmp_path / "features"
  write_images(features, [f"img{i}" for i in range(10)], rng, n=100)
  params = IndexParams(
    index_type="ivfpq", nlist=4, pq_m=4, pq_nbits=4, nprobe=4, train_sample_size=500
  )
  index, failures = build_index(
    list_feature_files(features), tmp_path / "index", params, log=lambda line: None
  )
  assert not failures and len(index) == 10 and index.num_descriptors == 1000


def test_fast_scan_build_remove_and_resume(tmp_path):
  from delf_ret.index.builder import remove_images

  rng = np.random.default_rng(4)
  features, index_dir = tmp_path / "features", tmp_path / "index"
  write_images(features, [f"img{i}" for i in range(8)], rng, n=60)
  params = IndexParams(
    index_type="ivfpq",
    nlist=4,
    pq_m=16,
    pq_nbits=4,
    nprobe=4,
    pq_fast_scan=True,
    train_sample_size=400,
  )
  index, failures = build_index(
    list_feature_files(features), index_dir, params, log=lambda line: None
  )
  assert not failures and index.num_descriptors == 480
  index = remove_images(index_dir, ["img3"], log=lambda line: None)
  assert "img3" not in index and index.num_descriptors == 420
  (features / "img3.delf").unlink()
  write_images(features, ["new"], rng, n=60)  # Added to the saved index without retraining.
  index, _ = build_index(list_feature_files(features), index_dir, params, log=lambda line: None)
  assert sorted(index.image_ids()) == sorted([f"img{i}" for i in range(8) if i != 3] + ["new"])
  assert index.num_descriptors == 480
  slots, _, _ = index.search(read_features(features / "new.delf").descriptors, k=1)
  assert (slots[:, 0] == index.slot_of("new")).all()
  with pytest.raises(LocalIndexError, match="pq_fast_scan True but the config asks for False"):
    build_index(
      list_feature_files(features),
      index_dir,
      IndexParams(index_type="ivfpq", nlist=4, pq_m=16, pq_nbits=4),
      log=lambda line: None,
    )
