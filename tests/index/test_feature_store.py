"""The packed feature store: equal to the .delf files it was built from, crash-safe, versioned,
refusing damaged files with one line, and telling when its .delf files changed."""

import json
import os
import sys
import threading

import numpy as np
import pytest

from conftest import BUNDLED_IMAGES
from conftest import kill_after_checkpoint
from conftest import random_unit_descriptors
from conftest import tool_env
from delf_ret.config import DelfRetrievalConfig
from delf_ret.features import FeatureFileError
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_loader
from delf_ret.features import read_features
from delf_ret.features import write_features
from delf_ret.index import IndexBusyError
from delf_ret.index.feature_store import FEATURE_FILES
from delf_ret.index.feature_store import FeatureStore
from delf_ret.index.feature_store import FeatureStoreError
from delf_ret.index.feature_store import build_feature_store
from delf_ret.index.feature_store import sync_feature_store
from delf_ret.index.feature_store import update_feature_store
from delf_ret.index.local_index import remove_leftover_versions
from delf_ret.index.lock import writer_lock
from delf_ret.match import RansacParams
from delf_ret.match import verify_candidates

FIELDS = tuple(FEATURE_FILES.values())


def assert_same(first: LocalFeatures, second: LocalFeatures) -> None:
  """Every array of both: same dtype, shape and bytes."""
  for name in FIELDS:
    a, b = getattr(first, name), getattr(second, name)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, name
    assert a.tobytes() == b.tobytes(), name


def synthetic(seed: int, n: int, dim: int = 40) -> LocalFeatures:
  rng = np.random.default_rng(seed)
  return LocalFeatures(
    rng.uniform(0, 800, (n, 2)),
    rng.uniform(0.25, 2, n),
    random_unit_descriptors(rng, n, dim),
    rng.uniform(0, 5, n),
    np.zeros(n),
  )


COUNTS = {"a": 30, "b": 0, "c": 7, "d": 120, "e": 1}  # "b": an image without features.


@pytest.fixture
def features_dir(tmp_path):
  folder = tmp_path / "features"
  folder.mkdir()
  for seed, (name, n) in enumerate(COUNTS.items()):
    write_features(folder / f"{name}.delf", synthetic(seed, n))
  return folder


def version_dirs(folder):
  return sorted(path.name for path in folder.glob("v-*"))


def current_version(folder):
  return folder / (folder / "CURRENT").read_text().strip()


# Equal to the .delf files -----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_features_dir(tmp_path_factory):
  """.delf files of 4 bundled demo photos from the shipped default model at 256 px."""
  from delf_ret import config as config_lib
  from delf_ret.default_model import default_config_path
  from delf_ret.extract.extractor import DelfExtractor

  folder = tmp_path_factory.mktemp("real") / "features"
  folder.mkdir()
  extractor = DelfExtractor(config_lib.load_config(default_config_path(), ["max_image_size=256"]))
  for path in sorted(BUNDLED_IMAGES.glob("*.jpg"))[:4]:
    write_features(folder / f"{path.stem}.delf", extractor.extract_file(path))
  return folder


@pytest.mark.slow  # Extracts 4 photos with the shipped model (TensorFlow's import included).
def test_the_store_equals_the_delf_files_it_was_built_from(real_features_dir, tmp_path):
  store = build_feature_store(tmp_path / "store", real_features_dir)
  names = sorted(path.stem for path in real_features_dir.glob("*.delf"))
  assert store.image_ids() == names and len(store) == 4 and store.dim == 40
  from_files = feature_loader(real_features_dir)
  load = store.loader()
  total = 0
  for name in names:
    expected = from_files(name)
    assert expected.num_features > 0
    assert_same(store.features(name), expected)
    assert_same(load(name), expected)
    total += expected.num_features
  assert store.num_features == total
  # The files are plain .npy: numpy maps them, and they hold the images end to end.
  version = current_version(tmp_path / "store")
  descriptors = np.load(version / "descriptors.npy", mmap_mode="r")
  expected_rows = np.concatenate([from_files(name).descriptors for name in names])
  assert isinstance(descriptors, np.memmap) and np.array_equal(descriptors, expected_rows)
  store.verify()
  store.check_fresh()
  # A copy is the caller's: changing it changes neither the store nor the next read.
  copy = store.features(names[0])
  copy.descriptors[:] = 0
  assert_same(store.features(names[0]), from_files(names[0]))
  # The loader's read-only views serve reranking as the .delf files do.
  assert not load(names[0]).descriptors.flags.writeable
  params = RansacParams.from_config(DelfRetrievalConfig())
  query = from_files(names[0])
  inliers = [
    [v.num_inliers for v in verify_candidates(query, map(loader, names), params)]
    for loader in (from_files, load)
  ]
  assert inliers[0] == inliers[1] and inliers[0][0] == query.num_features


def test_pairs_build_update_and_remove(tmp_path):
  folder = tmp_path / "store"
  given = {name: synthetic(seed, n) for seed, (name, n) in enumerate(COUNTS.items())}
  store = build_feature_store(folder, given.items())
  assert store.image_ids() == list(given) and store.features_dir is None
  for name, features in given.items():
    assert_same(store.features(name), features)
  first_version = version_dirs(folder)
  replaced, added = synthetic(10, 5), synthetic(11, 9)
  store = update_feature_store(folder, add=[("c", replaced), ("z", added)], remove=["a", "b"])
  assert store.image_ids() == ["c", "d", "e", "z"]  # Replaced in place, added at the end.
  assert_same(store.features("c"), replaced)
  assert_same(store.features("z"), added)
  assert_same(store.features("d"), given["d"])
  assert "a" not in store and "d" in store
  assert len(version_dirs(folder)) == 1 and version_dirs(folder) != first_version
  with pytest.raises(FeatureStoreError, match="'a' is not in the feature store"):
    update_feature_store(folder, remove=["a"])
  with pytest.raises(FeatureStoreError, match="'a' is not in the feature store"):
    store.features("a")


@pytest.mark.parametrize(
  "pairs, message",
  [
    ([("x", synthetic(0, 3)), ("x", synthetic(1, 3))], "'x' given twice"),
    ([("x", synthetic(0, 3)), ("y", synthetic(1, 3, dim=8))], "8-d descriptors, the store 40-d"),
    (
      [("x", LocalFeatures([[1, np.nan]], [1], np.ones((1, 4)), [1], [0]))],
      "'x': its locations hold NaN",
    ),
  ],
)
def test_a_refused_build_leaves_the_previous_store(tmp_path, features_dir, pairs, message):
  folder = tmp_path / "store"
  build_feature_store(folder, features_dir)
  before = version_dirs(folder)
  with pytest.raises(FeatureStoreError, match=message):
    build_feature_store(folder, pairs)
  assert version_dirs(folder) == before
  assert FeatureStore.open(folder).image_ids() == list(COUNTS)


def test_loader_falls_back_to_delf_files_for_images_the_store_lacks(tmp_path, features_dir):
  store = build_feature_store(tmp_path / "store", features_dir, ["a", "d"])
  assert store.image_ids() == ["a", "d"]
  load = store.loader(fallback_dir=features_dir)
  assert_same(load("c"), read_features(features_dir / "c.delf"))
  assert_same(load("d"), read_features(features_dir / "d.delf"))
  with pytest.raises(FeatureFileError, match="nothing.delf: feature file not found"):
    load("nothing")
  with pytest.raises(FeatureStoreError, match="'c' is not in the feature store"):
    store.loader()("c")


def test_a_second_writer_is_refused(tmp_path, features_dir):
  folder = tmp_path / "store"
  build_feature_store(folder, features_dir)
  locked, release = threading.Event(), threading.Event()

  def hold() -> None:
    with writer_lock(folder):
      locked.set()
      release.wait(30)

  holder = threading.Thread(target=hold)
  holder.start()
  try:
    locked.wait(30)
    with pytest.raises(IndexBusyError, match="being written by another"):
      sync_feature_store(folder, features_dir, ["a"])
  finally:
    release.set()
    holder.join()
  assert FeatureStore.open(folder).image_ids() == list(COUNTS)


# Stale sources ----------------------------------------------------------------------------


def test_changed_removed_and_new_delf_files_are_found_and_synced(tmp_path, features_dir):
  folder = tmp_path / "store"
  store = build_feature_store(folder, features_dir)
  assert not store.stale_images()
  write_features(features_dir / "c.delf", synthetic(20, 11))
  stamp = (features_dir / "c.delf").stat().st_mtime_ns + 10**9
  os.utime(features_dir / "c.delf", ns=(stamp, stamp))  # Coarse clocks: surely a new time.
  (features_dir / "e.delf").unlink()
  write_features(features_dir / "f.delf", synthetic(21, 4))
  wanted = sorted(path.stem for path in features_dir.glob("*.delf"))
  stale = store.stale_images(features_dir, wanted)
  assert (stale.added, stale.removed, stale.changed) == (["f"], ["e"], ["c"])
  assert store.stale_images().changed == ["c", "e"]  # Of the stored images, by their files.
  with pytest.raises(FeatureStoreError) as error:
    store.check_fresh()
  assert "\n" not in str(error.value)
  assert "is stale against" in str(error.value) and "2 changed (e.g. 'c')" in str(error.value)
  synced = sync_feature_store(folder, features_dir)
  assert synced.image_ids() == wanted and not synced.stale_images()
  for name in wanted:
    assert_same(synced.features(name), read_features(features_dir / f"{name}.delf"))
  version = version_dirs(folder)
  assert sync_feature_store(folder, features_dir).image_ids() == wanted
  assert version_dirs(folder) == version  # Nothing changed: nothing written.


# Crash safety -----------------------------------------------------------------------------

KILLED_BUILD = """
import pathlib, sys, time
from delf_ret.index import feature_store
folder, features_dir, checkpoint = (pathlib.Path(arg) for arg in sys.argv[1:])
real_finish = feature_store._NpyWriter.finish
def finish_then_hang(self, row_shape):
  digest = real_finish(self, row_shape)
  checkpoint.touch()  # One array file of the new version written.
  time.sleep(600)
  return digest
feature_store._NpyWriter.finish = finish_then_hang
feature_store.build_feature_store(folder, features_dir, ["a", "d"])
"""


@pytest.mark.slow  # Runs a subprocess.
def test_a_killed_build_leaves_the_previous_store_loadable(tmp_path, features_dir):
  folder = tmp_path / "store"
  build_feature_store(folder, features_dir)
  command = [sys.executable, "-c", KILLED_BUILD, str(folder), str(features_dir)]
  checkpoint = tmp_path / "checkpoint"
  kill_after_checkpoint([*command, str(checkpoint)], checkpoint, env=tool_env(), timeout=120)
  killed = [name for name in version_dirs(folder) if current_version(folder).name != name]
  assert len(killed) == 1 and (folder / killed[0] / "locations.npy").is_file()
  store = FeatureStore.open(folder)  # CURRENT still names the previous version.
  assert store.image_ids() == list(COUNTS)
  for name in COUNTS:
    assert_same(store.features(name), read_features(features_dir / f"{name}.delf"))
  build_feature_store(folder, features_dir, ["a", "d"])  # The next build removes the leftover.
  assert len(version_dirs(folder)) == 1 and killed[0] not in version_dirs(folder)
  assert FeatureStore.open(folder).image_ids() == ["a", "d"]
  assert remove_leftover_versions(folder) == 0
  assert not list(folder.glob(".*.tmp"))


# Damaged and hostile files ----------------------------------------------------------------


def npy_header(path) -> dict:
  """The header dict of a .npy file the store wrote (format 1.0)."""
  data = path.read_bytes()
  length = int.from_bytes(data[8:10], "little")
  return eval(data[10 : 10 + length].decode("latin1"))  # Our own file: a literal dict.


def rewrite_header(path, **changes) -> None:
  """Replaces fields of a .npy file's header, keeping its length (and the data)."""
  data = path.read_bytes()
  length = int.from_bytes(data[8:10], "little")
  text = repr({**npy_header(path), **changes}).encode("latin1").ljust(length - 1) + b"\n"
  path.write_bytes(data[:10] + text + data[10 + length :])


def edit_meta(version, **changes) -> None:
  meta = json.loads((version / "meta.json").read_text())
  (version / "meta.json").write_text(json.dumps({**meta, **changes}))


def truncate(path, count: int) -> None:
  path.write_bytes(path.read_bytes()[:-count])


def swap_offsets(version) -> None:
  path = version / "offsets.npy"
  data = bytearray(path.read_bytes())
  data[-16:-8], data[-24:-16] = data[-24:-16], data[-16:-8]  # Offsets of "c" and "d" swapped.
  path.write_bytes(bytes(data))


def claim_huge(version) -> None:
  """meta.json and every header claim 10^12 features: refused before anything is mapped."""
  edit_meta(version, num_features=10**12)
  for name in FEATURE_FILES:
    shape = npy_header(version / name)["shape"]
    rewrite_header(version / name, shape=(10**12, *shape[1:]))


DAMAGES = [
  (lambda v: truncate(v / "descriptors.npy", 4), "descriptors.npy is corrupt: .* bytes, its"),
  (lambda v: (v / "scales.npy").unlink(), "scales.npy unreadable"),
  (lambda v: (v / "attention.npy").write_bytes(b"PK\x03\x04junk"), "attention.npy is corrupt: not"),
  (lambda v: rewrite_header(v / "descriptors.npy", shape=(10**12, 40)), "descriptors.npy is corr"),
  (lambda v: rewrite_header(v / "scales.npy", descr="<f8"), "scales.npy is corrupt: it holds f"),
  (lambda v: rewrite_header(v / "locations.npy", fortran_order=True), "locations.npy is corrupt"),
  (claim_huge, "locations.npy is corrupt: .* bytes, its header implies 8000000000"),
  (swap_offsets, "offsets.npy is corrupt: the offsets do not cover"),
  (lambda v: (v / "meta.json").write_text("{"), "meta.json unreadable"),
  (lambda v: edit_meta(v, images=["a", "a", "c", "d", "e"]), "meta.json is damaged: an image id"),
  (lambda v: edit_meta(v, dim=-3), "meta.json is damaged: dimension -3"),
  (lambda v: edit_meta(v, sources=[None]), "meta.json is damaged: not one source entry per"),
  (lambda v: edit_meta(v, kind="something else"), "holds no feature store"),
  (lambda v: edit_meta(v, dim=41), "descriptors.npy is corrupt: it holds float32 \\[158, 40\\]"),
  (lambda v: (v.parent / "CURRENT").write_text("../elsewhere"), "not a version folder"),
  (lambda v: (v.parent / "CURRENT").unlink(), "no feature store in"),
]


@pytest.mark.parametrize("damage, message", DAMAGES)
def test_damaged_files_are_refused_with_one_line_naming_them(
  tmp_path, features_dir, damage, message
):
  folder = tmp_path / "store"
  build_feature_store(folder, features_dir)
  damage(current_version(folder))
  with pytest.raises(FeatureStoreError, match=message) as error:
    FeatureStore.open(folder)
  assert "\n" not in str(error.value)


def test_sync_rebuilds_a_damaged_store_from_the_delf_files(tmp_path, features_dir):
  folder = tmp_path / "store"
  build_feature_store(folder, features_dir)
  truncate(current_version(folder) / "descriptors.npy", 4)
  store = sync_feature_store(folder, features_dir)
  assert store.image_ids() == list(COUNTS) and len(version_dirs(folder)) == 1
  for name in COUNTS:
    assert_same(store.features(name), read_features(features_dir / f"{name}.delf"))


def test_changed_values_are_found_by_reads_and_by_verify(tmp_path, features_dir):
  folder = tmp_path / "store"
  build_feature_store(folder, features_dir)
  path = current_version(folder) / "descriptors.npy"
  data = bytearray(path.read_bytes())
  data[-4:] = np.float32(np.nan).tobytes()  # The last descriptor value, of image "e".
  path.write_bytes(bytes(data))
  store = FeatureStore.open(folder)  # Opening checks the structure only.
  assert_same(store.features("a"), read_features(features_dir / "a.delf"))
  with pytest.raises(FeatureStoreError, match="descriptors.npy is corrupt: image 'e' holds NaN"):
    store.features("e")
  with pytest.raises(FeatureStoreError, match="descriptors.npy is corrupt: its data changed"):
    store.verify()
