"""Issue 27 item 12: the tools remove only what delf-ret wrote (a name pattern and a marker),
never a user's ``.notes.tmp`` or ``v-2023/report.txt``; indexes saved before the marker load."""

import os
import time

import numpy as np

from conftest import make_features
from conftest import random_unit_descriptors
from delf_ret.atomic import atomic_write
from delf_ret.atomic import remove_leftovers
from delf_ret.features import write_features
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.index.builder import build_index
from delf_ret.index.builder import list_feature_files
from delf_ret.index.builder import remove_images

PAST = time.time() - 3600


def age(*paths):
  for path in paths:
    os.utime(path, (PAST, PAST), follow_symlinks=False)


def write_images(folder, names, seed):
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  for name in names:
    write_features(
      folder / f"{name}.delf",
      make_features(rng.uniform(0, 99, (8, 2)), random_unit_descriptors(rng, 8, 40)),
    )


def quiet(line):
  del line


def test_only_delf_ret_temporary_files_are_removed(tmp_path):
  users = [tmp_path / ".notes.tmp", tmp_path / ".report.final.tmp", tmp_path / ".a.delf.x.tmp"]
  for path in users:
    path.write_text("the user's")
  (tmp_path / ".b.delf.delfret-abcd1234.tmp").mkdir()  # A folder, not a temporary file.
  (tmp_path / ".c.delf.delfret-abcd1234.tmp").symlink_to(tmp_path / ".notes.tmp")
  ours = tmp_path / ".graf1.delf.delfret-k2j3h4ab.tmp"  # As atomic_write names them.
  ours.write_bytes(b"partial")
  fresh = tmp_path / ".box.delf.delfret-a8s7d6f5.tmp"
  fresh.write_bytes(b"being written")
  age(
    *users,
    ours,
    tmp_path / ".b.delf.delfret-abcd1234.tmp",
    tmp_path / ".c.delf.delfret-abcd1234.tmp",
  )
  lines = []
  assert remove_leftovers(tmp_path, lines.append) == 1
  assert not ours.exists() and fresh.exists()
  assert all(path.read_text() == "the user's" for path in users)
  assert (tmp_path / ".b.delf.delfret-abcd1234.tmp").is_dir()
  assert (tmp_path / ".c.delf.delfret-abcd1234.tmp").is_symlink()
  assert lines == [f"removed 1 temporary files left by an interrupted run in {tmp_path}"]


def test_atomic_writes_use_the_marked_name(tmp_path):
  with atomic_write(tmp_path / "a.json", "w") as handle:
    names = os.listdir(tmp_path)
    handle.write("{}")
  assert len(names) == 1 and names[0].startswith(".a.json.delfret-") and names[0].endswith(".tmp")
  assert os.listdir(tmp_path) == ["a.json"]


def test_index_writers_keep_a_users_v_folders(tmp_path):
  index_dir = tmp_path / "index"
  report = index_dir / "v-2023" / "report.txt"
  report.parent.mkdir(parents=True)
  report.write_text("the user's report")
  (index_dir / "v-notes").write_text("a file")
  lookalike = index_dir / "v-mixed"  # Index file names, but also the user's own file.
  lookalike.mkdir()
  for name in ("index.faiss", "meta.json", "readme.txt"):
    (lookalike / name).write_text("the user's")
  (tmp_path / "elsewhere").mkdir()
  (tmp_path / "elsewhere" / "index.faiss").write_text("the user's")
  (index_dir / "v-link").symlink_to(tmp_path / "elsewhere")
  age(report.parent, lookalike, index_dir / "v-link")
  write_images(tmp_path / "f", ["a", "b"], seed=0)
  build_index(list_feature_files(tmp_path / "f"), index_dir, IndexParams(), save_every=1, log=quiet)
  remove_images(index_dir, ["a"], log=quiet)
  assert report.read_text() == "the user's report"
  assert (index_dir / "v-notes").read_text() == "a file"
  assert sorted(os.listdir(lookalike)) == ["index.faiss", "meta.json", "readme.txt"]
  assert (tmp_path / "elsewhere" / "index.faiss").read_text() == "the user's"
  assert (index_dir / "v-link").is_symlink()
  current = (index_dir / "CURRENT").read_text().strip()
  assert (index_dir / current / ".delfret-version").is_file()  # Our versions carry the marker.
  ours = {path.name for path in index_dir.glob("v-*")} - {"v-2023", "v-notes", "v-mixed", "v-link"}
  assert ours == {current}
  assert LocalFeatureIndex.load(index_dir).image_ids() == ["b"]


def test_an_index_saved_before_the_marker_loads_and_its_old_versions_go(tmp_path):
  """Today's indexes have unmarked versions: they load, and a version folder that holds only
  delf-ret's index files is delf-ret's (removed once replaced); anything else stays."""
  index_dir = tmp_path / "index"
  write_images(tmp_path / "f", ["a", "b"], seed=1)
  build_index(list_feature_files(tmp_path / "f"), index_dir, IndexParams(), log=quiet)
  old = index_dir / (index_dir / "CURRENT").read_text().strip()
  (old / ".delfret-version").unlink()  # As delf-ret wrote it before the marker.
  leftover = index_dir / "v-k1lled00"  # An unmarked leftover of a killed save.
  leftover.mkdir()
  (leftover / "index.faiss").write_bytes(b"\0" * 100)
  assert LocalFeatureIndex.load(index_dir).image_ids() == ["a", "b"]
  write_images(tmp_path / "f", ["c"], seed=2)
  build_index(list_feature_files(tmp_path / "f"), index_dir, IndexParams(), log=quiet)
  assert not old.exists() and not leftover.exists()
  assert [path.name for path in index_dir.glob("v-*")] == [
    (index_dir / "CURRENT").read_text().strip()
  ]
  assert LocalFeatureIndex.load(index_dir).image_ids() == ["a", "b", "c"]
