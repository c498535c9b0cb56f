"""Extracting many images into feature files, resumably (one .delf file per image, and a
.delg_global file beside it when global descriptors are asked for)."""

from __future__ import annotations

import errno
import pathlib
import tempfile
import time
import typing
from typing import Callable

import numpy as np

from delf_ret.atomic import remove_leftovers
from delf_ret.errors import InputError
from delf_ret.extract.extractor import DelfExtractor
from delf_ret.extract.extractor import ImageTooLargeError
from delf_ret.extract.extractor import ImageTooSmallError
from delf_ret.extract.global_features import GlobalExtraction
from delf_ret.extract.global_features import GlobalFeatureError
from delf_ret.extract.settings import check_feature_folder
from delf_ret.extract.settings import extraction_settings
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_file_names
from delf_ret.features import global_file_name
from delf_ret.features import image_id_of
from delf_ret.features import write_features
from delf_ret.features import write_global_descriptor
from delf_ret.images import ImageReadError

# Write errors that concern the output folder itself (every later write would fail too).
_LOCATION_ERRORS = (
  errno.ENOSPC,
  errno.EROFS,
  errno.EACCES,
  errno.EPERM,
  errno.EDQUOT,
  errno.ENOTDIR,
)


def prepare_output_dir(output_dir: pathlib.Path) -> None:
  """Creates ``output_dir`` and checks that files can be written into it.

  Raises InputError with one line naming the folder when it is a file, cannot
  be created, or is not writable.
  """
  if output_dir.exists() and not output_dir.is_dir():
    raise InputError(f"output folder {output_dir} is a file, not a folder")
  try:
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write_test_"):
      pass
  except OSError as error:
    raise InputError(
      f"cannot write into the output folder {output_dir}: {error.strerror or error}"
    ) from None


def _extract(
  extractor: DelfExtractor, path: pathlib.Path, with_global: bool
) -> tuple[LocalFeatures, np.ndarray | None]:
  """An image file's local features and, with ``with_global``, its global descriptor."""
  if not with_global:
    return extractor.extract_file(path), None
  return typing.cast(GlobalExtraction, extractor).extract_file_with_global(path)


def extract_all(
  extractor: DelfExtractor,
  image_paths: list[pathlib.Path],
  output_dir: pathlib.Path,
  log: Callable[[str], None] = print,
  overwrite: bool = False,
  with_global: bool = False,
) -> list[tuple[pathlib.Path, str]]:
  """Writes OUTPUT_DIR/<image stem>.delf for every image whose file is missing.

  with_global: also OUTPUT_DIR/<image stem>.delg_global (official DELG layout) from an
  ``extractor`` with ``extract_file_with_global`` (global_features.GlobalExtraction); an
  image is done when both files exist. The .delf file is the same as without.

  Files are written atomically, so a rerun after an interruption skips the
  finished images. Unreadable, too small or too large images, and feature files that
  cannot be written (e.g. a name too long for the file system), are logged and
  skipped. A folder that cannot be written into (missing rights, full or
  read-only disk) stops the run with InputError. The folder records the
  extraction settings (delf_ret.extract.settings): feature files made with
  other settings are refused, or deleted and recomputed with ``overwrite``.
  Returns (path, reason) of each failed image.
  """
  prepare_output_dir(output_dir)
  remove_leftovers(output_dir, log)
  check_feature_folder(
    output_dir,
    extraction_settings(extractor.config, getattr(extractor, "model_file", None)),
    overwrite,
    log,
  )
  names = feature_file_names(image_paths)
  failures = []
  total = len(image_paths)
  start = time.time()
  done = 0
  for i, (path, name) in enumerate(zip(image_paths, names), 1):
    target = output_dir / name
    global_target = output_dir / global_file_name(image_id_of(path)) if with_global else None
    try:
      finished = target.exists() and (global_target is None or global_target.exists())
    except OSError as error:  # E.g. a file name too long for the file system.
      reason = f"{path}: cannot write {target.name}: {error.strerror or error}"
      log(f"[{i}/{total}] ERROR {reason}")
      failures.append((path, reason))
      continue
    if finished:
      log(f"[{i}/{total}] {path.name}: skipped, {target} exists")
      continue
    try:
      features, descriptor = _extract(extractor, path, with_global)
    except (ImageReadError, ImageTooSmallError, ImageTooLargeError, GlobalFeatureError) as error:
      reason = str(error)
      log(f"[{i}/{total}] ERROR {reason}")
      failures.append((path, reason))
      continue
    try:
      if global_target is not None and descriptor is not None:
        write_global_descriptor(global_target, descriptor)
      write_features(target, features)
    except OSError as error:
      if error.errno in _LOCATION_ERRORS:
        raise InputError(
          f"cannot write {target}: {error.strerror or error}; stopped after "
          f"{done} new feature files"
        ) from None
      reason = f"{path}: cannot write {target.name}: {error.strerror or error}"
      log(f"[{i}/{total}] ERROR {reason}")
      failures.append((path, reason))
      continue
    done += 1
    rate = (time.time() - start) / done
    extra = "" if descriptor is None else f" and a {descriptor.shape[0]}-d global descriptor"
    log(
      f"[{i}/{total}] {path.name}: {features.num_features} features "
      f"(dim {features.descriptor_dim}){extra} -> {target} [{rate:.2f} s/image]"
    )
  return failures
