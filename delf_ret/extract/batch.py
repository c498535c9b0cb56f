"""Extracting many images into feature files, resumably (one .delf file per image)."""

from __future__ import annotations

import pathlib
import time
from typing import Callable

from delf_ret.extract.extractor import DelfExtractor, ImageTooSmallError
from delf_ret.features import feature_file_names, write_features
from delf_ret.images import ImageReadError


def extract_all(extractor: DelfExtractor, image_paths: list[pathlib.Path],
                output_dir: pathlib.Path,
                log: Callable[[str], None] = print) -> list[tuple[pathlib.Path, str]]:
  """Writes OUTPUT_DIR/<image stem>.delf for every image whose file is missing.

  Files are written atomically, so a rerun after an interruption skips the
  finished images. Unreadable or too small images are logged and skipped.
  Returns (path, reason) of each failed image.
  """
  output_dir.mkdir(parents=True, exist_ok=True)
  names = feature_file_names(image_paths)
  failures = []
  total = len(image_paths)
  start = time.time()
  done = 0
  for i, (path, name) in enumerate(zip(image_paths, names), 1):
    target = output_dir / name
    if target.exists():
      log(f"[{i}/{total}] {path.name}: skipped, {target} exists")
      continue
    try:
      features = extractor.extract_file(path)
    except (ImageReadError, ImageTooSmallError) as error:
      reason = str(error)
      log(f"[{i}/{total}] ERROR {reason}")
      failures.append((path, reason))
      continue
    write_features(target, features)
    done += 1
    rate = (time.time() - start) / done
    log(f"[{i}/{total}] {path.name}: {features.num_features} features "
        f"(dim {features.descriptor_dim}) -> {target} [{rate:.2f} s/image]")
  return failures
