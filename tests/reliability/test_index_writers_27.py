"""Issue 27, the index: one writer at a time (item 11), an empty feature file and a tampered
meta.json (item 15), lengths in index.faiss checked before faiss allocates them (item 16)."""

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import time

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
from delf_ret.index.builder import remove_images

LOCK = ".delfret-writer.lock"
DIM = 40  # The shipped default config's pca_dim: build_index runs without --config_path.
HNSW = "--config_override=retrieval_config.index_type=hnsw"


def write_images(folder, names, rng, n=30, dim=DIM):
  folder.mkdir(parents=True, exist_ok=True)
  for name in names:
    write_features(
      folder / f"{name}.delf",
      make_features(rng.uniform(0, 100, (n, 2)), random_unit_descriptors(rng, n, dim)),
    )


def quiet(line):
  del line


def lock_is_held(index_dir) -> bool:
  """Whether some process holds the index folder's writer lock (tried, never taken for long)."""
  try:
    fd = os.open(index_dir / LOCK, os.O_RDWR)
  except FileNotFoundError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  finally:
    os.close(fd)  # Also releases the lock if it was free and taken here.
  return False


@pytest.fixture
def saved_index(tmp_path):
  """An index of images a and b, and the features folder of image c."""
  rng = np.random.default_rng(0)
  write_images(tmp_path / "ab", ["a", "b"], rng)
  write_images(tmp_path / "c", ["c"], rng)
  build_index(list_feature_files(tmp_path / "ab"), tmp_path / "index", IndexParams(), log=quiet)
  return tmp_path / "index", tmp_path / "c"


# Item 11 --------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_at_once_with_one_line(saved_index):
  index_dir, other_features = saved_index
  # Another writer holds the lock (a lock on another open file, as another process's would be).
  fd = os.open(index_dir / LOCK, os.O_RDWR | os.O_CREAT)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    for write in (
      lambda: build_index(list_feature_files(other_features), index_dir, IndexParams(), log=quiet),
      lambda: remove_images(index_dir, ["a"], log=quiet),
      lambda: LocalFeatureIndex.load(index_dir).save(index_dir),
    ):
      with pytest.raises(LocalIndexError, match="being written by another process") as raised:
        write()
      assert str(index_dir) in str(raised.value) and "\n" not in str(raised.value)
  finally:
    os.close(fd)
  assert LocalFeatureIndex.load(index_dir).image_ids() == ["a", "b"]
  build_index(list_feature_files(other_features), index_dir, IndexParams(), log=quiet)
  assert LocalFeatureIndex.load(index_dir).image_ids() == ["a", "b", "c"]


def test_the_pointer_is_written_through_a_unique_temporary_name(saved_index, tmp_path):
  index_dir, _ = saved_index
  victim = tmp_path / "victim.txt"
  victim.write_text("the user's file")
  (index_dir / ".CURRENT.tmp").symlink_to(victim)  # A fixed name would be written through.
  LocalFeatureIndex.load(index_dir).save(index_dir)
  assert victim.read_text() == "the user's file"
  assert not (index_dir / "CURRENT").is_symlink()
  assert LocalFeatureIndex.load(index_dir).image_ids() == ["a", "b"]


@pytest.fixture(scope="module")
def two_feature_sets(tmp_path_factory):
  """Feature folders of two runs: "big" (60 images of 1000 descriptors, several seconds to add
  to an HNSW index) and "small" (3 images)."""
  root = tmp_path_factory.mktemp("writers")
  rng = np.random.default_rng(27)
  write_images(root / "big", [f"big{i:03d}" for i in range(60)], rng, n=1000)
  write_images(root / "small", [f"small{i}" for i in range(3)], rng)
  return root


def build_index_command(features, index_dir, *extra):
  return [
    installed_script("build_index"),
    f"--features_dir={features}",
    f"--index_dir={index_dir}",
    HNSW,
    *extra,
  ]


def wait_for(condition, process, what, timeout=120.0):
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, f"the first build_index ended before {what}"
    assert time.time() < deadline, f"no {what} within {timeout} s"
    time.sleep(0.05)


@pytest.mark.slow  # Two build_index runs at once (about 15 s).
def test_two_build_index_runs_on_one_folder(two_feature_sets, tmp_path):
  index_dir = tmp_path / "index"
  env = tool_env(OMP_NUM_THREADS="1")
  first = subprocess.Popen(
    build_index_command(two_feature_sets / "big", index_dir, "--save_every=10"),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    stdin=subprocess.DEVNULL,
    text=True,
    env=env,
  )
  try:
    wait_for(lambda: lock_is_held(index_dir), first, "writer lock")
    second = run_command(
      build_index_command(two_feature_sets / "small", index_dir), timeout=120, env=env
    )
    assert first.poll() is None, "the first run ended before the second one started: enlarge it"
    assert second.returncode == 2, second.stdout + second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"index folder {index_dir} is being written by another process" in errors[0]
    # Readers keep working while the first run writes: each load reads a whole version.
    wait_for(lambda: (index_dir / "CURRENT").is_file(), first, "saved version")
    loads = 0
    while first.poll() is None:
      assert LocalFeatureIndex.load(index_dir, expected_dim=DIM).dim == DIM
      loads += 1
    assert loads
    out, err = first.communicate(timeout=300)
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert first.returncode == 0, out + err
  index = LocalFeatureIndex.load(index_dir)
  assert index.image_ids() == [f"big{i:03d}" for i in range(60)]
  assert index.num_descriptors == 60_000
  assert [path.name for path in index_dir.glob("v-*")] == [
    (index_dir / "CURRENT").read_text().strip()
  ]
  # The refused run, run again, adds its images to the same index.
  again = run_command(
    build_index_command(two_feature_sets / "small", index_dir), timeout=300, env=env
  )
  assert again.returncode == 0, again.stderr
  assert len(LocalFeatureIndex.load(index_dir)) == 63


@pytest.mark.slow  # Kills a build_index run (about 10 s).
def test_a_killed_writer_leaves_no_stale_lock(two_feature_sets, tmp_path):
  index_dir = tmp_path / "index"
  writer = subprocess.Popen(
    build_index_command(two_feature_sets / "big", index_dir, "--save_every=10"),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    stdin=subprocess.DEVNULL,
    env=tool_env(OMP_NUM_THREADS="1"),
  )
  try:
    wait_for(lambda: lock_is_held(index_dir), writer, "writer lock")
    wait_for(lambda: (index_dir / "CURRENT").is_file(), writer, "saved version")
  finally:
    writer.kill()
    writer.wait()
  assert not lock_is_held(index_dir)
  index, failures = build_index(
    list_feature_files(two_feature_sets / "small"),
    index_dir,
    IndexParams(index_type="hnsw"),
    log=quiet,
    dim=DIM,
  )
  assert not failures and {f"small{i}" for i in range(3)} <= set(index.image_ids())
  assert len(list(index_dir.glob("v-*"))) == 1  # The killed run's unfinished version is gone.


# Item 15 --------------------------------------------------------------------------------------


def test_an_empty_feature_file_is_not_indexed_but_reported(tmp_path):
  rng = np.random.default_rng(15)
  write_images(tmp_path / "features", ["a", "b"], rng)
  empty = tmp_path / "features" / "blank_sky.delf"
  write_features(empty, make_features(np.zeros((0, 2)), np.zeros((0, DIM))))
  lines = []
  index, failures = build_index(
    list_feature_files(tmp_path / "features"), tmp_path / "index", IndexParams(), log=lines.append
  )
  assert index.image_ids() == ["a", "b"] and "blank_sky" not in LocalFeatureIndex.load(
    tmp_path / "index"
  )
  assert [path for path, _ in failures] == [empty]
  assert "no features" in failures[0][1] and str(empty) in failures[0][1]
  assert any("blank_sky.delf" in line and "not indexed" in line for line in lines)


def tamper_meta(index_dir, change):
  version = index_dir / (index_dir / "CURRENT").read_text().strip()
  meta = json.loads((version / "meta.json").read_text())
  (version / "meta.json").write_text(change(meta))


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda meta: json.dumps({**meta, "images": dict.fromkeys(meta["images"], 0)}), "share a slot"),
    (lambda meta: json.dumps({**meta, "deleted_slots": [1]}), "share a slot"),
    (
      lambda meta: json.dumps(meta).replace('"images": {', '"images": {"a": 2, '),
      "'a' given twice",
    ),
    (lambda meta: json.dumps({**meta, "images": {"a": 0}}), "does not list"),
  ],
  ids=["all_one_slot", "deleted_slot_in_use", "id_twice", "image_missing"],
)
def test_a_tampered_meta_json_is_refused(saved_index, change, message):
  index_dir, _ = saved_index
  tamper_meta(index_dir, change)
  with pytest.raises(LocalIndexError, match=message) as raised:
    LocalFeatureIndex.load(index_dir)
  assert "\n" not in str(raised.value)


# Item 16 --------------------------------------------------------------------------------------

HUGE = 1 << 27  # Entries: 1 GiB of ids, 128 MiB of codes; the damaged files hold a few KB.


def saved_faiss(tmp_path, params):
  rng = np.random.default_rng(16)
  index = LocalFeatureIndex(8, params)
  index.train(random_unit_descriptors(rng, 600, 8))
  for name in ("a", "b", "c"):
    index.add(name, random_unit_descriptors(rng, 20, 8))
  index.save(tmp_path / "index")
  version = (tmp_path / "index" / "CURRENT").read_text().strip()
  return tmp_path / "index", tmp_path / "index" / version / "index.faiss"


def set_length(path, offset):
  data = bytearray(path.read_bytes())
  data[offset : offset + 8] = struct.pack("<Q", HUGE)
  path.write_bytes(bytes(data))


def id_map_length(data):
  return len(data) - 60 * 8 - 8  # The id map (60 ids) ends the file.


LENGTH_FIELDS = {
  "flat_id_map": (IndexParams(), id_map_length),
  "hnsw_id_map": (IndexParams(index_type="hnsw"), id_map_length),
  "ivfpq_list_size": (
    IndexParams(index_type="ivfpq", nlist=2, pq_m=4, pq_nbits=4, train_sample_size=600),
    lambda data: data.index(b"full") + 4 + 8,  # The first list's size.
  ),
  "fast_scan_list_ids": (
    IndexParams(
      index_type="ivfpq", nlist=2, pq_m=4, pq_nbits=4, pq_fast_scan=True, train_sample_size=600
    ),
    lambda data: data.index(b"ilbl") + 4 + 4 * 8,  # The first list's id count.
  ),
}


@pytest.mark.parametrize("name", sorted(LENGTH_FIELDS))
def test_a_length_beyond_the_file_is_refused_before_faiss_reads_it(tmp_path, name):
  params, offset = LENGTH_FIELDS[name]
  index_dir, path = saved_faiss(tmp_path, params)
  set_length(path, offset(path.read_bytes()))
  with pytest.raises(LocalIndexError, match=r"is corrupt: .* claims 134217728 entries") as raised:
    LocalFeatureIndex.load(index_dir)
  assert str(path) in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.slow  # A Python process of its own, to measure its peak memory (3 s).
def test_a_damaged_length_costs_no_memory(tmp_path):
  index_dir, path = saved_faiss(tmp_path, IndexParams())
  set_length(path, id_map_length(path.read_bytes()))
  # Peak resident memory of this process image: VmHWM (kB) of /proc/self/status belongs to
  # the address space made at exec; getrusage's ru_maxrss would also count the memory of
  # the pytest process it was forked from (Linux keeps it across exec).
  script = (
    "import sys\n"
    "from delf_ret.index import LocalFeatureIndex, LocalIndexError\n"
    "try:\n"
    "  LocalFeatureIndex.load(sys.argv[1])\n"
    "except LocalIndexError as error:\n"
    "  print(error)\n"
    "status = open('/proc/self/status').read().splitlines()\n"
    "print(next(line.split()[1] for line in status if line.startswith('VmHWM:')))\n"
  )
  result = run_command([sys.executable, "-c", script, str(index_dir)], timeout=120, env=tool_env())
  assert result.returncode == 0, result.stderr
  message, peak_kb = result.stdout.splitlines()
  assert re.search("claims 134217728 entries", message), message
  assert int(peak_kb) < 400_000, f"peak {int(peak_kb) // 1024} MiB"  # 1 GiB+ before the check.
