"""What a folder of feature files was made with, so that other settings never reuse it silently.

A folder of ``.delf`` files gets ``extraction_settings.json``: the extraction
fields of the config (every field but ``retrieval_config`` and file paths) and
the SHA-256 of the model and PCA files. A later run with other settings
refuses the folder (or, asked to overwrite, deletes its feature files first).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Callable
from typing import Sequence

from google.protobuf import text_format

from delf_ret.atomic import atomic_write
from delf_ret.errors import InputError
from delf_ret.features import FEATURE_SUFFIX
from delf_ret.features import feature_file_names
from delf_ret.features import global_file_name
from delf_ret.features import image_id_of
from delf_ret.protos.delf_config_pb2 import DelfConfig

SETTINGS_FILE = "extraction_settings.json"


def _digest(path: str | os.PathLike, role: str) -> str:
  """SHA-256 of a file, or of every file of a folder (names and contents, sorted).

  role: what the file is, for the error when it is missing (InputError).
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise InputError(f"{role} file not found: {path}")
  digest = hashlib.sha256()
  files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
  for file in files:
    if path.is_dir():
      digest.update(str(file.relative_to(path)).encode())
    with open(file, "rb") as handle:
      while chunk := handle.read(1 << 20):
        digest.update(chunk)
  return digest.hexdigest()


def extraction_settings(config: DelfConfig, model_file: str | None) -> dict | None:
  """{"config": extraction fields as text, "files": {role: SHA-256}}; None if unidentifiable.

  model_file: the model the features come from (None: a model object whose
  origin is unknown, so no settings can be recorded).
  """
  if not model_file:
    return None
  settings = DelfConfig()
  settings.CopyFrom(config)
  settings.ClearField("retrieval_config")
  settings.ClearField("model_path")
  pca = settings.delf_local_config.pca_parameters
  files = {"model": _digest(model_file, "model")}
  if config.delf_local_config.use_pca:
    source = config.delf_local_config.pca_parameters
    files["pca_mean"] = _digest(source.mean_path, "PCA mean")
    files["pca_projection"] = _digest(source.projection_matrix_path, "PCA projection")
    if source.use_whitening:
      files["pca_variances"] = _digest(source.pca_variances_path, "PCA variances")
  global_pca = settings.delf_global_config.pca_parameters
  if config.use_global_features and config.delf_global_config.use_pca:
    source = config.delf_global_config.pca_parameters
    files["global_pca_mean"] = _digest(source.mean_path, "global PCA mean")
    files["global_pca_projection"] = _digest(source.projection_matrix_path, "global PCA projection")
    if source.use_whitening:
      files["global_pca_variances"] = _digest(source.pca_variances_path, "global PCA variances")
  for field in ("mean_path", "projection_matrix_path", "pca_variances_path"):
    pca.ClearField(field)
    if settings.HasField("delf_global_config"):
      global_pca.ClearField(field)
  return {"config": text_format.MessageToString(settings), "files": files}


def _differences(old: dict, new: dict) -> str:
  old_lines = set(str(old.get("config", "")).splitlines())
  new_lines = set(str(new.get("config", "")).splitlines())
  changed = sorted(line.strip() for line in old_lines ^ new_lines)
  changed += [
    f"{role} file"
    for role in sorted(set(old.get("files", {})) | set(new["files"]))
    if old.get("files", {}).get(role) != new["files"].get(role)
  ]
  return ", ".join(changed[:6]) or "unknown"


def _recorded(record: pathlib.Path) -> dict | None:
  """The settings recorded in ``record`` ({} if unreadable: not UTF-8, not JSON, or JSON that
  is not an object with a "config" text and "files" digests); None if there is no record."""
  if not record.is_file():
    return None
  try:
    recorded = json.loads(record.read_text(encoding="utf-8"))
  except (ValueError, OSError, RecursionError):  # UnicodeDecodeError and JSONDecodeError too.
    return {}
  if (
    not isinstance(recorded, dict)
    or not isinstance(recorded.get("config", ""), str)
    or not isinstance(recorded.get("files", {}), dict)
  ):
    return {}
  return recorded


def nothing_left(
  folder: str | os.PathLike, config: DelfConfig, image_paths: Sequence[pathlib.Path]
) -> bool:
  """Whether ``folder`` already holds every file extraction with ``config`` writes for
  ``image_paths`` (``<id>.delf``, and ``<id>.delg_global`` with use_global_features),
  recorded as made with the config's settings (:func:`extraction_settings`; the model file
  is hashed, not loaded), so a run can stop before it loads a model; False when
  unidentifiable. Two images with one id: InputError (features.feature_file_names)."""
  names = feature_file_names(list(image_paths))
  if config.use_global_features:
    names += [global_file_name(image_id_of(path)) for path in image_paths]
  settings = extraction_settings(config, config.model_path or None)
  folder = pathlib.Path(folder)
  if settings is None or _recorded(folder / SETTINGS_FILE) != settings:
    return False
  try:
    return all((folder / name).is_file() for name in names)
  except OSError:  # E.g. a name too long for the file system: left to the run to report.
    return False


def check_feature_folder(
  folder: str | os.PathLike,
  settings: dict | None,
  overwrite: bool,
  log: Callable[[str], None] = print,
) -> None:
  """Makes sure the feature files in ``folder`` were made with ``settings``, then records them.

  Other recorded settings: InputError naming what differs, unless ``overwrite``
  (the folder's feature files are then deleted). Feature files without a
  record are reused with a warning (or deleted with ``overwrite``).
  settings None (unidentifiable model): nothing is checked or recorded.
  """
  folder = pathlib.Path(folder)
  if settings is None:
    return
  record = folder / SETTINGS_FILE
  features = sorted(folder.glob(f"*{FEATURE_SUFFIX}")) if folder.is_dir() else []
  stale = False
  old = _recorded(record)
  if old is not None:
    if old == settings:
      return
    if features and not overwrite:
      raise InputError(
        f"{folder} holds {len(features)} feature files made with other settings "
        f"({_differences(old, settings)}); use another folder, or --overwrite to "
        f"delete and recompute them"
      )
    stale = bool(features)
  elif features:
    if not overwrite:
      log(
        f"warning: {len(features)} feature files in {folder} have no record of the settings "
        f"that made them; they are reused as they are (--overwrite recomputes them)"
      )
    stale = overwrite
  if stale:
    log(f"deleting {len(features)} feature files of other settings in {folder}")
    for path in features:
      path.unlink()
  folder.mkdir(parents=True, exist_ok=True)
  with atomic_write(record, "w") as handle:
    json.dump(settings, handle, indent=2)
    handle.write("\n")


def check_database_features(folder: str | os.PathLike, settings: dict | None) -> None:
  """Raises InputError if ``folder`` records other extraction settings than ``settings``.

  For feature files that are only read (e.g. the database features that
  reranking compares query features with).
  """
  old = _recorded(pathlib.Path(folder) / SETTINGS_FILE)
  if settings is None or not old:  # No record, or an unreadable one: nothing to compare.
    return
  if old != settings:
    raise InputError(
      f"the feature files in {folder} were made with other settings than this "
      f"config ({_differences(old, settings)}); query and database features "
      f"would not be comparable"
    )
