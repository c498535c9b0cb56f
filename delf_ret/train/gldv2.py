"""Google Landmarks v2 (clean) training data: the published layout -> sharded TFRecord files.

Published layout: ``train_clean.csv`` with columns ``landmark_id,images``
(``images``: space-separated image ids) and the images at
``train/<id[0]>/<id[1]>/<id[2]>/<id>.jpg``.

Written to the output folder:
  train-SSSSS-of-NNNNN.tfrecord, validation-SSSSS-of-MMMMM.tfrecord
      tf.train.Example records: image/encoded (JPEG bytes), image/id,
      image/class/label (contiguous 0-based), image/height, image/width;
  label_map.csv   landmark_id,label (labels in increasing landmark id order);
  split.json      the seed, the validation share and the image counts.
The split is stratified per landmark (seeded; landmarks with one image stay in
train). Every shard is written to a temporary file and renamed, so a rerun
keeps finished shards and writes only the missing ones. Unreadable images are
reported and skipped. ``write_training_data`` (the split and the files above from
a list of labelled images) is shared with delf_ret.train.labelled (your own photos).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import time
from typing import Callable

import numpy as np
from PIL import Image

from delf_ret.atomic import atomic_write
from delf_ret.errors import DelfRetError

LABEL_MAP_FILE = "label_map.csv"
SPLIT_FILE = "split.json"


class GldDataError(DelfRetError):
  """Training data to shard (the GLDv2 files, a labelled-photo CSV) is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class TrainImage:
  """One training image: id, path, original landmark id and contiguous label.

  landmark_id: GLDv2's landmark id, or the label text of a labelled-photo CSV.
  """

  image_id: str
  path: pathlib.Path
  landmark_id: int | str
  label: int


def image_path(train_dir: pathlib.Path, image_id: str) -> pathlib.Path:
  """``train/a/b/c/<id>.jpg`` of the published layout."""
  if len(image_id) < 3:
    raise GldDataError(f"image id {image_id!r} is shorter than 3 characters")
  return train_dir / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def read_train_csv(csv_path: str | os.PathLike, train_dir: str | os.PathLike) -> list[TrainImage]:
  """Images of ``train_clean.csv`` with labels remapped to 0..K-1 by increasing landmark id."""
  csv_path, train_dir = pathlib.Path(csv_path), pathlib.Path(train_dir)
  if not csv_path.is_file():
    raise GldDataError(f"CSV not found: {csv_path}")
  with open(csv_path, newline="") as handle:
    reader = csv.DictReader(handle)
    if not reader.fieldnames or not {"landmark_id", "images"} <= set(reader.fieldnames):
      raise GldDataError(f"{csv_path}: expected the columns landmark_id,images")
    rows = []
    for line, row in enumerate(reader, 2):
      try:
        landmark = int(row["landmark_id"])
      except (TypeError, ValueError):
        raise GldDataError(
          f"{csv_path}:{line}: landmark_id {row['landmark_id']!r} is not an integer"
        ) from None
      rows.append((landmark, (row["images"] or "").split()))
  labels = {landmark: label for label, landmark in enumerate(sorted({l for l, _ in rows}))}
  images = [
    TrainImage(image_id, image_path(train_dir, image_id), landmark, labels[landmark])
    for landmark, ids in rows
    for image_id in ids
  ]
  if not images:
    raise GldDataError(f"{csv_path} lists no images")
  return images


def stratified_split(
  images: list[TrainImage],
  validation_share: float = 0.2,
  seed: int = 0,
  holdout: frozenset[int] = frozenset(),
) -> tuple[list[TrainImage], list[TrainImage]]:
  """(train, validation): per landmark, round(share * n) images (seeded) go to validation.

  A landmark keeps at least one training image, except the labels of ``holdout``: all
  their images go to validation (landmarks training never sees). A share of 1 sends every
  image to validation (a set to validate models on; no training images).
  """
  if not 0.0 <= validation_share <= 1.0:
    raise GldDataError(f"validation share must be in [0, 1], got {validation_share}")
  rng = np.random.default_rng(seed)
  by_label: dict[int, list[TrainImage]] = {}
  for image in images:
    by_label.setdefault(image.label, []).append(image)
  train, validation = [], []
  for label in sorted(by_label):
    members = by_label[label]
    order = rng.permutation(len(members))
    count = min(int(round(validation_share * len(members))), len(members) - 1)
    if label in holdout or validation_share == 1.0:
      count = len(members)
    validation += [members[i] for i in order[:count]]
    train += [members[i] for i in order[count:]]
  return train, validation


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def encode_example(image: TrainImage) -> bytes:
  """A serialised tf.train.Example; raises OSError/ValueError for an unreadable image.

  JPEG files are stored as they are (after a full decode check); other formats
  are converted to RGB JPEG (quality 95).
  """
  import tensorflow as tf

  data = image.path.read_bytes()
  with Image.open(image.path) as decoded:
    decoded.load()
    width, height = decoded.size
    if decoded.format != "JPEG" or decoded.mode != "RGB":
      buffer = io.BytesIO()
      decoded.convert("RGB").save(buffer, format="JPEG", quality=95)
      data = buffer.getvalue()
  feature = {
    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
    "image/id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.image_id.encode()])),
    "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.label])),
    "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[height])),
    "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[width])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(
  images: list[TrainImage],
  output_dir: pathlib.Path,
  split: str,
  num_shards: int,
  log: Callable[[str], None] = print,
) -> list[tuple[pathlib.Path, str]]:
  """Writes the images round-robin into ``num_shards`` shards; skips finished shards.

  Returns (path, reason) of each skipped unreadable image, including those of
  shards finished by an earlier run (each shard records its skipped images in
  ``<shard>.skipped.json``).
  """
  import tensorflow as tf

  failures = []
  start = time.time()
  for shard in range(num_shards):
    target = output_dir / shard_name(split, shard, num_shards)
    skipped_record = target.with_name(f"{target.name}.skipped.json")
    if target.exists():
      earlier = []
      if skipped_record.is_file():
        try:
          earlier = [
            (pathlib.Path(path), reason) for path, reason in json.loads(skipped_record.read_text())
          ]
        except (ValueError, TypeError):
          log(f"warning: {skipped_record} is unreadable; its skipped images are not listed")
      failures += earlier
      log(
        f"{target.name}: exists, kept"
        + (f" ({len(earlier)} images skipped when it was written)" if earlier else "")
      )
      continue
    members = images[shard::num_shards]
    failed_before = len(failures)
    tmp = target.with_name(f".{target.name}.tmp")
    written = 0
    with tf.io.TFRecordWriter(str(tmp)) as writer:
      for image in members:
        try:
          writer.write(encode_example(image))
          written += 1
        except (OSError, ValueError, Image.DecompressionBombError) as error:
          reason = str(error) if str(image.path) in str(error) else f"{image.path}: {error}"
          failures.append((image.path, reason))
          log(f"ERROR {reason} (skipped)")
    with open(tmp, "rb") as handle:
      os.fsync(handle.fileno())
    with atomic_write(skipped_record, "w") as handle:  # A resumed run lists them again.
      json.dump([(str(path), reason) for path, reason in failures[failed_before:]], handle)
    os.replace(tmp, target)
    log(f"{target.name}: {written} images [{time.time() - start:.0f} s]")
  return failures


def write_training_data(
  images: list[TrainImage],
  output_dir: str | os.PathLike,
  num_shards: int,
  validation_share: float,
  seed: int,
  log: Callable[[str], None] = print,
  label_map_header: tuple[str, str] = ("landmark_id", "label"),
  split_details: dict | None = None,
  shuffle: bool = False,
  holdout: frozenset[int] = frozenset(),
) -> list[tuple[pathlib.Path, str]]:
  """Splits ``images``, writes their shards, ``label_map.csv`` and ``split.json``.

  Returns (path, reason) of each skipped unreadable image. ``split_details`` are
  added to ``split.json``; a folder whose ``split.json`` differs is refused, so
  a rerun resumes only with the same inputs and settings. ``shuffle``: each
  split's images are written in a seeded random order (else label by label).
  ``holdout``: labels whose images all go to validation (see :func:`stratified_split`).
  """
  if num_shards <= 0:
    raise GldDataError(f"num_shards must be positive, got {num_shards}")
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  train, validation = stratified_split(images, validation_share, seed, holdout)
  if shuffle:
    rng = np.random.default_rng([seed, 1])
    train = [train[i] for i in rng.permutation(len(train))]
    validation = [validation[i] for i in rng.permutation(len(validation))]
  split_info = {
    "seed": seed,
    "validation_share": validation_share,
    "num_shards": num_shards,
    "train_images": len(train),
    "validation_images": len(validation),
    "num_classes": len({image.label for image in images}),
    **(split_details or {}),
  }
  split_path = output_dir / SPLIT_FILE
  if split_path.exists() and json.loads(split_path.read_text()) != split_info:
    raise GldDataError(
      f"{output_dir} holds shards of another split ({split_path}); use an "
      f"empty folder or the same settings"
    )
  with atomic_write(output_dir / LABEL_MAP_FILE, "w") as handle:
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(label_map_header)
    name_of = {image.label: image.landmark_id for image in images}
    writer.writerows((name_of[label], label) for label in sorted(name_of))
  with atomic_write(split_path, "w") as handle:
    json.dump(split_info, handle, indent=2)
  log(
    f"{len(images)} images of {split_info['num_classes']} classes: {len(train)} train, "
    f"{len(validation)} validation"
  )
  validation_shards = max(1, num_shards // 4) if validation else 0
  failures = write_shards(train, output_dir, "train", num_shards, log) if train else []
  if validation_shards:
    failures += write_shards(validation, output_dir, "validation", validation_shards, log)
  return failures


def prepare_gldv2(
  csv_path: str | os.PathLike,
  train_dir: str | os.PathLike,
  output_dir: str | os.PathLike,
  num_shards: int = 128,
  validation_share: float = 0.2,
  seed: int = 0,
  log: Callable[[str], None] = print,
) -> list[tuple[pathlib.Path, str]]:
  """The whole preparation (see the module docstring); returns the skipped images."""
  images = read_train_csv(csv_path, train_dir)
  return write_training_data(images, output_dir, num_shards, validation_share, seed, log)


def read_label_map(output_dir: str | os.PathLike) -> dict[int, int]:
  """landmark id -> label, from ``label_map.csv``."""
  path = pathlib.Path(output_dir) / LABEL_MAP_FILE
  if not path.is_file():
    raise GldDataError(f"label map not found: {path}")
  with open(path, newline="") as handle:
    return {int(row["landmark_id"]): int(row["label"]) for row in csv.DictReader(handle)}
