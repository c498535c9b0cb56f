"""The package's error base class.

Every error delf-ret raises for input it cannot use (a missing, corrupt or
inconsistent file, an invalid setting) derives from :class:`DelfRetError`, and
its message names the file or setting and the reason. A command-line tool
catches this one type (see delf_ret.cli.common) and prints ``error: <message>``;
anything else is a bug and keeps its traceback.

The subclasses live beside the code that raises them: ConfigError
(delf_ret.config), ImageReadError (delf_ret.images), FeatureFileError
(delf_ret.features), ImageTooSmallError and ImageTooLargeError (delf_ret.extract.extractor), PcaError
(delf_ret.extract.pca), BackboneWeightsError (delf_ret.model), CompactWeightsError
(delf_ret.model.compact), LocalIndexError and IndexBusyError (delf_ret.index), GroundTruthError
(delf_ret.evaluation.ground_truth), RankingError (delf_ret.evaluation.metrics),
DownloadError (delf_ret.datasets.download), GldDataError (delf_ret.train.gldv2),
TrainingDataError (delf_ret.train.photos), RecipeError (delf_ret.train.recipe),
TrainingError (delf_ret.train.trainer).
Those raised in several modules live here: InputError, and ModelFileError (the
.keras, .npz and SavedModel readers).
"""

from __future__ import annotations

import pathlib


class DelfRetError(Exception):
  """Base class of every error the package raises for unusable input."""


class InputError(DelfRetError):
  """The input images (a folder, a list file, their names, a crop box) cannot be used."""


class ModelFileError(DelfRetError):
  """A DELF model file is missing, not a .keras file, unreadable or not a DELF model."""


def read_utf8_text(path: pathlib.Path, error: type[DelfRetError], name: str) -> str:
  """The UTF-8 text of ``path``; ``error`` with ``name`` (how the file is named in the
  message, e.g. "config my.pbtxt") when it cannot be read or is not text."""
  try:
    return path.read_text(encoding="utf-8")
  except UnicodeDecodeError as reason:
    raise error(f"{name}: not a UTF-8 text file ({reason.reason} at byte {reason.start})") from None
  except OSError as reason:
    raise error(f"{name}: cannot read ({reason.strerror or reason})") from None
