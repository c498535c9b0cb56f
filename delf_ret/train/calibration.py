"""Training pairs for calibrating verification (scripts/calibrate_matching.py): overlapping
photos that must pass, unrelated photos that must not. Never evaluation sets.

Photo folders are read as the training folders of ``../shared/data`` are laid out:

- a folder with a ``labels.csv`` (``image,<label column>,...``): photos grouped by label.
  Labels of a ``landmark`` or ``class_name`` column name distinct things (two labels are
  unrelated photos); labels of any other column (``scene``) are places that may neighbour
  each other, so two scenes of one folder are never used as an unrelated pair. Rows without
  a label are left out.
- any other folder: each sub-folder holding a ``cameras.csv`` is one sequence of
  overlapping photos (the Strecha layout); every other photo is grouped by its top
  sub-folder (e.g. ``coco128``), never paired within it.

Related pairs (they should pass): neighbours in name order within a scene or sequence
(gap 1 to 3), or two photos of one landmark / object class (the retrieval task itself,
though such photos need not overlap), at most PAIRS_PER_GROUP of each group.
Unrelated pairs: photos of different folders given, or of different distinct labels.
Pure Python and numpy.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import os
import pathlib

import numpy as np

from delf_ret.images import IMAGE_SUFFIXES
from delf_ret.train.photos import TrainingDataError

DISTINCT_LABEL_COLUMNS = ("landmark", "class_name")
PAIRS_PER_GROUP = 4


@dataclasses.dataclass(frozen=True)
class CalibrationPhoto:
  """One training photo: its folder (the root given), group and whether groups of that
  folder are distinct things (unrelated to each other)."""

  path: pathlib.Path
  root: str
  group: str
  distinct: bool
  overlapping: bool  # Its group is a scene or sequence of overlapping photos.


def _labelled_photos(root: pathlib.Path, table: pathlib.Path) -> list[CalibrationPhoto]:
  with open(table, newline="") as handle:
    reader = csv.reader(handle)
    header = next(reader, None)
    if not header or len(header) < 2 or header[0] != "image":
      raise TrainingDataError(f"{table}: expected a header image,<label>,..., got {header}")
    distinct = header[1] in DISTINCT_LABEL_COLUMNS
    return [
      CalibrationPhoto(root / row[0], str(root), row[1], distinct, overlapping=not distinct)
      for row in reader
      if len(row) >= 2 and row[1] and (root / row[0]).is_file()
    ]


def _sequence_photos(root: pathlib.Path) -> list[CalibrationPhoto]:
  sequences = {table.parent for table in root.rglob("cameras.csv")}
  photos = []
  for path in sorted(root.rglob("*")):
    if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
      continue
    sequence = next((s for s in sequences if s in path.parents), None)
    if sequence is not None:
      photos.append(CalibrationPhoto(path, str(root), str(path.parent), False, True))
    else:
      top = path.relative_to(root).parts[0]
      photos.append(CalibrationPhoto(path, str(root), top, False, False))
  return photos


def calibration_photos(roots: list[str | os.PathLike]) -> list[CalibrationPhoto]:
  """Every usable photo of the training folders ``roots`` with its group (module docstring)."""
  photos = []
  for root in map(pathlib.Path, roots):
    if not root.is_dir():
      raise TrainingDataError(f"{root}: training photo folder not found")
    table = root / "labels.csv"
    photos += _labelled_photos(root, table) if table.is_file() else _sequence_photos(root)
  return photos


def unrelated(a: CalibrationPhoto, b: CalibrationPhoto) -> bool:
  """Whether two photos are known to show unrelated things (module docstring)."""
  if a.root != b.root:
    return True
  return a.distinct and b.distinct and a.group != b.group


def calibration_pairs(
  photos: list[CalibrationPhoto], num_overlapping: int, num_unrelated: int, seed: int = 0
) -> tuple[list[tuple[pathlib.Path, pathlib.Path]], list[tuple[pathlib.Path, pathlib.Path]]]:
  """(related pairs, unrelated pairs) of photo paths: random samples of at most the
  given sizes, deterministic for a seed, each list in a stable order."""
  rng = np.random.default_rng(seed)
  groups: dict[tuple[str, str], list[pathlib.Path]] = {}
  for photo in photos:
    if photo.overlapping or photo.distinct:  # A scene, a sequence, a landmark.
      groups.setdefault((photo.root, photo.group), []).append(photo.path)
  overlapping = []
  for _, members in sorted(groups.items()):
    members = sorted(members)
    neighbours = [(members[i], members[i + g]) for g in (1, 2, 3) for i in range(len(members) - g)]
    # At most PAIRS_PER_GROUP of a scene, so long sequences do not fill the sample.
    overlapping += [
      neighbours[i] for i in sorted(rng.permutation(len(neighbours))[:PAIRS_PER_GROUP])
    ]
  overlapping = [
    overlapping[i] for i in sorted(rng.permutation(len(overlapping))[:num_overlapping])
  ]
  # A random sample of photos, then unrelated pairs among them: each photo in several pairs.
  pool = [
    photos[i] for i in sorted(rng.permutation(len(photos))[: 4 * int(np.sqrt(num_unrelated)) + 8])
  ]
  candidates = [(a.path, b.path) for a, b in itertools.combinations(pool, 2) if unrelated(a, b)]
  chosen = sorted(rng.permutation(len(candidates))[:num_unrelated])
  return overlapping, [candidates[i] for i in chosen]


def threshold_above(unrelated_inliers: list[int]) -> int:
  """The smallest min_inliers that no unrelated pair reaches (at least 4, the published
  default): the largest unrelated inlier count plus one."""
  return max(4, max(unrelated_inliers, default=0) + 1)
