"""Reading the labels of indexed images from a CSV file (``build_index --labels_csv``).

The file has one ``image,label`` row per image: ``image`` names the image file
(``photos/sacre_coeur_1.jpg``) or its id, and it is matched to the index the
way images are everywhere (its id is the file stem, delf_ret.features.image_id_of);
an empty ``label`` marks an unlabelled image (a distractor), like
``delf_ret/demo_data/labels.csv``. A first row whose image column reads
``image`` is a header and skipped; blank lines are skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from typing import Container

from delf_ret.errors import read_utf8_text
from delf_ret.features import image_id_of
from delf_ret.index.errors import LocalIndexError
from delf_ret.index.local_index import check_record


class LabelsFileError(LocalIndexError):
  """A labels file is missing, malformed, or names an image that is not indexed."""


@dataclasses.dataclass(frozen=True)
class ImageLabels:
  """The labels of a labels file.

  path: the file; labels: image id -> label ("" for an unlabelled image), in file
  order; rows: image id -> its row number in the file (1 = the first line).
  """

  path: pathlib.Path
  labels: dict[str, str]
  rows: dict[str, int]

  def check_known(self, known: Container[str]) -> None:
    """LabelsFileError naming the file and row of the first image not in ``known``."""
    for image_id, label in self.labels.items():
      if image_id not in known:
        raise LabelsFileError(
          f"{self.path}: row {self.rows[image_id]} names image {image_id!r}, which is neither "
          f"indexed nor among the images to index"
        )


def read_image_labels(csv_path: str | os.PathLike) -> ImageLabels:
  """Reads an ``image,label`` CSV file (see the module docstring).

  Raises LabelsFileError naming the file (and the row) when it cannot be read, a
  row does not have two fields, its image is empty, an image is listed twice,
  a label is unusable (over MAX_LABEL_CHARS characters, a NUL), or it lists no image.
  """
  path = pathlib.Path(csv_path)
  # A byte order mark (spreadsheets write one in "CSV UTF-8") is not part of the first image.
  text = read_utf8_text(path, LabelsFileError, f"labels file {path}").removeprefix("\ufeff")
  labels: dict[str, str] = {}
  rows: dict[str, int] = {}
  first = True
  try:
    # Each row is one line: csv's line numbers then count the lines read so far.
    reader = csv.reader(text.splitlines(), strict=True)
    for fields in reader:
      row = reader.line_num
      if not "".join(fields).strip():
        continue
      if len(fields) != 2:
        raise LabelsFileError(
          f"{path}: row {row} has {len(fields)} fields, expected 2 (image,label)"
        )
      image, label = (field.strip() for field in fields)
      if first and image.lower() == "image":
        first = False
        continue  # The header.
      first = False
      if not image:
        raise LabelsFileError(f"{path}: row {row} names no image")
      image_id = image_id_of(image)
      try:
        check_record(image_id, None, label or None)
      except ValueError as error:
        raise LabelsFileError(f"{path}: row {row}: {error}") from None
      if image_id in rows:
        raise LabelsFileError(
          f"{path}: row {row} lists image {image_id!r} again (first on row {rows[image_id]})"
        )
      labels[image_id], rows[image_id] = label, row
  except csv.Error as error:
    raise LabelsFileError(f"{path}: row {reader.line_num} is not CSV ({error})") from None
  if not labels:
    raise LabelsFileError(f"{path} lists no image")
  return ImageLabels(path, labels, rows)
