"""Learning the descriptor PCA from images: raw (pre-PCA) descriptors -> PCA files.

``learn_pca_from_images`` is the whole sequence the learn_pca tool, the demo
and the benchmarks run: extract raw 1024-d descriptors with the config (its
PCA settings ignored), L2-normalise and stack them, fit the PCA, write
pca_mean.npy, pca_projection.npy and pca_variances.npy. ``with_pca`` then
gives the config that extracts with the learned files.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
from typing import Callable

import numpy as np

from delf_ret import config as config_lib
from delf_ret.config import DelfConfig
from delf_ret.extract.extractor import DelfExtractor
from delf_ret.extract.extractor import ImageTooLargeError
from delf_ret.extract.extractor import ImageTooSmallError
from delf_ret.extract.pca import PcaError
from delf_ret.extract.pca import PcaModel
from delf_ret.extract.pca import l2_normalize
from delf_ret.extract.pca import learn_pca
from delf_ret.extract.pca import pca_paths
from delf_ret.extract.pca import save_pca
from delf_ret.extract.selection import SelectedFeatures
from delf_ret.images import ImageReadError


def without_pca(config: DelfConfig) -> DelfConfig:
  """A copy of ``config`` with use_pca off (raw 1024-d descriptors)."""
  raw_config = copy.deepcopy(config)
  raw_config.delf_local_config.use_pca = False
  return raw_config


def with_pca(config: DelfConfig, paths: tuple[os.PathLike, os.PathLike, os.PathLike]) -> DelfConfig:
  """A copy of ``config`` with use_pca on and the (mean, projection, variances) files ``paths``.

  pca_dim and use_whitening are kept from ``config``; the copy is validated.
  """
  pca_config = copy.deepcopy(config)
  pca_config.delf_local_config.use_pca = True
  params = pca_config.delf_local_config.pca_parameters
  mean, projection, variances = (str(path) for path in paths)
  params.mean_path, params.projection_matrix_path, params.pca_variances_path = (
    mean,
    projection,
    variances,
  )
  config_lib.validate(pca_config)
  return pca_config


def extract_raw_features(
  extractor: DelfExtractor, image_paths: list[pathlib.Path], log=print
) -> tuple[dict[pathlib.Path, SelectedFeatures], list[str]]:
  """Raw selected features per readable image, and one reason line per failed image."""
  raw, failures = {}, []
  for i, path in enumerate(image_paths, 1):
    try:
      raw[path] = extractor.extract_raw_file(path)
    except (ImageReadError, ImageTooSmallError, ImageTooLargeError) as error:
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


@dataclasses.dataclass
class LearnedPca:
  """A PCA learned from images.

  model: mean [D], projection [D, D] (rows by decreasing variance), variances [D].
  paths: the written (mean, projection, variances) .npy files.
  raw: raw selected features of each readable image (extractor.finalize
    turns them into final features without extracting again).
  failures: one reason line per image that could not be used.
  num_descriptors: how many descriptors the PCA was fitted on.
  """

  model: PcaModel
  paths: tuple[pathlib.Path, pathlib.Path, pathlib.Path]
  raw: dict[pathlib.Path, SelectedFeatures]
  failures: list[str]
  num_descriptors: int


def learn_pca_from_images(
  config: DelfConfig,
  image_paths: list[pathlib.Path],
  output_dir: str | os.PathLike,
  model=None,
  backend: str = "compiled",
  log: Callable[[str], None] = print,
) -> LearnedPca:
  """Extracts raw descriptors of the images, learns the PCA and writes its files to ``output_dir``.

  Args:
    config: extraction settings (its PCA settings are ignored).
    image_paths: images to learn from; unreadable or too small ones are
      logged, listed in ``failures`` and left out.
    output_dir: receives pca_mean.npy, pca_projection.npy, pca_variances.npy
      (each written atomically).
    model: a DelfModel to use instead of loading ``config.model_path``.
    backend: network back-end ("compiled" or "eager").
    log: one line per image.

  Raises PcaError when no descriptor could be extracted.
  """
  extractor = DelfExtractor(without_pca(config), model=model, backend=backend)
  raw, failures = extract_raw_features(extractor, image_paths, log=log)
  descriptors = stack_normalized(raw)
  pca = learn_pca(descriptors)
  paths = pca_paths(output_dir)
  save_pca(pca, *paths)
  return LearnedPca(pca, paths, raw, failures, descriptors.shape[0])
