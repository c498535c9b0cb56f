"""Sharded index building: shards + merge equal one build (votes, ASMK, global first stages);
mismatched shards refused; merge_index."""

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
from delf_ret.config import DelfRetrievalConfig
from delf_ret.config import parse_config_text
from delf_ret.features import write_features
from delf_ret.features import write_global_descriptor
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.index import LocalIndexError
from delf_ret.index.asmk import AsmkParams
from delf_ret.index.builder import build_index
from delf_ret.index.builder import list_feature_files
from delf_ret.index.local_index import ImageRecord
from delf_ret.index.records import RECORDS_FILE
from delf_ret.index.records import read_records
from delf_ret.index.shards import QUANTISER_DIR
from delf_ret.index.shards import ShardError
from delf_ret.index.shards import build_shard
from delf_ret.index.shards import build_sharded
from delf_ret.index.shards import merge_shards
from delf_ret.index.shards import plan_shards
from delf_ret.index.shards import shard_folders
from delf_ret.index.shards import train_quantiser
from delf_ret.retrieval.first_stage import build_first_stage
from delf_ret.retrieval.first_stage import built_stage
from delf_ret.retrieval.first_stage import open_first_stage
from delf_ret.retrieval.first_stage import read_whitening
from delf_ret.retrieval.stage_shards import build_asmk_shard
from delf_ret.retrieval.stage_shards import build_stage_sharded
from delf_ret.retrieval.stage_shards import merge_stage_shards
from delf_ret.retrieval.stage_shards import train_asmk_quantiser

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
  # Resumed with other records (a labels file, image paths): the current run's win, as in the
  # ASMK and global shards, without rebuilding the shard; the same records again: kept as is.
  paths = list_feature_files(features)
  photo = tmp_path / "photos" / "img02.jpg"
  for labels, expected in (({"img01": "tower"}, "tower"), ({"img01": "bridge"}, "bridge")):
    plan = plan_shards(paths, 2, {"img02": photo}, labels)[0]
    build_shard(plan, tmp_path / QUANTISER_DIR, tmp_path, log=lines.append)
    assert lines[-1] == f"{plan.name}: already built (6 images), image records updated"
    shard = LocalFeatureIndex.load(two_shards[0])
    assert (shard.image_label("img01"), shard.image_path("img02")) == (expected, str(photo))
  build_shard(plan, tmp_path / QUANTISER_DIR, tmp_path, log=lines.append)
  assert lines[-1] == f"{plan.name}: already built (6 images)"
  merged, _ = merge_shards(two_shards, tmp_path / "merged", **QUIET)
  assert merged.image_label("img01") == "bridge" and merged.image_label("img00") is None
  build_shard(plan_shards(paths, 2)[0], tmp_path / QUANTISER_DIR, tmp_path, **QUIET)
  assert LocalFeatureIndex.load(two_shards[0]).image_label("img01") is None  # Records cleared.
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
def test_build_index_beam_refuses_an_unknown_first_stage_in_one_line(tmp_path, features):
  tool = installed_script("build_index_beam")
  result = run_command(
    [
      tool,
      f"--features_dir={features}",
      f"--index_dir={tmp_path / 'index'}",
      "--config_override=retrieval_config.first_stage=nearest",
    ],
    timeout=120,
    env=tool_env(),
  )
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
    "error: retrieval_config.first_stage 'nearest' is not one of 'votes', 'asmk', 'global'"
  ]
  assert not (tmp_path / "index").exists()


def stage_config(stage: str, **fields) -> DelfRetrievalConfig:
  text = " ".join(f"{name}: {value}" for name, value in fields.items())
  return parse_config_text(f'retrieval_config {{ first_stage: "{stage}" {text} }}').retrieval_config


@pytest.fixture(scope="module")
def stage_features(tmp_path_factory, features):
  """The feature folder with a 4-d global descriptor beside each feature file but img03's (10
  descriptors: enough to learn a 4-d whitening)."""
  folder = tmp_path_factory.mktemp("stage_features")
  for path in features.iterdir():
    shutil.copy(path, folder)
  rng = np.random.default_rng(11)
  for number in range(11):
    if number != 3:
      vector = rng.normal(size=4) + np.array([3.0, 0, 0, 0])
      write_global_descriptor(
        folder / f"img{number:02d}.delg_global", vector / np.linalg.norm(vector)
      )
  return folder


def stage_ranking(index_dir, retrieval_config, query_descriptors, query_global):
  stage = open_first_stage(index_dir, retrieval_config)
  query = make_features(np.zeros((len(query_descriptors), 2)), query_descriptors)
  ranked = stage.rank(query, query_global, retrieval_config)
  return [name for name, _ in ranked], np.array([score for _, score in ranked])


STAGE_CONFIGS = {"asmk": {"asmk_codebook_size": 16}, "global": {}}


@pytest.mark.parametrize("stage", list(STAGE_CONFIGS))
def test_stage_shards_merged_rank_like_a_single_build(tmp_path, stage_features, stage):
  retrieval_config = stage_config(stage, **STAGE_CONFIGS[stage])
  paths = list_feature_files(stage_features)
  # Records of images in every shard, "" (no label), and of img03 (no global descriptor) and
  # img05b (no feature file), which the index does not hold.
  images = {name: f"photos/{name}.jpg" for name in ("img00", "img03", "img05b", "img07", "img10")}
  labels = {"img00": "tower", "img03": "bridge", "img05b": "x", "img08": "tower", "img09": ""}
  records = {"image_paths": images, "labels": labels}
  _, single_failures = build_first_stage(
    tmp_path / "single", paths, retrieval_config, **records, **QUIET
  )
  expected_records = (tmp_path / "single" / RECORDS_FILE).read_text()
  assert "img08" in expected_records and "img09" not in expected_records
  query = random_unit_descriptors(np.random.default_rng(9), 30, DIM)
  query_global = np.array([0.9, 0.3, -0.2, 0.1], np.float32)
  expected = stage_ranking(tmp_path / "single", retrieval_config, query, query_global)
  assert len(expected[0]) >= 8
  for per_shard in (3, 20):
    ids, failures = build_stage_sharded(
      paths, tmp_path / f"merged{per_shard}", tmp_path / f"shards{per_shard}", retrieval_config,
      per_shard, beam_argv=None, **records, **QUIET,
    )  # fmt: skip
    assert sorted(failures) == sorted((str(path), reason) for path, reason in single_failures)
    assert built_stage(tmp_path / f"merged{per_shard}") == stage
    # The image records: the same records.json as the single build's.
    assert (tmp_path / f"merged{per_shard}" / RECORDS_FILE).read_text() == expected_records
    assert not (tmp_path / f"shards{per_shard}").exists()  # Removed after the merge.
    names, scores = stage_ranking(
      tmp_path / f"merged{per_shard}", retrieval_config, query, query_global
    )
    assert names == expected[0]
    np.testing.assert_allclose(scores, expected[1], rtol=0, atol=1e-6)
  if stage == "global":  # The whitening was learned, the same as the single build's.
    single, merged = (read_whitening(tmp_path / name / "global") for name in ("single", "merged3"))
    assert single is not None and merged is not None
    for ours, theirs in zip(merged, single):
      np.testing.assert_array_equal(ours, theirs)


def test_stage_shards_of_other_stages_or_codebooks_are_refused(tmp_path, stage_features):
  paths = list_feature_files(stage_features)
  shards = {}
  for name, stage, fields in [
    ("asmk", "asmk", {"asmk_codebook_size": 16}),
    ("asmk8", "asmk", {"asmk_codebook_size": 8}),
    ("global", "global", {}),
  ]:
    build_stage_sharded(
      paths, None, tmp_path / name, stage_config(stage, **fields), 6, beam_argv=None, **QUIET
    )
    shards[name] = shard_folders(tmp_path / name)
  lines = []  # A resumed run reuses the codebook and keeps the finished shards,
  asmk16 = stage_config("asmk", asmk_codebook_size=16)
  build_stage_sharded(  # updating their image records (new labels) without rebuilding them.
    paths, None, tmp_path / "asmk", asmk16, 6, beam_argv=None, log=lines.append,
    labels={"img01": "tower"},
  )  # fmt: skip
  assert lines[0].startswith("reusing the trained ASMK codebook")
  assert sum("already built (6 images), image records updated" in line for line in lines) == 1
  assert sum(line.endswith(": already built (5 images)") for line in lines) == 1
  with pytest.raises(ShardError, match="made with other first stages: asmk vs global"):
    merge_stage_shards([shards["asmk"][0], shards["global"][1]], tmp_path / "index")
  with pytest.raises(ShardError, match="made with other index settings"):
    merge_stage_shards([shards["asmk"][0], shards["asmk8"][1]], tmp_path / "index")
  with pytest.raises(ShardError, match="no shard holds slots 6..11: a shard is missing"):
    merge_stage_shards(shards["global"][:1], tmp_path / "index")
  with pytest.raises(ShardError, match="shard of first_stage 'asmk', not of a votes index"):
    merge_shards(shards["asmk"], tmp_path / "index")
  assert not (tmp_path / "index").exists()  # Nothing written by a refused merge.
  # A codebook retrained on the same settings (another seed): the same settings, not the same
  # codebook.
  other = tmp_path / "other"
  params = AsmkParams.from_config(stage_config("asmk", asmk_codebook_size=16), seed=1)
  train_asmk_quantiser(paths, other / QUANTISER_DIR, params, **QUIET)
  build_asmk_shard(plan_shards(paths, 2)[1], other / QUANTISER_DIR, other, **QUIET)
  with pytest.raises(ShardError, match="made with other trained quantisers"):
    merge_stage_shards([shards["asmk"][0], *shard_folders(other)], tmp_path / "index")
  merge_stage_shards(shards["asmk"], tmp_path / "index", **QUIET)
  assert read_records(tmp_path / "index") == {"img01": ImageRecord(None, "tower")}
  assert not (tmp_path / "global_index" / RECORDS_FILE).exists()
  merge_stage_shards(shards["global"], tmp_path / "global_index", **QUIET)
  assert read_records(tmp_path / "global_index") == {}  # Built without records: none written.
  assert not (tmp_path / "global_index" / RECORDS_FILE).exists()
  with pytest.raises(ShardError, match="already holds an index"):
    merge_stage_shards(shards["asmk"], tmp_path / "index", **QUIET)


@pytest.mark.slow  # Runs the console script.
def test_merge_index_tool_merges_global_shards_with_the_feature_store(tmp_path, stage_features):
  paths = list_feature_files(stage_features)
  build_stage_sharded(
    paths, None, tmp_path / "shards", stage_config("global"), 4, beam_argv=None, **QUIET,
    image_paths={"img02": tmp_path / "img02.jpg"}, labels={"img02": "tower", "img09": "bridge"},
  )  # fmt: skip
  index_dir = tmp_path / "index"
  result = run_command(
    [
      installed_script("merge_index"),
      f"--shards_dir={tmp_path / 'shards'}",
      f"--index_dir={index_dir}",
      f"--features_dir={stage_features}",
    ],
    timeout=300,
    env=tool_env(),
  )
  # img03 has no global descriptor and img05b is no feature file: both reported (exit 1).
  assert result.returncode == 1, result.stderr
  assert "global index at" in result.stdout and "2 feature files failed" in result.stderr
  assert built_stage(index_dir) == "global" and (index_dir / "features" / "CURRENT").is_file()
  assert len(open_first_stage(index_dir, stage_config("global"))) == 10
  assert read_records(index_dir) == {  # The shards' image records came along.
    "img02": ImageRecord(str(tmp_path / "img02.jpg"), "tower"),
    "img09": ImageRecord(None, "bridge"),
  }
