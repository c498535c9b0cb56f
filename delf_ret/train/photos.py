"""The photos of the self-supervised stage: listed, loaded, and scikit-image's (no TensorFlow)."""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

from delf_ret.errors import DelfRetError
from delf_ret.images import IMAGE_SUFFIXES
from delf_ret.images import ImageReadError
from delf_ret.images import load_image
from delf_ret.images import read_image_list
from delf_ret.images import shrink_to_max_side

# Natural photos that ship inside scikit-image and load without a network.
SKIMAGE_PHOTOS = (
  "astronaut",
  "coffee",
  "chelsea",
  "rocket",
  "camera",
  "coins",
  "moon",
  "brick",
  "grass",
  "gravel",
)


class TrainingDataError(DelfRetError):
  """The training photos cannot be read or are too few."""


def list_training_photos(source: str | os.PathLike) -> list[pathlib.Path]:
  """Photo paths of a folder (searched recursively, sorted) or a list file.

  A list file holds one path per line, relative to the list file's folder
  unless absolute (delf_ret.images.read_image_list). Raises TrainingDataError
  for a missing source or a folder without photos.
  """
  source = pathlib.Path(source)
  if source.is_file():
    return read_image_list(source)
  if not source.is_dir():
    raise TrainingDataError(f"{source}: training photos not found (a folder or a list file)")
  paths = sorted(
    p
    for p in source.rglob("*")
    if p.is_file()
    and p.suffix.lower() in IMAGE_SUFFIXES
    and not any(part.startswith(".") for part in p.relative_to(source).parts)
  )
  if not paths:
    raise TrainingDataError(f"{source}: no photos found")
  return paths


def load_training_photos(
  paths: Sequence[pathlib.Path], max_side: int, min_side: int
) -> tuple[list[np.ndarray], list[pathlib.Path], list[str]]:
  """Loads photos (RGB uint8 [H, W, 3], longer side <= max_side pixels); skips unreadable ones
  and those whose shorter side is under min_side pixels.

  Returns (photos, their paths, one error line per skipped file).
  """
  photos, kept, skipped = [], [], []
  for path in paths:
    try:
      image, _ = shrink_to_max_side(load_image(path), max_side)
    except ImageReadError as error:
      skipped.append(str(error))
      continue
    if min(image.shape[:2]) < min_side:
      skipped.append(f"{path}: {image.shape[1]}x{image.shape[0]} is smaller than {min_side} px")
      continue
    photos.append(np.ascontiguousarray(image))
    kept.append(pathlib.Path(path))
  return photos, kept, skipped


def skimage_photos(max_side: int) -> list[np.ndarray]:
  """The natural photos bundled with scikit-image (no network), as RGB uint8 [H, W, 3] with
  their longer side at most max_side pixels."""
  # Lazy: scikit-image (1-3 s to import, an extra), only for its sample photos.
  try:
    import skimage.data
  except ImportError:
    raise TrainingDataError(
      "selfsup.use_skimage_photos needs scikit-image, which is not installed: "
      "pip install 'delf-ret[skimage]' (or set selfsup.use_skimage_photos=false)"
    ) from None

  photos = []
  for name in SKIMAGE_PHOTOS:
    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=2)
    photos.append(
      shrink_to_max_side(np.ascontiguousarray(image[..., :3].astype(np.uint8)), max_side)[0]
    )
  return photos
