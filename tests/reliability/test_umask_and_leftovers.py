"""Written files follow the umask; temporary files of killed runs are removed by the next run."""

import os
import stat
import time

import numpy as np
import pytest

from conftest import make_features
from conftest import random_unit_descriptors
from delf_ret.atomic import atomic_write
from delf_ret.atomic import remove_leftovers
from delf_ret.features import write_features


@pytest.fixture
def umask():
  previous = os.umask(0o022)
  yield lambda mask: os.umask(mask)
  os.umask(previous)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_follow_the_umask(umask, tmp_path, mask, expected):
  umask(mask)
  rng = np.random.default_rng(0)
  write_features(
    tmp_path / "a.delf",
    make_features(rng.uniform(0, 9, (3, 2)), random_unit_descriptors(rng, 3, 4)),
  )
  with atomic_write(tmp_path / "report.txt", "w") as handle:
    handle.write("x")
  for name in ("a.delf", "report.txt"):
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected


def test_savedmodel_staging_folder_follows_the_umask(umask, tmp_path):
  from delf_ret.atomic import respect_umask

  umask(0o022)
  folder = tmp_path / "made_by_mkdtemp"
  folder.mkdir(mode=0o700)
  respect_umask(folder, directory=True)
  assert stat.S_IMODE(folder.stat().st_mode) == 0o755


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_current_umask_reads_the_mask_without_changing_it(umask, mask):
  from delf_ret.atomic import current_umask

  umask(mask)
  assert current_umask() == mask
  assert os.umask(mask) == mask  # still set: reading it left it as it was


def test_leftover_temporary_files_are_removed_but_fresh_ones_kept(tmp_path):
  old = tmp_path / ".graf1.delf.delfret-k2j3h4ab.tmp"
  fresh = tmp_path / ".box.delf.delfret-a8s7d6cd.tmp"
  keep = tmp_path / "graf1.delf"
  for path in (old, fresh, keep):
    path.write_bytes(b"partial")
  past = time.time() - 3600
  os.utime(old, (past, past))
  os.utime(keep, (past, past))
  lines = []
  assert remove_leftovers(tmp_path, lines.append) == 1
  assert not old.exists() and fresh.exists() and keep.exists()
  assert lines == [f"removed 1 temporary files left by an interrupted run in {tmp_path}"]
