"""AsmkIndex (ASMK / ASMK*): hand-computed kernels, add/delete, crash-safe versioned files."""

import dataclasses
import json
import sys

import numpy as np
import pytest

from conftest import BUNDLED_IMAGES
from conftest import kill_after_checkpoint
from conftest import random_unit_descriptors
from conftest import tool_env
from delf_ret.index import LocalFeatureIndex
from delf_ret.index import LocalIndexError
from delf_ret.index import asmk
from delf_ret.index.asmk import AsmkIndex
from delf_ret.index.asmk import AsmkParams
from delf_ret.index.asmk import top_order
from delf_ret.index.local_index import remove_leftover_versions

# Two words of 2-d descriptors, one assignment each side (the hand-computed cases).
PLANE = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
ONE = dict(codebook_size=2, query_assignments=1, database_assignments=1)
DIM = 40
SETTINGS = {"config": "max_image_size: 320\n", "files": {"model": "ab12"}}


def plane_index(binary=False, **changes) -> AsmkIndex:
  """Words w0 = (1, 0), w1 = (0, 1). Image A: a1 = (1, 0.5) and a2 = (1.5, 0) go to w0
  (residuals (0, 0.5), (0.5, 0): sum (0.5, 0.5), normalised (1/sqrt2, 1/sqrt2)); a3 = (0, 2) to
  w1 (residual (0, 1)). Image B: b1 = (0.4, 1.3) to w1 (residual (0.4, 0.3), normalised
  (0.8, 0.6))."""
  index = AsmkIndex(2, AsmkParams(binary=binary, **{**ONE, **changes}))
  index.set_codebook(PLANE)
  index.add("A", np.array([[1.0, 0.5], [1.5, 0.0], [0.0, 2.0]], np.float32))
  index.add("B", np.array([[0.4, 1.3]], np.float32))
  return index


# Query Q: q1 = (1.5, 0) to w0 (residual (0.5, 0) -> (1, 0)); q2 = (0.2, 1) to w1 (residual
# (0.2, 0) -> (1, 0)). |Q| = 2 words, |A| = 2, |B| = 1.
QUERY = np.array([[1.5, 0.0], [0.2, 1.0]], np.float32)


def test_real_kernel_by_hand():
  index = plane_index()
  words, vectors = index.aggregate(np.array([[1.0, 0.5], [1.5, 0.0], [0.0, 2.0]]), query=False)
  np.testing.assert_array_equal(words, [0, 1])
  np.testing.assert_allclose(vectors, [[0.5**0.5, 0.5**0.5], [0.0, 1.0]], atol=1e-7)
  # A: w0 u = 1/sqrt2, u^3 = 0.353553; w1 u = (1, 0).(0, 1) = 0 -> 0. Over sqrt(2 * 2).
  # B: w1 u = (1, 0).(0.8, 0.6) = 0.8, u^3 = 0.512. Over sqrt(2 * 1).
  expected = {"A": 0.5**1.5 / 2.0, "B": 0.512 / 2**0.5}
  assert dict(index.search_images(QUERY)) == pytest.approx(expected, abs=1e-6)
  assert [name for name, _ in index.search_images(QUERY, k=1)] == ["B"]
  # tau 0.75: A's 0.707 falls below it, B's 0.8 does not.
  tight = plane_index(similarity_threshold=0.75)
  assert dict(tight.search_images(QUERY)) == pytest.approx({"A": 0.0, "B": 0.512 / 2**0.5})
  # alpha 1: A (0.7071 + 0) / 2, B 0.8 / sqrt2.
  linear = plane_index(alpha=1.0)
  assert dict(linear.search_images(QUERY)) == pytest.approx({"A": 0.5**0.5 / 2, "B": 0.8 / 2**0.5})


def test_selective_kernel_keeps_the_sign_above_the_threshold():
  u = np.array([-0.5, 0.0, 0.5, 1.0])
  np.testing.assert_allclose(asmk.selective_kernel(u, 3.0, 0.0), [0.0, 0.0, 0.125, 1.0])
  np.testing.assert_allclose(asmk.selective_kernel(u, 3.0, -1.0), [-0.125, 0.0, 0.125, 1.0])
  np.testing.assert_allclose(asmk.selective_kernel(u, 2.0, 0.5), [0.0, 0.0, 0.25, 1.0])


def four_d_case(binary):
  """Words w0 = 0, w1 = (10, 10, 10, 10) in 4-d; A: (1, -1, 2, -3) and (1, 2, -1, 1) to w0
  (sum (2, 1, 1, -2): bits 1110), (11, 9, 10, 10) to w1 (residual (1, -1, 0, 0): bits 1000, a
  zero component gives 0). Q: (1, 1, 1, 1) to w0 (bits 1111), (10, 10, 10, 11) to w1 (residual
  (0, 0, 0, 1): bits 0001)."""
  index = AsmkIndex(4, AsmkParams(binary=binary, **ONE))
  index.set_codebook(np.array([[0, 0, 0, 0], [10, 10, 10, 10]], np.float32))
  index.add("A", np.array([[1, -1, 2, -3], [1, 2, -1, 1], [11, 9, 10, 10]], np.float32))
  return index, np.array([[1, 1, 1, 1], [10, 10, 10, 11]], np.float32)


def test_binary_kernel_by_hand():
  index, query = four_d_case(binary=True)
  words, vectors = index.aggregate(query, query=True)
  np.testing.assert_array_equal(vectors, [[0b11110000], [0b00010000]])
  _, database = index.aggregate(np.array([[1, -1, 2, -3], [1, 2, -1, 1], [11, 9, 10, 10]]), False)
  np.testing.assert_array_equal(database, [[0b11100000], [0b10000000]])
  # w0: h(1111, 1110) = 1, u = 1 - 2/4 = 0.5, 0.125; w1: h(0001, 1000) = 2, u = 0 -> 0.
  # Over sqrt(2 * 2): 0.0625.
  assert index.search_images(query) == [("A", pytest.approx(0.0625))]
  # ASMK on the same: w0 u = (2, 1, 1, -2)/sqrt10 . (1, 1, 1, 1)/2 = 1/sqrt10, cubed; w1 0.
  real, _ = four_d_case(binary=False)
  assert real.search_images(query) == [("A", pytest.approx(10**-1.5 / 2))]


def test_multiple_assignment_sums_each_descriptor_into_each_of_its_words():
  # Both descriptors go to both words: w0 = (0, 0) gets (1, 0) + (0, 1) = (1, 1); w1 = (1, 1)
  # gets (0, -1) + (-1, 0) = (-1, -1).
  codebook = np.array([[0, 0], [1, 1]], np.float32)
  descriptors = np.array([[1, 0], [0, 1]], np.float32)
  words, real = asmk.aggregate(descriptors, np.array([[0, 1], [1, 0]]), codebook, binary=False)
  np.testing.assert_array_equal(words, [0, 1])
  np.testing.assert_allclose(real, [[0.5**0.5, 0.5**0.5], [-(0.5**0.5), -(0.5**0.5)]], atol=1e-7)
  _, bits = asmk.aggregate(descriptors, np.array([[0, 1], [1, 0]]), codebook, binary=True)
  np.testing.assert_array_equal(bits, [[0b11000000], [0]])
  index = AsmkIndex(2, AsmkParams(codebook_size=2, query_assignments=2))
  index.set_codebook(codebook)
  assert len(index.aggregate(descriptors, query=True)[0]) == 2
  assert len(index.aggregate(descriptors, query=False)[0]) == 1  # (1, 0), (0, 1): both w0.


def test_binarisation_and_hamming_similarity_of_odd_dimensions():
  rng = np.random.default_rng(0)
  for dim in (4, 12, 40, 128):
    first, second = rng.normal(size=(2, 30, dim))
    first[0, 0] = 0.0  # Zero is not > 0: bit 0.
    packed = [np.packbits(x > 0, axis=1) for x in (first, second)]
    assert packed[0].shape == (30, -(-dim // 8)) and not packed[0][0, 0] & 0x80
    hamming = ((first > 0) != (second > 0)).sum(axis=1)
    np.testing.assert_allclose(
      asmk.binary_similarity(packed[0], packed[1], dim), 1 - 2 * hamming / dim
    )


def test_an_image_is_most_similar_to_itself_with_score_one():
  rng = np.random.default_rng(1)
  images = [random_unit_descriptors(rng, 60, DIM) for _ in range(4)]
  for binary in (True, False):
    index = AsmkIndex(DIM, AsmkParams(codebook_size=16, binary=binary, query_assignments=1))
    index.set_codebook(random_unit_descriptors(rng, 16, DIM))
    for number, descriptors in enumerate(images):
      index.add(f"img{number}", descriptors)
    ranked = index.search_images(images[2])
    assert ranked[0] == ("img2", pytest.approx(1.0, abs=1e-6))
    assert all(score < 0.9 for _, score in ranked[1:])
    assert index.num_words("img2") == len(index.aggregate(images[2], query=False)[0])


def test_top_k_is_the_head_of_the_full_ranking_ties_in_order_of_adding():
  rng = np.random.default_rng(4)
  scores = rng.integers(0, 5, 40).astype(np.float64)  # Many ties.
  full = np.argsort(-scores, kind="stable")
  for k in (None, 0, 1, 7, 13, 39, 40, 60):
    expected = full if k is None else full[: max(k, 0)]
    np.testing.assert_array_equal(top_order(scores, k), expected)
  index = AsmkIndex(DIM, AsmkParams(codebook_size=16))
  index.set_codebook(random_unit_descriptors(rng, 16, DIM))
  for number in range(12):
    index.add(f"img{number}", random_unit_descriptors(rng, 30, DIM))
  query = random_unit_descriptors(rng, 30, DIM)
  assert index.search_images(query, 5) == index.search_images(query)[:5]


def test_codebook_size_rule():
  # min(16 sqrt(N), N / 39), largest power of two below it, within [256, 65536].
  assert [asmk.codebook_size_for(n) for n in (1, 10_000, 100_000, 1_000_000)] == [
    256,
    256,  # min(1600, 256.4) -> 256
    2048,  # min(5060, 2564) -> 2048
    8192,  # min(16000, 25641) -> 8192
  ]
  assert asmk.codebook_size_for(4_000_000) == 16384  # 32000
  assert asmk.codebook_size_for(17_000_000) == 65536  # 65970
  assert asmk.codebook_size_for(10**9) == 65536
  with pytest.raises(LocalIndexError, match="no database descriptors"):
    asmk.codebook_size_for(0)


def test_training_is_seeded_and_sized_by_the_rule():
  rng = np.random.default_rng(2)
  sample = random_unit_descriptors(rng, 600, 8)
  index = AsmkIndex(8, AsmkParams(kmeans_iterations=4))
  assert index.needs_training
  index.train(sample, num_database_descriptors=5000)
  again = AsmkIndex(8, AsmkParams(kmeans_iterations=4))
  again.train(sample, num_database_descriptors=5000)
  assert index.params.codebook_size == 256 and not index.needs_training
  np.testing.assert_array_equal(index.codebook(), again.codebook())
  other_seed = AsmkIndex(8, AsmkParams(kmeans_iterations=4, seed=1))
  other_seed.train(sample, num_database_descriptors=5000)
  assert not np.array_equal(index.codebook(), other_seed.codebook())
  with pytest.raises(LocalIndexError, match="needs at least 256 training descriptors"):
    AsmkIndex(8).train(sample[:100])


def random_database(rng, count=8, binary=True):
  codebook = random_unit_descriptors(rng, 32, DIM)
  images = {
    f"img{n}": random_unit_descriptors(rng, int(rng.integers(20, 80)), DIM) for n in range(count)
  }
  return codebook, images, AsmkParams(codebook_size=32, binary=binary)


def build(codebook, images, params, names=None) -> AsmkIndex:
  index = AsmkIndex(DIM, params, SETTINGS)
  index.set_codebook(codebook)
  for name in images if names is None else names:
    index.add(name, images[name])
  return index


def scores(index, queries) -> list[dict[str, float]]:
  return [dict(index.search_images(query)) for query in queries]


@pytest.mark.parametrize("binary", [True, False])
def test_add_and_delete_without_retraining_equal_a_fresh_build(tmp_path, binary):
  rng = np.random.default_rng(3)
  codebook, images, params = random_database(rng, binary=binary)
  queries = [images["img1"][:30], random_unit_descriptors(rng, 50, DIM)]
  index = build(codebook, images, params, ["img0", "img1", "img2", "img3"])
  index.search_images(queries[0])  # Files the first images into the inverted lists.
  for name in ("img4", "img5", "img6", "img7"):
    index.add(name, images[name])
  index.delete("img2")  # Filed already.
  index.delete("img6")  # Still pending.
  kept = ["img0", "img1", "img3", "img4", "img5", "img7"]
  fresh = build(codebook, images, params, kept)
  expected = scores(fresh, queries)
  assert index.image_ids() == kept and "img2" not in index and len(index) == 6
  for got, want in zip(scores(index, queries), expected):
    assert got == pytest.approx(want, abs=1e-12)
  index.save(tmp_path / "asmk")
  loaded = AsmkIndex.load(tmp_path / "asmk")
  for got, want in zip(scores(loaded, queries), expected):
    assert got == pytest.approx(want, abs=1e-12)
  loaded.add("img2", images["img2"])  # Again, after a load: a new slot.
  loaded.delete("img0")
  fresh = build(codebook, images, params, ["img1", "img3", "img4", "img5", "img7", "img2"])
  for got, want in zip(scores(loaded, queries), scores(fresh, queries)):
    assert got == pytest.approx(want, abs=1e-12)
  with pytest.raises(LocalIndexError, match="cannot change"):
    loaded.set_codebook(codebook)
  with pytest.raises(LocalIndexError, match="already in the index"):
    loaded.add("img1", images["img1"])
  with pytest.raises(LocalIndexError, match="not in the index"):
    loaded.delete("img0")
  with pytest.raises(LocalIndexError, match="has no descriptors"):
    loaded.add("empty", np.zeros((0, DIM), np.float32))
  nothing = loaded.search_images(np.zeros((0, DIM), np.float32), k=2)
  assert nothing == [("img1", 0.0), ("img3", 0.0)]  # No words: every score 0, in order of adding.


@pytest.mark.parametrize("binary", [True, False])
def test_merged_shards_equal_one_index_built_from_all_images(binary):
  rng = np.random.default_rng(5)
  codebook, images, params = random_database(rng, binary=binary)
  queries = [images["img2"][:30], random_unit_descriptors(rng, 50, DIM)]
  first = build(codebook, images, params, ["img0", "img1", "img2"])
  first.search_images(queries[0])  # Filed, then a pending image.
  first.add("img3", images["img3"])
  second = build(codebook, images, params, ["img4", "img5", "img6", "img7"])
  second.delete("img5")
  first.merge_from(second)
  kept = ["img0", "img1", "img2", "img3", "img4", "img6", "img7"]
  fresh = build(codebook, images, params, kept)
  assert first.image_ids() == kept and len(first) == 7
  assert [first.num_words(name) for name in kept] == [fresh.num_words(name) for name in kept]
  for got, want in zip(scores(first, queries), scores(fresh, queries)):
    assert got == pytest.approx(want, abs=1e-12)
  first.delete("img6")  # The merged images behave like added ones.
  first.add("img5", images["img5"])
  fresh = build(codebook, images, params, ["img0", "img1", "img2", "img3", "img4", "img7", "img5"])
  for got, want in zip(scores(first, queries), scores(fresh, queries)):
    assert got == pytest.approx(want, abs=1e-12)


def test_adding_aggregated_vectors_equals_adding_descriptors():
  rng = np.random.default_rng(7)
  codebook, images, params = random_database(rng)
  index = build(codebook, images, params, ["img0"])
  words, vectors = index.aggregate(images["img1"], query=False)
  index.add_aggregated("img1", words, vectors, SETTINGS)
  fresh = build(codebook, images, params, ["img0", "img1"])
  assert scores(index, [images["img1"]]) == scores(fresh, [images["img1"]])
  with pytest.raises(LocalIndexError, match="distinct codebook entries"):
    index.add_aggregated("img2", words[[0, 0]], vectors[[0, 0]])
  with pytest.raises(LocalIndexError, match=r"expected uint8 \[2, 5\]"):
    index.add_aggregated("img2", words[:2], vectors[:2].astype(np.float32))
  with pytest.raises(LocalIndexError, match="other extraction settings"):
    index.add_aggregated("img2", words, vectors, {"other": "settings"})
  assert index.image_ids() == ["img0", "img1"]


def test_merging_refuses_other_codebooks_settings_and_shared_images():
  rng = np.random.default_rng(6)
  codebook, images, params = random_database(rng)
  index = build(codebook, images, params, ["img0", "img1"])
  before = scores(index, [images["img0"]])
  with pytest.raises(LocalIndexError, match="different codebooks"):
    index.merge_from(build(codebook + 1e-3, images, params, ["img2"]))
  with pytest.raises(LocalIndexError, match="alpha"):
    index.merge_from(build(codebook, images, dataclasses.replace(params, alpha=2.0), ["img2"]))
  with pytest.raises(LocalIndexError, match="'img1' is in both"):
    index.merge_from(build(codebook, images, params, ["img2", "img1"]))
  with pytest.raises(LocalIndexError, match="into itself"):
    index.merge_from(index)
  other = AsmkIndex(DIM, params, {"other": "settings"})
  other.set_codebook(codebook)
  other.add("img3", images["img3"])
  with pytest.raises(LocalIndexError, match="other extraction settings"):
    index.merge_from(other)
  assert index.image_ids() == ["img0", "img1"] and scores(index, [images["img0"]]) == before


def test_save_load_round_trip_and_refusals(tmp_path):
  rng = np.random.default_rng(4)
  codebook, images, params = random_database(rng)
  index = build(codebook, images, params)
  index.search_images(images["img0"])  # Files every image into the inverted lists ...
  index.delete("img3")  # ... so that this one's entries are there to drop when saving.
  folder = tmp_path / "asmk"
  index.save(folder)
  loaded = AsmkIndex.load(
    folder, expected_dim=DIM, expected_params=params, expected_settings=SETTINGS
  )
  assert loaded.image_ids() == index.image_ids() and loaded.settings == SETTINGS
  assert loaded.params == params
  np.testing.assert_array_equal(loaded.codebook(), codebook)
  query = images["img5"][::2]
  assert loaded.search_images(query) == index.search_images(query)
  # Settings the codebook or the inverted file were made with: refused with the folder named.
  for changes, what in (
    (dict(binary=False), "binary True, the config asks for False"),
    (dict(codebook_size=64), "codebook_size 32"),
    (dict(alpha=2.0), "alpha 3.0"),
    (dict(similarity_threshold=0.2), "similarity_threshold 0.0"),
  ):
    with pytest.raises(LocalIndexError, match=f"{folder}.*{what}"):
      AsmkIndex.load(folder, expected_params=dataclasses.replace(params, **changes))
  # Query-side settings and a codebook size left to the rule are taken.
  wider = AsmkIndex.load(
    folder, expected_params=dataclasses.replace(params, codebook_size=0, query_assignments=2)
  )
  assert wider.params.query_assignments == 2 and wider.params.codebook_size == 32
  with pytest.raises(LocalIndexError, match="holds 40-d descriptors, expected 128-d"):
    AsmkIndex.load(folder, expected_dim=128)
  other = {"config": "max_image_size: 640\n", "files": {"model": "ab12"}}
  with pytest.raises(LocalIndexError, match="other extraction settings"):
    AsmkIndex.load(folder, expected_settings=other)
  with pytest.raises(LocalIndexError, match="other extraction settings"):
    loaded.add("new", images["img0"], settings=other)
  with pytest.raises(LocalIndexError, match=r"dimension 40"):
    loaded.add("new", np.zeros((3, 128), np.float32))


def test_damaged_or_foreign_folders_are_refused(tmp_path):
  rng = np.random.default_rng(5)
  codebook, images, params = random_database(rng, count=3)
  folder = tmp_path / "asmk"
  build(codebook, images, params).save(folder)
  version = folder / (folder / "CURRENT").read_text()
  counts = np.load(version / "word_counts.npy")
  np.save(version / "word_counts.npy", counts + 1)
  with pytest.raises(LocalIndexError, match="damaged: word counts disagree"):
    AsmkIndex.load(folder)
  np.save(version / "word_counts.npy", counts)
  np.save(version / "codebook.npy", codebook[:10])
  with pytest.raises(LocalIndexError, match=r"damaged: codebook float32 \[10, 40\]"):
    AsmkIndex.load(folder)
  np.save(version / "codebook.npy", codebook)
  meta = json.loads((version / "meta.json").read_text())
  (version / "meta.json").write_text(json.dumps(dict(meta, format_version=9)))
  with pytest.raises(LocalIndexError, match="format version 9"):
    AsmkIndex.load(folder)
  (version / "meta.json").write_text(json.dumps(meta))
  assert len(AsmkIndex.load(folder)) == 3
  votes = LocalFeatureIndex(DIM)
  votes.add("img0", images["img0"])
  votes.save(tmp_path / "votes")
  with pytest.raises(LocalIndexError, match="holds no ASMK index"):
    AsmkIndex.load(tmp_path / "votes")
  with pytest.raises(LocalIndexError, match="CURRENT file missing"):
    AsmkIndex.load(tmp_path / "nothing")


def test_a_failed_save_leaves_the_previous_version(tmp_path, monkeypatch):
  rng = np.random.default_rng(6)
  codebook, images, params = random_database(rng, count=4)
  index = build(codebook, images, params)
  index.save(tmp_path / "asmk")
  index.add("new", random_unit_descriptors(rng, 20, DIM))
  saved, real_save = [], np.save

  def failing_save(path, array, allow_pickle):
    saved.append(path)
    if len(saved) == 3:
      raise OSError("simulated crash while writing the inverted file")
    real_save(path, array, allow_pickle=allow_pickle)

  monkeypatch.setattr(asmk.np, "save", failing_save)
  with pytest.raises(OSError, match="simulated crash"):
    index.save(tmp_path / "asmk")
  monkeypatch.undo()
  loaded = AsmkIndex.load(tmp_path / "asmk")
  assert "new" not in loaded and len(loaded) == 4
  assert len(list((tmp_path / "asmk").glob("v-*"))) == 1


KILLED_SAVE = """
import pathlib, sys, time
import numpy as np
from delf_ret.index import asmk
folder = pathlib.Path(sys.argv[1])
index = asmk.AsmkIndex.load(folder)
index.add("new", np.random.default_rng(0).normal(size=(20, 40)).astype(np.float32))
real_save = np.save
def save_then_hang(path, *args, **kwargs):
  real_save(path, *args, **kwargs)
  (folder.parent / "checkpoint").touch()  # One file of the new version written.
  time.sleep(600)
asmk.np.save = save_then_hang
index.save(folder)
"""


def test_a_killed_save_leaves_the_previous_version_loadable(tmp_path):
  rng = np.random.default_rng(7)
  codebook, images, params = random_database(rng, count=4)
  folder = tmp_path / "asmk"
  build(codebook, images, params).save(folder)
  command = [sys.executable, "-c", KILLED_SAVE, str(folder)]
  kill_after_checkpoint(command, tmp_path / "checkpoint", env=tool_env(), timeout=120)
  assert len(list(folder.glob("v-*"))) == 2  # The killed save's version folder stays ...
  loaded = AsmkIndex.load(folder)  # ... and CURRENT still names the previous one.
  assert "new" not in loaded and loaded.image_ids() == list(images)
  assert remove_leftover_versions(folder) == 1
  assert AsmkIndex.load(folder).image_ids() == list(images)


@pytest.fixture(scope="module")
def demo_descriptors() -> dict[str, np.ndarray]:
  """Descriptors of the 20 bundled demo photos (7 places x 2 views, 6 distractors) from the
  shipped default model at 320 px."""
  from delf_ret import config as config_lib
  from delf_ret.default_model import default_config_path
  from delf_ret.extract.extractor import DelfExtractor

  extractor = DelfExtractor(config_lib.load_config(default_config_path(), ["max_image_size=320"]))
  return {
    path.stem: extractor.extract_file(path).descriptors
    for path in sorted(BUNDLED_IMAGES.glob("*.jpg"))
  }


@pytest.fixture(scope="module")
def demo_codebook(demo_descriptors) -> np.ndarray:
  """The codebook of the demo descriptors, sized by the rule."""
  index = AsmkIndex(40)
  index.train(np.concatenate(list(demo_descriptors.values())))
  assert index.params.codebook_size == 256  # About 12,000 descriptors: the rule's smallest.
  return index.codebook()


@pytest.mark.slow  # Extracts 20 photos with the shipped model (about 25 s, TensorFlow included).
@pytest.mark.parametrize("binary", [True, False])
def test_the_other_view_of_a_place_ranks_first(demo_descriptors, demo_codebook, binary):
  labels = dict(
    line.split(",") for line in (BUNDLED_IMAGES / "labels.csv").read_text().splitlines()[1:]
  )
  index = AsmkIndex(40, AsmkParams(binary=binary))
  index.set_codebook(demo_codebook)
  for name, image_descriptors in demo_descriptors.items():
    index.add(name, image_descriptors)
  first = 0
  queries = [name for name in demo_descriptors if labels[f"{name}.jpg"]]
  for name in queries:
    ranked = [other for other, _ in index.search_images(demo_descriptors[name]) if other != name]
    first += labels[f"{ranked[0]}.jpg"] == labels[f"{name}.jpg"]
  # 12 of the 14 views here (ASMK* and ASMK alike).
  assert len(queries) == 14 and first >= 11, f"{first} of 14"


def test_params_from_config_are_the_proto_defaults_and_read_every_field():
  from delf_ret.protos.delf_config_pb2 import DelfRetrievalConfig

  assert AsmkParams.from_config(DelfRetrievalConfig()) == AsmkParams()
  config = DelfRetrievalConfig(
    asmk_codebook_size=512,
    asmk_binary=False,
    asmk_alpha=2.0,
    asmk_similarity_threshold=0.25,
    asmk_query_assignments=3,
    asmk_database_assignments=2,
    asmk_kmeans_iterations=7,
  )
  assert AsmkParams.from_config(config, seed=4) == AsmkParams(512, False, 2.0, 0.25, 3, 2, 7, 4)
  with pytest.raises(LocalIndexError, match="alpha"):
    AsmkParams.from_config(DelfRetrievalConfig(asmk_alpha=-1.0))
