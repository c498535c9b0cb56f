"""The default DELF model shipped inside the package (see MODEL_CARD.md in this folder).

``delf_config.pbtxt`` here is a complete extraction and retrieval config: its
``model_path`` and PCA paths are files of this folder (resolved against it when
the config is loaded), so the default model needs no network and no file
outside the installed package.
"""

from __future__ import annotations

import importlib.resources
import pathlib

CONFIG_FILE = "delf_config.pbtxt"
WEIGHTS_FILE = "delf_default.npz"
PCA_FILES = ("pca_mean.npy", "pca_projection.npy", "pca_variances.npy")


def default_model_dir() -> pathlib.Path:
  """The folder of the shipped default model (weights, PCA, config, model card)."""
  return pathlib.Path(str(importlib.resources.files(__name__)))


def default_config_path() -> pathlib.Path:
  """The packaged config of the default model; tools use it when no --config_path is given."""
  return default_model_dir() / CONFIG_FILE
