"""Turning command-line inputs (a folder, read recursively or not, or a list file) into image
paths."""

from __future__ import annotations

import os
import pathlib

from absl import app
from absl import flags

from delf_ret.errors import InputError
from delf_ret.features import image_id_of
from delf_ret.images import IMAGE_SUFFIXES
from delf_ret.images import list_images
from delf_ret.images import read_image_list

FLAGS = flags.FLAGS
# Flags defined here belong to the tool that asks for them (and show in its --help).
flags.disclaim_key_flags()


def define_image_flags(what: str = "images") -> None:
  """Defines --images_dir, --recursive and --list_images_path (exactly one of --images_dir and
  --list_images_path is given; see image_paths_from_flags)."""
  flags.DEFINE_string(
    "images_dir",
    None,
    f"Folder of {what}: its image files only, not those in sub-folders (see --recursive).",
  )
  flags.DEFINE_boolean(
    "recursive",
    False,
    "Read --images_dir's sub-folders too, at any depth (in sorted order of their paths). "
    "Image ids are file names without the suffix, so two images of one name in different "
    "sub-folders are refused. Default: not recursive.",
  )
  flags.DEFINE_string(
    "list_images_path",
    None,
    f"Text file with one path per line of {what}. Relative paths are "
    f"relative to the list file's folder; a path found only relative to the "
    f"working directory (the official DELF tools' reading) is used too.",
  )


def image_paths_from_flags() -> list[pathlib.Path]:
  """The image paths named by --images_dir (with --recursive) or --list_images_path."""
  return resolve_image_inputs(FLAGS.images_dir, FLAGS.list_images_path, FLAGS.recursive)


def query_inputs_from_flags(image: str | None) -> tuple[list[pathlib.Path], bool]:
  """(query image paths, whether there are many) from a tool's --image (one query) or
  --images_dir / --list_images_path (many); app.UsageError unless exactly one way is given.
  For --image the list is that one path, unread."""
  many = bool(FLAGS.images_dir or FLAGS.list_images_path)
  if many == bool(image):
    raise app.UsageError("give --image, or --images_dir or --list_images_path for many queries")
  if not many:
    assert image  # Given (checked above).
    return [pathlib.Path(image)], False
  return image_paths_from_flags(), True


def resolve_image_inputs(
  images_dir: str | None, list_images_path: str | None, recursive: bool = False
) -> list[pathlib.Path]:
  """Image paths from exactly one of a folder (``recursive``: and its sub-folders) or a list
  file."""
  if bool(images_dir) == bool(list_images_path):
    raise InputError("give exactly one of --images_dir and --list_images_path")
  if list_images_path:
    if recursive:
      raise InputError("--recursive reads --images_dir; it does not apply to --list_images_path")
    return read_image_list(list_images_path)
  assert images_dir  # Exactly one of the two is given (checked above).
  try:
    paths = list_images_recursively(images_dir) if recursive else list_images(images_dir)
  except FileNotFoundError as error:
    raise InputError(str(error)) from None
  if not paths:
    below = " or its sub-folders" if recursive else " (not recursive: see --recursive)"
    raise InputError(f"no image files in {images_dir}{below}")
  return paths


def list_images_recursively(folder: str | os.PathLike) -> list[pathlib.Path]:
  """Image files (by suffix, case-insensitive) in ``folder`` and its sub-folders at any depth.

  Sorted by their path relative to ``folder`` (the same order on every machine);
  symbolic links to folders are not followed. Raises FileNotFoundError when
  ``folder`` is not a folder, InputError when two images have one image id.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: not a folder")
  relative = []
  for root, _, files in os.walk(folder):
    for name in files:
      path = pathlib.Path(root, name)
      if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        relative.append(path.relative_to(folder).as_posix())
  paths = [folder / name for name in sorted(relative)]
  seen: dict[str, pathlib.Path] = {}
  for path in paths:
    image_id = image_id_of(path)
    if image_id in seen:
      raise InputError(
        f"{seen[image_id]} and {path} have one image id {image_id!r} (ids are file names "
        f"without the suffix); rename one or read the sub-folders separately"
      )
    seen[image_id] = path
  return paths
