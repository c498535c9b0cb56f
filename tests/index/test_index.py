"""LocalFeatureIndex: add / delete / search, crash-safe save, clear errors."""

import dataclasses
import json

import faiss
import numpy as np
import pytest

from conftest import random_unit_descriptors
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.index import LocalIndexError
from delf_ret.index import local_index
from delf_ret.protos.delf_config_pb2 import DelfRetrievalConfig

DIM = 40
SMALL_IVF = IndexParams(index_type="ivfpq", nlist=8, pq_m=10, pq_nbits=4, nprobe=8)
# Fast-scan 4-bit PQ (one sub-quantiser per dimension) with an HNSW coarse quantiser.
FAST_IVF = IndexParams(
  index_type="ivfpq",
  nlist=16,
  pq_m=DIM,
  pq_nbits=4,
  nprobe=16,
  pq_fast_scan=True,
  coarse_quantizer="hnsw",
  hnsw_m=8,
)


@pytest.fixture(autouse=True)
def one_faiss_thread():
  """Trains and searches these tiny indexes on one thread: on a busy machine faiss' OpenMP
  threads spin-wait for each other, which made the IVF tests 20x slower."""
  threads = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)
  yield
  faiss.omp_set_num_threads(threads)


def build(params, rng):
  index = LocalFeatureIndex(DIM, params)
  index.train(random_unit_descriptors(rng, 2000, DIM))
  images = {f"img{i}": random_unit_descriptors(rng, 50, DIM) for i in range(6)}
  for name, descriptors in images.items():
    index.add(name, descriptors)
  return index, images


@pytest.mark.parametrize(
  "params",
  [IndexParams(), SMALL_IVF, FAST_IVF, IndexParams(index_type="hnsw")],
  ids=["flat", "ivfpq", "ivfpq_fast_scan", "hnsw"],
)
def test_add_delete_search_never_returns_deleted(params):
  rng = np.random.default_rng(0)
  index, images = build(params, rng)
  slots, keypoints, _ = index.search(images["img3"][:10], k=1)
  if params.index_type != "ivfpq":  # Exact for flat; HNSW finds an exact duplicate.
    assert (slots[:, 0] == index.slot_of("img3")).all()
    np.testing.assert_array_equal(keypoints[:, 0], np.arange(10))
  index.delete("img3")
  assert "img3" not in index and len(index) == 5
  slots, _, _ = index.search(images["img3"], k=20)
  assert 3 not in set(slots.ravel().tolist())
  index.add("img3", images["img3"])  # Re-added under a new slot.
  slots, _, _ = index.search(images["img3"][:5], k=1)
  expected = {index.slot_of("img3")} | ({-1} if params.index_type == "ivfpq" else set())
  assert set(slots[:, 0].tolist()) <= expected
  index.compact()
  slots, _, _ = index.search(images["img3"], k=20)
  assert 3 not in set(slots.ravel().tolist())


def test_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  index, images = build(IndexParams(index_type="hnsw"), rng)
  index.delete("img1")
  index.save(tmp_path / "idx")
  loaded = LocalFeatureIndex.load(tmp_path / "idx", expected_dim=DIM)
  assert loaded.image_ids() == index.image_ids() == ["img0", "img2", "img3", "img4", "img5"]
  # The deleted image's descriptors stay in the HNSW graph until compact(), never in results.
  assert loaded.num_descriptors == 300 and "img1" not in loaded
  assert 1 not in set(loaded.search(images["img1"], 20)[0].ravel().tolist())
  query = images["img4"][:7]
  np.testing.assert_array_equal(loaded.search(query, 3)[0], index.search(query, 3)[0])
  index.save(tmp_path / "idx")  # A second save leaves one version folder.
  assert len(list((tmp_path / "idx").glob("v-*"))) == 1


def test_interrupted_save_keeps_previous_index(tmp_path, monkeypatch):
  rng = np.random.default_rng(2)
  index, images = build(IndexParams(), rng)
  index.save(tmp_path / "idx")
  index.add("new", random_unit_descriptors(rng, 10, DIM))

  def fail(*args, **kwargs):
    raise OSError("simulated crash after index.faiss was written")

  monkeypatch.setattr(local_index.json, "dumps", fail)
  with pytest.raises(OSError, match="simulated crash"):
    index.save(tmp_path / "idx")
  monkeypatch.undo()
  loaded = LocalFeatureIndex.load(tmp_path / "idx")
  assert "new" not in loaded and len(loaded) == 6


def test_dimension_and_corruption_errors(tmp_path):
  rng = np.random.default_rng(3)
  index, _ = build(IndexParams(), rng)
  with pytest.raises(LocalIndexError, match="dimension 40"):
    index.add("x", np.zeros((3, 128), np.float32))
  with pytest.raises(LocalIndexError, match="already in the index"):
    index.add("img0", random_unit_descriptors(rng, 2, DIM))
  with pytest.raises(LocalIndexError, match="not in the index"):
    index.delete("nope")
  index.save(tmp_path / "idx")
  with pytest.raises(LocalIndexError, match="holds 40-d descriptors, expected 128-d"):
    LocalFeatureIndex.load(tmp_path / "idx", expected_dim=128)
  version = (tmp_path / "idx" / "CURRENT").read_text()
  meta_path = tmp_path / "idx" / version / "meta.json"
  meta = json.loads(meta_path.read_text())
  meta_path.write_text(json.dumps(dict(meta, format_version=99)))
  with pytest.raises(LocalIndexError, match="format version 99"):
    LocalFeatureIndex.load(tmp_path / "idx")
  meta_path.write_text(json.dumps(meta))
  (tmp_path / "idx" / version / "index.faiss").write_bytes(b"garbage")
  with pytest.raises(LocalIndexError, match="corrupt"):
    LocalFeatureIndex.load(tmp_path / "idx")
  with pytest.raises(LocalIndexError, match="CURRENT file missing"):
    LocalFeatureIndex.load(tmp_path / "empty")


def test_ivfpq_must_be_trained_first():
  index = LocalFeatureIndex(DIM, SMALL_IVF)
  with pytest.raises(LocalIndexError, match="trained"):
    index.add("a", np.zeros((2, DIM), np.float32))
  with pytest.raises(LocalIndexError, match="must divide"):
    LocalFeatureIndex(DIM, IndexParams(index_type="ivfpq", pq_m=7))


def test_fast_scan_ivf_add_delete_save_load_without_retraining(tmp_path):
  rng = np.random.default_rng(4)
  index, images = build(FAST_IVF, rng)
  # White-box (this is the index's own test): the faiss index the parameters ask for.
  assert isinstance(index._faiss, faiss.IndexIVFPQFastScan)
  assert isinstance(faiss.downcast_index(index._faiss.quantizer), faiss.IndexHNSWFlat)
  for name, descriptors in images.items():  # All lists probed: each descriptor finds itself.
    slots, keypoints, _ = index.search(descriptors, k=2)
    assert (slots[:, 0] == index.slot_of(name)).all()
    np.testing.assert_array_equal(keypoints[:, 0], np.arange(50))
  index.delete("img2")
  assert index.num_descriptors == 250
  slots, _, _ = index.search(images["img2"], k=10)
  assert 2 not in set(slots.ravel().tolist()) and (slots >= 0).all()
  index.save(tmp_path / "idx")
  loaded = LocalFeatureIndex.load(tmp_path / "idx", expected_dim=DIM)
  assert loaded.params == FAST_IVF and not loaded.needs_training
  assert isinstance(loaded._faiss, faiss.IndexIVFPQFastScan)
  query = images["img4"][:20]
  np.testing.assert_array_equal(loaded.search(query, 5)[0], index.search(query, 5)[0])
  # Per-image delete and add keep working on the loaded index, with no retraining
  # (an add after a delete is the case that faiss' fast-scan removal got wrong).
  extra = random_unit_descriptors(rng, 30, DIM)
  loaded.delete("img0")
  loaded.add("extra", extra)
  assert loaded.num_descriptors == 250 - 50 + 30
  slots, _, _ = loaded.search(extra, k=1)
  assert (slots[:, 0] == loaded.slot_of("extra")).all()
  slots, _, _ = loaded.search(images["img0"], k=10)
  assert 0 not in set(slots.ravel().tolist())


def test_fast_scan_settings_from_config_and_errors():
  retrieval = DelfRetrievalConfig(
    index_type="ivfpq", pq_m=40, pq_nbits=4, pq_fast_scan=True, coarse_quantizer="hnsw"
  )
  params = IndexParams.from_config(retrieval)
  assert params.pq_fast_scan and params.coarse_quantizer == "hnsw" and params.pq_nbits == 4
  assert IndexParams() == IndexParams(pq_fast_scan=False, coarse_quantizer="flat")
  with pytest.raises(LocalIndexError, match="pq_fast_scan needs pq_nbits 4"):
    LocalFeatureIndex(DIM, IndexParams(index_type="ivfpq", pq_fast_scan=True, pq_nbits=8))
  with pytest.raises(LocalIndexError, match="coarse_quantizer must be one of"):
    LocalFeatureIndex(DIM, IndexParams(index_type="ivfpq", coarse_quantizer="lsh"))


def test_index_saved_before_the_fast_scan_fields_loads(tmp_path):
  rng = np.random.default_rng(5)
  index, images = build(SMALL_IVF, rng)
  index.save(tmp_path / "idx")
  version = (tmp_path / "idx" / "CURRENT").read_text()
  meta_path = tmp_path / "idx" / version / "meta.json"
  meta = json.loads(meta_path.read_text())
  for name in ("pq_fast_scan", "coarse_quantizer"):
    del meta["params"][name]
  meta_path.write_text(json.dumps(meta))
  loaded = LocalFeatureIndex.load(tmp_path / "idx")
  assert loaded.params == SMALL_IVF
  loaded.delete("img1")
  assert loaded.num_descriptors == 250


def test_search_images_names_the_hits_by_image():
  rng = np.random.default_rng(6)
  index, images = build(IndexParams(), rng)
  index.delete("img1")
  query = np.concatenate([images["img4"][:5], images["img0"][:3]])
  hits = index.search_images(query, k=3)
  slots, keypoints, distances = index.search(query, k=3)
  assert hits.images.shape == hits.keypoints.shape == hits.distances.shape == (8, 3)
  assert hits.image_ids == [name for name in index.image_ids() if name in hits.image_ids]
  named = [[hits.image_ids[i] if i >= 0 else None for i in row] for row in hits.images.tolist()]
  by_slot = {index.slot_of(name): name for name in index.image_ids()}
  assert named == [[by_slot.get(s) for s in row] for row in slots.tolist()]
  assert [row[0] for row in named] == ["img4"] * 5 + ["img0"] * 3  # Exact index: itself first.
  np.testing.assert_array_equal(hits.keypoints[:, 0], [0, 1, 2, 3, 4, 0, 1, 2])
  np.testing.assert_array_equal(hits.distances, distances)
  empty = LocalFeatureIndex(DIM).search_images(query, k=2)  # No image: every hit is -1.
  assert empty.image_ids == [] and (empty.images == -1).all() and (empty.keypoints == -1).all()


def test_image_ids_slots_and_sizes():
  rng = np.random.default_rng(7)
  index, images = build(IndexParams(), rng)
  assert index.image_ids() == [f"img{i}" for i in range(6)] and index.dim == DIM
  index.delete("img2")
  index.add("img2", images["img2"])  # Re-added: a new slot, last in order of adding.
  assert index.image_ids()[-1] == "img2" and index.slot_of("img2") == 6
  assert index.num_descriptors == 300 and index.serialized_bytes() > 300 * DIM * 4
  with pytest.raises(LocalIndexError, match="'nope' is not in the index"):
    index.slot_of("nope")


def test_search_breadth_is_set_through_the_index_and_saved(tmp_path):
  rng = np.random.default_rng(8)
  index, images = build(SMALL_IVF, rng)
  query = images["img5"][:20]
  assert index.params.nprobe == 8  # All 8 lists: every descriptor finds itself.
  assert (index.search(query, 1)[0][:, 0] == index.slot_of("img5")).all()
  index.set_search_breadth(nprobe=1, ef_search=7)
  assert (index.params.nprobe, index.params.ef_search) == (1, 7)
  assert dataclasses.replace(index.params, nprobe=8, ef_search=SMALL_IVF.ef_search) == SMALL_IVF
  assert faiss.extract_index_ivf(index._faiss).nprobe == 8  # Applied by the next search.
  index.search(query, 1)
  assert faiss.extract_index_ivf(index._faiss).nprobe == 1
  index.set_search_breadth(ef_search=9)  # None: nprobe unchanged.
  assert (index.params.nprobe, index.params.ef_search) == (1, 9)
  with pytest.raises(LocalIndexError, match="at least 1, got nprobe 0"):
    index.set_search_breadth(nprobe=0)
  index.save(tmp_path / "idx")
  assert LocalFeatureIndex.load(tmp_path / "idx").params.nprobe == 1
  with pytest.raises(AttributeError):
    index.params = SMALL_IVF  # Read-only: set_search_breadth changes it.


def test_train_sets_the_kmeans_iterations():
  rng = np.random.default_rng(9)
  index = LocalFeatureIndex(DIM, SMALL_IVF)
  index.train(random_unit_descriptors(rng, 500, DIM), kmeans_iterations=3)
  assert not index.needs_training and faiss.extract_index_ivf(index._faiss).cp.niter == 3
