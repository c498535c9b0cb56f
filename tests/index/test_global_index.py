"""GlobalDescriptorIndex: exact inner-product search, add and delete by image id, atomic save."""

import numpy as np
import pytest

from conftest import random_unit_descriptors
from delf_ret.index.global_index import INDEX_FILE
from delf_ret.index.global_index import GlobalDescriptorIndex
from delf_ret.index.global_index import GlobalIndexError


@pytest.fixture()
def filled():
  rng = np.random.default_rng(0)
  descriptors = random_unit_descriptors(rng, 50, 16)
  index = GlobalDescriptorIndex(16)
  for i, row in enumerate(descriptors):
    index.add(f"img{i:02d}", row)
  return index, descriptors


def test_search_ranks_images_by_inner_product(filled):
  index, descriptors = filled
  query = descriptors[7] + 0.05 * descriptors[3]
  hits = index.search_images(query, 5)
  scores = descriptors @ query
  expected = np.argsort(-scores)[:5]
  assert [name for name, _ in hits] == [f"img{i:02d}" for i in expected]
  np.testing.assert_allclose([score for _, score in hits], scores[expected], rtol=1e-5)
  assert len(index.search_images(query, 500)) == 50
  assert index.search_images(query, 0) == []


def test_delete_removes_only_that_image_and_ids_stay_unique(filled):
  index, descriptors = filled
  index.delete("img07")
  assert "img07" not in index and len(index) == 49
  hits = index.search_images(descriptors[7], 49)
  assert "img07" not in [name for name, _ in hits]
  np.testing.assert_allclose(index.descriptor("img08"), descriptors[8])
  with pytest.raises(GlobalIndexError, match="'img07' is not in the index"):
    index.delete("img07")
  with pytest.raises(GlobalIndexError, match="already in the index"):
    index.add("img08", descriptors[8])
  index.add("img07", descriptors[7])  # Added again after deletion: found again.
  assert index.search_images(descriptors[7], 1)[0][0] == "img07"


def test_bad_descriptors_are_refused(filled):
  index, _ = filled
  with pytest.raises(GlobalIndexError, match="16-d descriptors"):
    index.add("new", np.ones(8))
  with pytest.raises(GlobalIndexError, match="NaN or infinite"):
    index.add("new", np.full(16, np.nan))
  with pytest.raises(GlobalIndexError, match="given twice"):
    index.add_many(["a", "a"], np.ones((2, 16)))
  with pytest.raises(GlobalIndexError, match="16-d descriptors"):
    index.search_images(np.ones(15), 3)
  assert "new" not in index and "a" not in index and len(index) == 50


def test_save_and_load_keep_ids_descriptors_and_ranking(filled, tmp_path):
  index, descriptors = filled
  index.delete("img03")
  index.save(tmp_path / "global")
  loaded = GlobalDescriptorIndex.load(tmp_path / "global", expected_dim=16)
  assert loaded.image_ids() == index.image_ids()
  query = descriptors[11]
  assert loaded.search_images(query, 10) == index.search_images(query, 10)
  with pytest.raises(GlobalIndexError, match="holds 16-d descriptors, expected 32-d"):
    GlobalDescriptorIndex.load(tmp_path / "global", expected_dim=32)
  # Saving again replaces the file atomically: no temporary file stays behind.
  loaded.add("img03", descriptors[3])
  loaded.save(tmp_path / "global")
  assert sorted(p.name for p in (tmp_path / "global").iterdir() if not p.name.startswith(".")) == [
    INDEX_FILE
  ]
  assert len(GlobalDescriptorIndex.load(tmp_path / "global")) == 50
  GlobalDescriptorIndex(4).save(tmp_path / "empty")
  assert len(GlobalDescriptorIndex.load(tmp_path / "empty")) == 0


def test_a_failed_save_leaves_the_previous_index(filled, tmp_path, monkeypatch):
  index, _ = filled
  index.save(tmp_path / "global")
  before = (tmp_path / "global" / INDEX_FILE).read_bytes()
  index.delete("img00")

  def broken(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np, "savez", broken)  # The disk fills up while writing.
  with pytest.raises(OSError):
    index.save(tmp_path / "global")
  assert (tmp_path / "global" / INDEX_FILE).read_bytes() == before
  assert [p.name for p in (tmp_path / "global").iterdir() if ".tmp" in p.name] == []


def test_damaged_or_missing_files_are_clear_errors(tmp_path):
  with pytest.raises(GlobalIndexError, match="no global index in"):
    GlobalDescriptorIndex.load(tmp_path)
  (tmp_path / INDEX_FILE).write_bytes(b"not a zip file")
  with pytest.raises(GlobalIndexError, match="is damaged"):
    GlobalDescriptorIndex.load(tmp_path)
  np.savez(
    tmp_path / INDEX_FILE,
    format_version=np.array(1),
    ids=np.array(["a", "a"]),
    descriptors=np.ones((2, 4), np.float32),
  )
  with pytest.raises(GlobalIndexError, match="listed twice"):
    GlobalDescriptorIndex.load(tmp_path)
  np.savez(
    tmp_path / INDEX_FILE,
    format_version=np.array(1),
    ids=np.array(["a", "b"]),
    descriptors=np.ones((3, 4), np.float32),
  )
  with pytest.raises(GlobalIndexError, match="do not agree"):
    GlobalDescriptorIndex.load(tmp_path)
  np.savez(
    tmp_path / INDEX_FILE,
    format_version=np.array(2),
    ids=np.array(["a"]),
    descriptors=np.ones((1, 4), np.float32),
  )
  with pytest.raises(GlobalIndexError, match="format version"):
    GlobalDescriptorIndex.load(tmp_path)
  np.savez(
    tmp_path / INDEX_FILE,
    format_version=np.array(1),
    ids=np.array(["a"], dtype=object),
    descriptors=np.ones((1, 4), np.float32),
  )
  with pytest.raises(GlobalIndexError, match="is damaged"):  # Pickled ids are never loaded.
    GlobalDescriptorIndex.load(tmp_path)


def test_merge_appends_the_other_index_in_its_order(filled):
  filled, _ = filled
  rng = np.random.default_rng(9)
  other = GlobalDescriptorIndex(filled.dim)
  rows = random_unit_descriptors(rng, 3, filled.dim)
  other.add_many(["m0", "m1", "m2"], rows)
  other.delete("m1")
  before = filled.image_ids()
  filled.merge_from(other)
  assert filled.image_ids() == [*before, "m0", "m2"]
  np.testing.assert_array_equal(filled.descriptor("m2"), rows[2])
  assert filled.search_images(rows[2], 1)[0][0] == "m2"
  with pytest.raises(GlobalIndexError, match="already in the index"):
    filled.merge_from(other)
  with pytest.raises(GlobalIndexError, match="into one of"):
    filled.merge_from(GlobalDescriptorIndex(filled.dim + 1))
  assert filled.image_ids() == [*before, "m0", "m2"]
