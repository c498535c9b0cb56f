"""Extracting many images into feature files, resumably (one .delf file per image)."""

from __future__ import annotations

import errno
import pathlib
import tempfile
import time
from typing import Callable

from delf_ret.atomic import remove_leftovers
from delf_ret.errors import InputError
from delf_ret.extract.extractor import DelfExtractor
from delf_ret.extract.extractor import ImageTooLargeError
from delf_ret.extract.extractor import ImageTooSmallError
from delf_ret.extract.settings import check_feature_folder
from delf_ret.extract.settings import extraction_settings
from delf_ret.features import feature_file_names
from delf_ret.features import write_features
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


def extract_all(
  extractor: DelfExtractor,
  image_paths: list[pathlib.Path],
  output_dir: pathlib.Path,
  log: Callable[[str], None] = print,
  overwrite: bool = False,
) -> list[tuple[pathlib.Path, str]]:
  """Writes OUTPUT_DIR/<image stem>.delf for every image whose file is missing.

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
    try:
      finished = target.exists()
    except OSError as error:  # E.g. a file name too long for the file system.
      reason = f"{path}: cannot write {target.name}: {error.strerror or error}"
      log(f"[{i}/{total}] ERROR {reason}")
      failures.append((path, reason))
      continue
    if finished:
      log(f"[{i}/{total}] {path.name}: skipped, {target} exists")
      continue
    try:
      features = extractor.extract_file(path)
    except (ImageReadError, ImageTooSmallError, ImageTooLargeError) as error:
      reason = str(error)
      log(f"[{i}/{total}] ERROR {reason}")
      failures.append((path, reason))
      continue
    try:
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
    log(
      f"[{i}/{total}] {path.name}: {features.num_features} features "
      f"(dim {features.descriptor_dim}) -> {target} [{rate:.2f} s/image]"
    )
  return failures
