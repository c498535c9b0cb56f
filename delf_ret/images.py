"""Reading images from disk into RGB uint8 arrays, the same way every time; image operations
(shrinking, cropping to a query box) shared by the stages.

Every input mode is converted by one rule:
* EXIF orientation is applied first (the array is what a viewer shows);
* 16-bit and 32-bit integer images are rescaled to 8 bits (value / 257 for
  16-bit, clipped to [0, 65535] first for 32-bit); float images are taken to be
  in [0, 1];
* grayscale is replicated to three channels; palette and CMYK images go through
  Pillow's RGB conversion;
* an alpha channel is composited over white (transparent pixels become white).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import warnings
from typing import Iterator

import cv2
import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from delf_ret.errors import DelfRetError
from delf_ret.errors import InputError
from delf_ret.errors import read_utf8_text
from delf_ret.protos.delf_config_pb2 import DelfConfig


class ImageReadError(DelfRetError):
  """An image file could not be read; the message names the file and the reason."""


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
  """Reads an image file as RGB.

  Args:
    path: image file (any format Pillow reads).
    max_pixels: larger images are rejected before decoding; None: the config
      default (DelfConfig.max_image_pixels).

  Returns:
    uint8 array [H, W, 3].

  Raises:
    ImageReadError: missing, empty, truncated, corrupt, not an image, too many
      pixels, or zero-sized.
  """
  path = pathlib.Path(path)
  if max_pixels is None:
    max_pixels = DelfConfig().max_image_pixels
  if not path.exists():
    raise ImageReadError(f"{path}: file not found")
  if path.is_dir():
    raise ImageReadError(f"{path}: is a folder, not an image file")
  if path.stat().st_size == 0:
    raise ImageReadError(f"{path}: file is empty (0 bytes)")
  try:
    with _without_bomb_warning(), Image.open(path) as image:
      width, height = image.size
      if width * height > max_pixels:
        raise ImageReadError(
          f"{path}: image too large ({width}x{height} = {width * height} pixels, "
          f"limit {max_pixels})"
        )
      image.load()
      return _to_rgb_array(ImageOps.exif_transpose(image))
  except ImageReadError:
    raise
  except UnidentifiedImageError:
    raise ImageReadError(f"{path}: not an image file (format not recognised)") from None
  except Image.DecompressionBombError as error:
    raise ImageReadError(f"{path}: image too large ({error})") from None
  except (OSError, SyntaxError, ValueError) as error:
    reason = str(error) or type(error).__name__
    if "truncated" in reason.lower():
      reason = f"truncated file ({reason})"
    raise ImageReadError(f"{path}: corrupt or unreadable image: {reason}") from None


@contextlib.contextmanager
def _without_bomb_warning() -> Iterator[None]:
  """Pillow's DecompressionBombWarning off for the block: load_image's own pixel limit refuses
  such images with its clearer error (or, under a larger limit, reads them as asked)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    yield


def _to_rgb_array(image: Image.Image) -> np.ndarray:
  """Converts a decoded Pillow image to uint8 [H, W, 3] by the module's rule."""
  if image.width == 0 or image.height == 0:
    raise ImageReadError(f"image has zero size ({image.width}x{image.height})")
  mode = image.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    values = np.asarray(image, dtype=np.float64)
    gray = np.clip(values, 0, 65535) / 257.0
    return _gray_to_rgb(np.round(gray).astype(np.uint8))
  if mode == "F":
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    return _gray_to_rgb(np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8))
  if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
  if mode == "L":
    return _gray_to_rgb(np.asarray(image, dtype=np.uint8))
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
  return np.repeat(gray[:, :, None], 3, axis=2)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image_list(list_path: str | os.PathLike) -> list[pathlib.Path]:
  """Paths in a text file, one per line; blank lines and '#' comments are skipped.

  A relative path is taken relative to the list file's folder; where no file
  is there but one is relative to the working directory (how the official
  DELF tools read their lists), that one is used. Raises InputError for a
  missing or unreadable list, one that is not UTF-8 text, or one that names no image.
  """
  list_path = pathlib.Path(list_path)
  if not list_path.is_file():
    raise InputError(f"image list not found: {list_path}")
  paths = []
  for line in read_utf8_text(list_path, InputError, f"image list {list_path}").splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
      path = pathlib.Path(line)
      if not path.is_absolute():
        beside_list = list_path.parent / path
        path = path if not beside_list.exists() and path.exists() else beside_list
      paths.append(path)
  if not paths:
    raise InputError(f"image list {list_path} names no images")
  return paths


def shrink_to_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
  """An image [H, W, C] shrunk (area filter) so its longer side is at most ``max_side`` pixels.

  Returns (image, factor applied); images already small enough come back as
  they are with factor 1.
  """
  height, width = image.shape[:2]
  factor = max_side / max(height, width)
  if factor >= 1.0:
    return image, 1.0
  size = (max(1, round(width * factor)), max(1, round(height * factor)))
  return cv2.resize(image, size, interpolation=cv2.INTER_AREA), factor


def crop_to_box(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
  """Crops [H, W, 3] to the query box (x1, y1, x2, y2) in pixels, as the official code does.

  Each coordinate is rounded to the nearest integer (Python's round, halves to
  even), then rows y1..y2-1 and columns x1..x2-1 are kept: the crop of the
  official DELF/DELG query extraction (``int(round(b))`` then a PIL crop,
  whose right and lower edges are exclusive). Unlike PIL, parts of a box
  outside the image are clipped instead of padded with black.
  """
  x1, y1, x2, y2 = (int(round(float(v))) for v in box)
  height, width = image.shape[:2]
  left, top, right, bottom = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
  if right <= left or bottom <= top:
    raise InputError(f"query box {tuple(box)} is empty inside a {width}x{height} image")
  return image[top:bottom, left:right]


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
  """Image files (by suffix, case-insensitive) directly inside ``folder``, sorted."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: not a folder")
  return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
