"""Damaged index files give the package's error; a stray feature file cannot set the dimension;
a killed save's leftovers are removed."""

import json
import os
import time

import numpy as np
import pytest

from conftest import make_features
from conftest import random_unit_descriptors
from delf_ret.features import write_features
from delf_ret.index import IndexParams
from delf_ret.index import LocalFeatureIndex
from delf_ret.index import LocalIndexError
from delf_ret.index.builder import build_index


def _saved(tmp_path):
  rng = np.random.default_rng(0)
  index = LocalFeatureIndex(8)
  index.add("a", random_unit_descriptors(rng, 10, 8))
  index.save(tmp_path / "index")
  version = (tmp_path / "index" / "CURRENT").read_text().strip()
  return tmp_path / "index", tmp_path / "index" / version


@pytest.mark.parametrize(
  "damage, message",
  [
    (lambda v: (v / "meta.json").write_text("[1, 2]"), "not a JSON object"),
    (lambda v: (v / "meta.json").write_text("{"), "unreadable"),
    (
      lambda v: (v / "meta.json").write_text(
        json.dumps({**json.loads((v / "meta.json").read_text()), "params": {"nlmst": 3}})
      ),
      "damaged",
    ),
    (
      lambda v: (v / "meta.json").write_text(
        json.dumps({**json.loads((v / "meta.json").read_text()), "images": ["a"]})
      ),
      "damaged",
    ),
    (
      lambda v: (v / "index.faiss").write_bytes(b"IxF2" + (v / "index.faiss").read_bytes()[5:]),
      "corrupt",
    ),
    (lambda v: (v.parent / "CURRENT").write_text("../../elsewhere"), "not a version folder"),
  ],
)
def test_damaged_index_files_give_clear_errors(tmp_path, damage, message):
  folder, version = _saved(tmp_path)
  damage(version)
  with pytest.raises(LocalIndexError, match=message):
    LocalFeatureIndex.load(folder)


def test_a_stray_first_file_does_not_set_the_dimension(tmp_path):
  rng = np.random.default_rng(1)
  features = tmp_path / "features"
  write_features(
    features / "000_stray.delf",
    make_features(rng.uniform(0, 99, (5, 2)), random_unit_descriptors(rng, 5, 128)),
  )
  (features / "001_corrupt.delf").write_bytes(b"not a feature file")
  for name in ("a", "b"):
    write_features(
      features / f"{name}.delf",
      make_features(rng.uniform(0, 99, (5, 2)), random_unit_descriptors(rng, 5, 40)),
    )
  paths = sorted(features.glob("*.delf"))
  index, failures = build_index(
    paths, tmp_path / "index", IndexParams(), log=lambda line: None, dim=40
  )
  assert index.dim == 40 and sorted(index.image_ids()) == ["a", "b"]
  assert sorted(path.name for path, _ in failures) == ["000_stray.delf", "001_corrupt.delf"]
  # Without a dimension from the config, a corrupt first file is skipped, not fatal.
  index, _ = build_index(paths[1:], tmp_path / "index2", IndexParams(), log=lambda line: None)
  assert index.dim == 40


def test_leftover_version_folders_of_a_killed_save_are_removed(tmp_path):
  folder, version = _saved(tmp_path)
  leftover = folder / "v-killed_save"
  leftover.mkdir()
  (leftover / "index.faiss").write_bytes(b"\0" * 1000)
  past = time.time() - 3600
  os.utime(leftover, (past, past))
  rng = np.random.default_rng(2)
  write_features(
    tmp_path / "f" / "b.delf",
    make_features(rng.uniform(0, 99, (5, 2)), random_unit_descriptors(rng, 5, 8)),
  )
  build_index([tmp_path / "f" / "b.delf"], folder, IndexParams(), log=lambda line: None)
  assert not leftover.exists()
  assert len(LocalFeatureIndex.load(folder)) == 2
