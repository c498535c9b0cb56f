"""Collecting raw (pre-PCA) descriptors of images to learn a PCA from."""

from __future__ import annotations

import copy
import pathlib

import numpy as np

from delf_ret.config import DelfConfig
from delf_ret.extract.extractor import DelfExtractor, ImageTooSmallError
from delf_ret.extract.selection import SelectedFeatures
from delf_ret.images import ImageReadError
from delf_ret.extract.pca import PcaError, l2_normalize


def without_pca(config: DelfConfig) -> DelfConfig:
  """A copy of ``config`` with use_pca off (raw 1024-d descriptors)."""
  raw_config = copy.deepcopy(config)
  raw_config.delf_local_config.use_pca = False
  return raw_config


def extract_raw_features(extractor: DelfExtractor, image_paths: list[pathlib.Path],
                         log=print) -> tuple[dict[pathlib.Path, SelectedFeatures], list[str]]:
  """Raw selected features per readable image, and one reason line per failed image."""
  raw, failures = {}, []
  for i, path in enumerate(image_paths, 1):
    try:
      raw[path] = extractor.extract_raw_file(path)
    except (ImageReadError, ImageTooSmallError) as error:
      failures.append(str(error))
      log(f"[{i}/{len(image_paths)}] ERROR {error}")
      continue
    log(f"[{i}/{len(image_paths)}] {path.name}: {raw[path].descriptors.shape[0]} raw features")
  return raw, failures


def stack_normalized(raw: dict[pathlib.Path, SelectedFeatures]) -> np.ndarray:
  """All raw descriptors, L2-normalised, as float32 [N, 1024]."""
  rows = [features.descriptors for features in raw.values() if features.descriptors.shape[0]]
  if not rows:
    raise PcaError("no descriptors were extracted: lower score_threshold or add images")
  return l2_normalize(np.concatenate(rows))
