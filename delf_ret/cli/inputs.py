"""Turning command-line inputs (a folder or a list file) into image paths."""

from __future__ import annotations

import pathlib

from absl import flags

from delf_ret.errors import InputError
from delf_ret.images import list_images
from delf_ret.images import read_image_list

FLAGS = flags.FLAGS
# Flags defined here belong to the tool that asks for them (and show in its --help).
flags.disclaim_key_flags()


def define_image_flags(what: str = "images") -> None:
  """Defines --images_dir and --list_images_path (exactly one is given; see image_paths_from_flags)."""
  flags.DEFINE_string("images_dir", None, f"Folder of {what} (not recursive).")
  flags.DEFINE_string(
    "list_images_path",
    None,
    f"Text file with one path per line of {what}. Relative paths are "
    f"relative to the list file's folder; a path found only relative to the "
    f"working directory (the official DELF tools' reading) is used too.",
  )


def image_paths_from_flags() -> list[pathlib.Path]:
  """The image paths named by --images_dir or --list_images_path."""
  return resolve_image_inputs(FLAGS.images_dir, FLAGS.list_images_path)


def resolve_image_inputs(
  images_dir: str | None, list_images_path: str | None
) -> list[pathlib.Path]:
  """Image paths from exactly one of a folder or a list file."""
  if bool(images_dir) == bool(list_images_path):
    raise InputError("give exactly one of --images_dir and --list_images_path")
  if list_images_path:
    return read_image_list(list_images_path)
  assert images_dir  # Exactly one of the two is given (checked above).
  try:
    paths = list_images(images_dir)
  except FileNotFoundError as error:
    raise InputError(str(error)) from None
  if not paths:
    raise InputError(f"no image files in {images_dir}")
  return paths
