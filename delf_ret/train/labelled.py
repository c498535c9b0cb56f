"""Your own labelled photos -> the TFRecord shards the tuning and attention stages read.

Input: a CSV with a header row naming at least an image column (``image``) and a
label column (``label``, or another one such as ``landmark``); image paths are
relative to an images folder (by default the CSV's folder). Rows with an empty
label are skipped and counted; labels with fewer than ``min_images_per_label``
photos are left out and reported (also in ``split.json``). A bad row (an empty
or escaping image path, a photo listed twice, a missing file) refuses the whole
CSV with one error naming the file and the row's line.

Written to the output folder, as delf_ret.train.gldv2 writes GLDv2:
  train-SSSSS-of-NNNNN.tfrecord, validation-SSSSS-of-MMMMM.tfrecord
      image/id is the photo's path relative to the images folder, image/class/label
      the label's index (labels in sorted order);
  label_map.csv   name,label (the CSV's label text -> contiguous 0-based label);
  split.json      the seed, the validation share, the image counts and the settings
                  of this command, with a digest of the photo list.
The split is stratified per label (seeded); each split is written in a seeded
random order so that a shard mixes the labels. A rerun with the same inputs keeps
finished shards; one with another CSV or other settings is refused. Unreadable
photos are reported and skipped.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import os
import pathlib
from typing import Callable

import numpy as np

from delf_ret.train.gldv2 import GldDataError
from delf_ret.train.gldv2 import TrainImage
from delf_ret.train.gldv2 import write_training_data


@dataclasses.dataclass(frozen=True)
class LabelledPhotos:
  """The usable rows of a labels CSV.

  photos: (image id = path relative to the images folder, path, label text).
  unlabelled: rows with an empty label (skipped).
  """

  photos: list[tuple[str, pathlib.Path, str]]
  unlabelled: int


def _photo_of_row(
  images_dir: pathlib.Path, image: str, seen: dict[str, int], line: int
) -> tuple[str, pathlib.Path]:
  """(image id, path) of one row's image; raises GldDataError's reason (without the file)."""
  if not image.strip():
    raise GldDataError("empty image path")
  path = pathlib.Path(os.path.normpath(images_dir / image.strip()))
  if os.path.commonpath([path, images_dir]) != str(images_dir):
    raise GldDataError(f"image path {image!r} is outside the images folder {images_dir}")
  image_id = path.relative_to(images_dir).as_posix()
  if image_id in seen:
    raise GldDataError(f"image {image_id} is listed again (first on line {seen[image_id]})")
  seen[image_id] = line
  if not path.is_file():
    raise GldDataError(f"image not found: {path}")
  return image_id, path


def read_labelled_csv(
  csv_path: str | os.PathLike,
  images_dir: str | os.PathLike | None = None,
  label_column: str = "label",
  image_column: str = "image",
) -> LabelledPhotos:
  """The labelled rows of ``csv_path`` (see the module docstring).

  Raises GldDataError naming the CSV and the line of the first bad row (and how
  many more there are).
  """
  csv_path = pathlib.Path(csv_path)
  if not csv_path.is_file():
    raise GldDataError(f"labels CSV not found: {csv_path}")
  folder = pathlib.Path(os.path.abspath(images_dir if images_dir is not None else csv_path.parent))
  if not folder.is_dir():
    raise GldDataError(f"images folder not found: {folder}")
  photos, unlabelled, bad = [], 0, []
  seen: dict[str, int] = {}
  with open(csv_path, newline="") as handle:
    reader = csv.DictReader(handle)
    columns = reader.fieldnames or []
    missing = [name for name in (image_column, label_column) if name not in columns]
    if missing:
      raise GldDataError(
        f"{csv_path}: no column {missing[0]!r} in the header (columns: {', '.join(columns)})"
      )
    for row in reader:
      line = reader.line_num
      if None in row or None in (row[image_column], row[label_column]):
        bad.append(f"{csv_path}:{line}: expected {len(columns)} fields")
        continue
      label = row[label_column].strip()
      if not label:
        unlabelled += 1
        continue
      try:
        photos.append((*_photo_of_row(folder, row[image_column], seen, line), label))
      except GldDataError as error:
        bad.append(f"{csv_path}:{line}: {error}")
  if bad:
    more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
    raise GldDataError(bad[0] + more)
  return LabelledPhotos(photos, unlabelled)


def photo_list_digest(images: list[TrainImage]) -> str:
  """SHA-256 (hex) of the sorted (image id, label text) pairs: tells two photo lists apart."""
  digest = hashlib.sha256()
  for image_id, name in sorted((image.image_id, str(image.landmark_id)) for image in images):
    digest.update(f"{image_id}\t{name}\n".encode())
  return digest.hexdigest()


def prepare_labelled_photos(
  csv_path: str | os.PathLike,
  output_dir: str | os.PathLike,
  images_dir: str | os.PathLike | None = None,
  label_column: str = "label",
  num_shards: int = 16,
  validation_share: float = 0.2,
  seed: int = 0,
  min_images_per_label: int = 2,
  log: Callable[[str], None] = print,
  holdout_labels: int = 0,
) -> list[tuple[pathlib.Path, str]]:
  """The whole preparation (see the module docstring); returns the skipped unreadable photos.

  num_shards: training shards (validation: a quarter as many, at least 1).
  holdout_labels: this many labels go wholly to validation, so that validation measures
  landmarks the training never saw; a seeded choice among the labels with at least the
  mean number of photos (a held-out landmark is a set of retrieval queries, so it needs
  photos).
  """
  if min_images_per_label < 1:
    raise GldDataError(f"min_images_per_label must be at least 1, got {min_images_per_label}")
  rows = read_labelled_csv(csv_path, images_dir, label_column)
  counts = collections.Counter(label for _, _, label in rows.photos)
  left_out = {name: n for name, n in sorted(counts.items()) if n < min_images_per_label}
  kept = sorted(name for name in counts if name not in left_out)
  if not kept:
    raise GldDataError(
      f"{csv_path}: no label has {min_images_per_label} or more photos "
      f"({len(rows.photos)} labelled photos, {rows.unlabelled} rows without a label)"
    )
  index = {name: label for label, name in enumerate(kept)}
  rng = np.random.default_rng(seed)
  mean_count = np.mean([counts[name] for name in kept])
  candidates = [name for name in kept if counts[name] >= mean_count]
  if not 0 <= holdout_labels <= min(len(candidates), len(kept) - 1):
    raise GldDataError(
      f"holdout_labels must be in [0, {min(len(candidates), len(kept) - 1)}] for {len(kept)} "
      f"labels ({len(candidates)} with the mean number of photos or more), got {holdout_labels}"
    )
  held = sorted(candidates[i] for i in rng.permutation(len(candidates))[:holdout_labels])
  images = [
    TrainImage(image_id, path, name, index[name])
    for image_id, path, name in rows.photos
    if name in index
  ]
  if rows.unlabelled:
    log(f"{rows.unlabelled} rows without a label skipped")
  if left_out:
    listed = ", ".join(f"{name} ({n})" for name, n in list(left_out.items())[:10])
    more = f", ... (all {len(left_out)} in split.json)" if len(left_out) > 10 else ""
    log(
      f"{len(left_out)} labels with fewer than {min_images_per_label} photos left out: "
      f"{listed}{more}"
    )
  details = {
    "source": "labelled_photos",
    "label_column": label_column,
    "min_images_per_label": min_images_per_label,
    "left_out_labels": left_out,
    "unlabelled_rows": rows.unlabelled,
    "photo_list_sha256": photo_list_digest(images),
  }
  if held:
    details["holdout_labels"] = held
  return write_training_data(
    images,
    output_dir,
    num_shards,
    validation_share,
    seed,
    log,
    label_map_header=("name", "label"),
    split_details=details,
    shuffle=True,
    holdout=frozenset(index[name] for name in held),
  )
