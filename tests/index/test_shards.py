"""Sharded index building: shards + merge equal one build; mismatched shards refused; merge_index."""

import gc
import json
import shutil

import faiss
import numpy as np
import pytest

from conftest import installed_script
from conftest import make_features
from conftest import random_unit_descriptors
from conftest import run_command
from conftest import tool_env
from delf_ret.features import write_features
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.index import LocalIndexError
from delf_ret.index.builder import build_index
from delf_ret.index.builder import list_feature_files
from delf_ret.index.shards import QUANTISER_DIR
from delf_ret.index.shards import ShardError
from delf_ret.index.shards import build_shard
from delf_ret.index.shards import build_sharded
from delf_ret.index.shards import merge_shards
from delf_ret.index.shards import plan_shards
from delf_ret.index.shards import shard_folders
from delf_ret.index.shards import train_quantiser

DIM = 16
QUIET = {"log": lambda line: None}
PARAMS = {
  "flat": IndexParams(),
  "ivfpq": IndexParams(index_type="ivfpq", nlist=8, pq_m=4, pq_nbits=4, nprobe=3),
  "ivfpq_fast_scan": IndexParams(
    index_type="ivfpq", nlist=8, pq_m=DIM, pq_nbits=4, nprobe=3, pq_fast_scan=True
  ),
  "hnsw": IndexParams(index_type="hnsw", hnsw_m=8),
}


@pytest.fixture(autouse=True)
def one_faiss_thread():
  """Tiny indexes: one faiss thread (no OpenMP spin-waiting on a busy machine; HNSW graphs
  built in one order)."""
  threads = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)
  yield
  faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
  """11 feature files of 40-60 random descriptors, and one broken file among them."""
  folder = tmp_path_factory.mktemp("features")
  rng = np.random.default_rng(0)
  for number in range(11):
    n = 40 + 2 * number
    descriptors = random_unit_descriptors(rng, n, DIM)
    write_features(folder / f"img{number:02d}.delf", make_features(np.zeros((n, 2)), descriptors))
  (folder / "img05b.delf").write_bytes(b"\xff not a feature file")
  return folder


def ranked(index: LocalFeatureIndex, queries: np.ndarray):
  """(image id of each hit, distances) of the 8 nearest descriptors of each query."""
  hits = index.search_images(queries, 8)
  names = np.array([*hits.image_ids, ""])[hits.images]  # -1 (no hit) -> "".
  return names, hits.distances


@pytest.mark.parametrize("kind", list(PARAMS))
def test_shards_merged_equal_a_single_build(tmp_path, features, kind):
  params, paths = PARAMS[kind], list_feature_files(features)
  single, failures = build_index(paths, tmp_path / "single", params, **QUIET)
  queries = random_unit_descriptors(np.random.default_rng(7), 30, DIM)
  expected_names, expected_distances = ranked(single, queries)
  labels = {"img00": "tower", "img09": "bridge"}
  images = {f"img{n:02d}": tmp_path / f"photos/img{n:02d}.jpg" for n in range(11)}
  slots = None
  for shards in (1, 4):
    merged, merge_failures = build_sharded(
      paths, tmp_path / f"merged{shards}", tmp_path / f"shards{shards}", params, shards, DIM,
      images, labels, **QUIET,
    )  # fmt: skip
    assert [path for path, _ in merge_failures] == [str(path) for path, _ in failures]
    loaded = LocalFeatureIndex.load(tmp_path / f"merged{shards}")
    assert (
      loaded.image_ids() == single.image_ids() and loaded.num_descriptors == single.num_descriptors
    )
    names, distances = ranked(loaded, queries)
    np.testing.assert_array_equal(names, expected_names)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-6)
    # Slots are places in the sorted file list, whatever the number of shards.
    assert slots in (None, {name: loaded.slot_of(name) for name in loaded.image_ids()})
    slots = {name: loaded.slot_of(name) for name in loaded.image_ids()}
    assert (loaded.image_label("img09"), loaded.image_label("img01")) == ("bridge", None)
    assert loaded.image_path("img03") == str(tmp_path / "photos/img03.jpg")
  assert slots["img05"] == 5 and slots["img06"] == 7  # img05b (broken) keeps slot 6 unused.


@pytest.fixture
def two_shards(tmp_path, features):
  """The two shards of a flat index of the feature folder, built one by one."""
  paths = list_feature_files(features)
  train_quantiser(paths, tmp_path / QUANTISER_DIR, PARAMS["flat"], DIM, **QUIET)
  plans = plan_shards(paths, 2)
  return [build_shard(plan, tmp_path / QUANTISER_DIR, tmp_path, **QUIET).folder for plan in plans]


def test_shards_of_other_settings_overlapping_or_missing_are_refused(
  tmp_path, features, two_shards
):
  paths = list_feature_files(features)
  # A shard of another plan: 3 shards instead of 2.
  other = build_shard(plan_shards(paths, 3)[1], tmp_path / QUANTISER_DIR, tmp_path / "o", **QUIET)
  with pytest.raises(ShardError, match="made with other numbers of shards: 2 vs 3"):
    merge_shards([two_shards[0], other.folder], tmp_path / "index")
  # A shard of another index type (its own quantiser).
  train_quantiser(paths, tmp_path / "q2", PARAMS["ivfpq"], DIM, **QUIET)
  ivf = build_shard(plan_shards(paths, 2)[1], tmp_path / "q2", tmp_path / "ivf", **QUIET)
  with pytest.raises(ShardError, match="made with other index settings"):
    merge_shards([two_shards[0], ivf.folder], tmp_path / "index")
  # The same shard twice (overlapping slots), and a missing shard.
  shutil.copytree(two_shards[0], tmp_path / "copy")
  with pytest.raises(ShardError, match="overlap: slots 0..5 and 0..5"):
    merge_shards([*two_shards, tmp_path / "copy"], tmp_path / "index")
  with pytest.raises(ShardError, match="no shard holds slots 0..5: a shard is missing"):
    merge_shards([two_shards[1]], tmp_path / "index")
  # An unfinished shard, and a damaged shard.json.
  (tmp_path / "copy" / "shard.json").unlink()
  with pytest.raises(ShardError, match="copy is not a finished index shard"):
    merge_shards([tmp_path / "copy", two_shards[1]], tmp_path / "index")
  (tmp_path / "copy" / "shard.json").write_text('{"format": 1, "number": -1}')
  with pytest.raises(ShardError, match="shard.json is damaged"):
    merge_shards([tmp_path / "copy", two_shards[1]], tmp_path / "index")
  assert not (tmp_path / "index").exists()  # Nothing written by a refused merge.


def test_a_finished_shard_is_kept_and_a_tampered_one_refused(tmp_path, features, two_shards):
  lines = []
  plan = plan_shards(list_feature_files(features), 2)[0]
  build_shard(plan, tmp_path / QUANTISER_DIR, tmp_path, log=lines.append)
  assert lines == [f"{plan.name}: already built (6 images)"]
  info = json.loads((two_shards[0] / "shard.json").read_text())
  (two_shards[0] / "shard.json").write_text(json.dumps({**info, "images": 5}))
  with pytest.raises(ShardError, match="does not match shard.json"):
    merge_shards(two_shards, tmp_path / "index")


def test_on_disk_merge_searches_like_in_memory_and_is_read_only(tmp_path, features):
  paths = list_feature_files(features)
  labels = {"img02": "tower"}
  build_sharded(
    paths, tmp_path / "memory", tmp_path / "shards", PARAMS["ivfpq"], 3, DIM, labels=labels, **QUIET
  )
  merge_shards(shard_folders(tmp_path / "shards"), tmp_path / "disk", on_disk=True, **QUIET)
  shutil.rmtree(tmp_path / "shards")  # The merged data no longer needs the shards,
  (tmp_path / "disk").rename(tmp_path / "moved")  # and the folder may move.
  (data,) = (tmp_path / "moved").glob("v-*/index.ivfdata")
  on_disk = LocalFeatureIndex.load(tmp_path / "moved")
  queries = random_unit_descriptors(np.random.default_rng(5), 20, DIM)
  names, distances = ranked(on_disk, queries)
  expected_names, expected_distances = ranked(LocalFeatureIndex.load(tmp_path / "memory"), queries)
  np.testing.assert_array_equal(names, expected_names)
  np.testing.assert_allclose(distances, expected_distances, rtol=1e-6)
  assert on_disk.image_label("img02") == "tower"
  with pytest.raises(LocalIndexError, match="on disk and is read-only"):
    on_disk.add("new", queries)
  with pytest.raises(LocalIndexError, match="on disk and is read-only"):
    on_disk.delete("img02")
  # Records and search breadth still change: the new version links the same data.
  on_disk.set_image_record("img02", label="bridge")
  on_disk.set_search_breadth(nprobe=8)
  on_disk.save(tmp_path / "moved")
  assert not data.exists()  # The old version was removed, its data file linked into the new.
  again = LocalFeatureIndex.load(tmp_path / "moved")
  assert again.image_label("img02") == "bridge" and again.params.nprobe == 8
  memory = LocalFeatureIndex.load(tmp_path / "memory")
  memory.set_search_breadth(nprobe=8)
  np.testing.assert_array_equal(ranked(again, queries)[0], ranked(memory, queries)[0])
  (new_data,) = (tmp_path / "moved").glob("v-*/index.ivfdata")
  # Both indexes map the data file (one inode, linked): unmap them before it shrinks, or a
  # touch of a page past its end raises SIGBUS in this process.
  del on_disk, again
  gc.collect()
  with open(new_data, "r+b") as handle:
    handle.truncate(100)
  with pytest.raises(LocalIndexError, match="index.ivfdata holds 100 bytes"):
    LocalFeatureIndex.load(tmp_path / "moved")


def test_on_disk_merge_needs_array_ivf_lists(tmp_path, features):
  paths = list_feature_files(features)
  fast = PARAMS["ivfpq_fast_scan"]
  build_sharded(paths, tmp_path / "memory", tmp_path / "shards", fast, 2, DIM, **QUIET)
  with pytest.raises(LocalIndexError, match="need index_type ivfpq without pq_fast_scan"):
    merge_shards(shard_folders(tmp_path / "shards"), tmp_path / "disk", on_disk=True)
  assert not (tmp_path / "disk" / "CURRENT").exists()


@pytest.mark.slow  # Runs the console script.
def test_merge_index_tool(tmp_path, features, two_shards):
  tool = installed_script("merge_index")
  index_dir = tmp_path / "index"
  result = run_command(
    [tool, f"--shards_dir={tmp_path}", f"--index_dir={index_dir}"], timeout=300, env=tool_env()
  )
  # The broken feature file is reported (exit status 1); the others are merged.
  assert result.returncode == 1, result.stderr
  assert "index at" in result.stdout and "1 feature files failed" in result.stderr
  single, _ = build_index(
    list_feature_files(features), tmp_path / "single", PARAMS["flat"], **QUIET
  )
  queries = random_unit_descriptors(np.random.default_rng(3), 10, DIM)
  np.testing.assert_array_equal(
    ranked(LocalFeatureIndex.load(index_dir), queries)[0], ranked(single, queries)[0]
  )
  again = run_command(
    [tool, f"--shard_dirs={two_shards[0]}", f"--index_dir={tmp_path / 'other'}"],
    timeout=300,
    env=tool_env(),
  )
  assert again.returncode == 2
  assert again.stderr.strip() == "error: no shard holds slots 6..11: a shard is missing"
  again = run_command(
    [tool, f"--shards_dir={tmp_path}", f"--index_dir={index_dir}"], timeout=300, env=tool_env()
  )
  assert again.returncode == 2
  assert again.stderr.strip() == (
    f"error: {index_dir} already holds an index; merge the shards into a new folder"
  )


@pytest.mark.slow  # Runs the console script.
def test_build_index_beam_refuses_the_other_first_stages(tmp_path, features):
  # Sharded building makes a votes index: an asmk or global config must not get one silently.
  tool = installed_script("build_index_beam")
  for stage in ("asmk", "global"):
    result = run_command(
      [
        tool,
        f"--features_dir={features}",
        f"--index_dir={tmp_path / stage}",
        f"--config_override=retrieval_config.first_stage={stage}",
      ],
      timeout=120,
      env=tool_env(),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
      f"error: build_index_beam builds the votes index only; first_stage {stage!r} is built by "
      "build_index"
    ]
    assert not (tmp_path / stage).exists()
