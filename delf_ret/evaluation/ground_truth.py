"""Reading retrieval ground truth in the published layouts.

(a) Original Oxford5k / Paris6k: a folder of ``<landmark>_<n>_query.txt``
    (one line: query image name and its box x1 y1 x2 y2; Oxford names carry an
    ``oxc1_`` prefix), ``_good.txt``, ``_ok.txt`` and ``_junk.txt`` (image names
    without extension, one per line). The database is every image of the
    images folder.
(b) Revisited ROxford5k / RParis6k: ``gnd_<dataset>.pkl``, a dict with
    ``imlist`` and ``qimlist`` (names without extension) and ``gnd``, one dict
    per query with ``bbx`` (x1, y1, x2, y2) and 0-based index lists ``easy``,
    ``hard``, ``junk``; or the official ``gnd_<dataset>.mat`` of the same
    content (1-based indices), which the DELG instructions download. Both are
    read without running code and with bounded sizes (delf_ret.evaluation.gnd_files).

Both become a RetrievalDataset whose ``gnd`` entries hold 0-based database
indices (``good``/``ok``/``junk`` for (a), ``easy``/``hard``/``junk`` for (b))
and ``bbx``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import pickle

import numpy as np

from delf_ret.errors import DelfRetError
from delf_ret.errors import read_utf8_text
from delf_ret.evaluation import gnd_files


class GroundTruthError(DelfRetError):
  """Ground-truth files are missing or do not follow the published layout."""


@dataclasses.dataclass
class RetrievalDataset:
  """Database and query image names, with per-query ground truth.

  protocol: "original" (good/ok/junk) or "revisited" (easy/hard/junk).
  """

  name: str
  protocol: str
  imlist: list[str]
  qimlist: list[str]
  gnd: list[dict]
  images_dir: pathlib.Path | None = None
  extension: str = ".jpg"

  def image_path(self, name: str) -> pathlib.Path:
    if self.images_dir is None:
      raise GroundTruthError("the dataset has no images folder")
    return self.images_dir / f"{name}{self.extension}"


def _read_text(path: pathlib.Path) -> str:
  """The UTF-8 text of a ground-truth file; GroundTruthError naming it if it is not text."""
  return read_utf8_text(path, GroundTruthError, str(path))


def _read_names(path: pathlib.Path) -> list[str]:
  return [line.strip() for line in _read_text(path).splitlines() if line.strip()]


def read_original_gt(
  gt_dir: str | os.PathLike, images_dir: str | os.PathLike, name: str = "oxford5k"
) -> RetrievalDataset:
  """Reads an original Oxford5k/Paris6k ground-truth folder."""
  gt_dir, images_dir = pathlib.Path(gt_dir), pathlib.Path(images_dir)
  query_files = sorted(gt_dir.glob("*_query.txt"))
  if not query_files:
    raise GroundTruthError(f"no *_query.txt files in {gt_dir}")
  if not images_dir.is_dir():
    raise GroundTruthError(f"images folder not found: {images_dir}")
  imlist = sorted(p.stem for p in images_dir.glob("*.jpg"))
  index = {image: i for i, image in enumerate(imlist)}
  qimlist, gnd = [], []
  for query_file in query_files:
    prefix = query_file.name[: -len("_query.txt")]
    fields = _read_text(query_file).split()
    if len(fields) != 5:
      raise GroundTruthError(f"{query_file}: expected 'name x1 y1 x2 y2', got {fields}")
    query_name = check_image_name(
      fields[0][5:] if fields[0].startswith("oxc1_") else fields[0], str(query_file)
    )
    if query_name in qimlist:
      raise GroundTruthError(
        f"{query_file}: query image {query_name} is already the query of another *_query.txt file"
      )
    try:
      box = np.array([float(v) for v in fields[1:]])
    except ValueError:
      box = np.array([np.nan])
    if not np.all(np.isfinite(box)):
      raise GroundTruthError(f"{query_file}: the box must be 4 finite numbers, got {fields[1:]}")
    entry = {"bbx": box}
    for kind in ("good", "ok", "junk"):
      path = gt_dir / f"{prefix}_{kind}.txt"
      if not path.is_file():
        raise GroundTruthError(f"missing ground-truth file {path}")
      names = _read_names(path)
      unknown = [n for n in names if n not in index]
      if unknown:
        raise GroundTruthError(
          f"{path}: {len(unknown)} images not in {images_dir}, e.g. {unknown[0]}"
        )
      entry[kind] = np.array([index[n] for n in names], np.int64)
    qimlist.append(query_name)
    gnd.append(entry)
  return RetrievalDataset(name, "original", imlist, qimlist, gnd, images_dir)


def load_dataset(
  gnd_path: str | os.PathLike | None = None,
  gt_dir: str | os.PathLike | None = None,
  images_dir: str | os.PathLike | None = None,
  name: str | None = None,
) -> RetrievalDataset:
  """A benchmark from exactly one of a Revisited ``gnd_*.pkl`` (or official ``gnd_*.mat``) file
  and an original gt folder.

  name: the dataset's name in reports (default: from the pkl file name, or the
  gt folder's name).
  """
  if bool(gnd_path) == bool(gt_dir):
    raise GroundTruthError(
      "give exactly one of a Revisited gnd_<dataset>.pkl (or .mat) file "
      "(--dataset_gnd_path) and an original ground-truth folder "
      "(--dataset_gt_dir)"
    )
  if gnd_path:
    return read_revisited_gnd(gnd_path, images_dir, name)
  if images_dir is None:
    raise GroundTruthError("the original protocol needs the images folder (--images_dir)")
  assert gt_dir  # Exactly one of gnd_path and gt_dir is given (checked above).
  return read_original_gt(gt_dir, images_dir, name or pathlib.Path(gt_dir).name)


def in_query_order(dataset: RetrievalDataset, qimlist: list[str]) -> RetrievalDataset:
  """``dataset`` with its queries (and their ground truth) reordered to ``qimlist``.

  Scores one run's results (in ``qimlist`` order) under a second protocol of
  the same queries. Raises GroundTruthError if the query names differ.
  """
  if sorted(dataset.qimlist) != sorted(qimlist):
    raise GroundTruthError(f"{dataset.name} has other queries than the run to score")
  order = [dataset.qimlist.index(query) for query in qimlist]
  return dataclasses.replace(dataset, qimlist=list(qimlist), gnd=[dataset.gnd[i] for i in order])


def load_ground_truth_pickle(path: str | os.PathLike) -> object:
  """The object in a ground-truth pickle, read by delf_ret.evaluation.gnd_files (never runs code).

  Raises pickle.UnpicklingError or ValueError with the reason (the caller names the file).
  """
  return gnd_files.load_gnd_pickle(gnd_files.read_file_bytes(pathlib.Path(path)))


_BAD_NAME_PARTS = ("/", "\\", "\0")


def check_image_name(name: object, source: str) -> str:
  """An image name from a ground-truth file, refused if it could leave its folder.

  Names become file names (``<name>.jpg``, ``<name>.delf``): a separator, a
  leading dot-dot, an absolute path or an empty name raises GroundTruthError.
  """
  if (
    not isinstance(name, str)
    or not name
    or name in (".", "..")
    or any(part in name for part in _BAD_NAME_PARTS)
    or os.path.isabs(name)
    or name.startswith("..")
  ):
    raise GroundTruthError(
      f"{source}: image name {name!r} is not a plain file name (no folder "
      f"separators, no '..', not absolute)"
    )
  return name


# What a damaged or hostile ground-truth file can make the readers raise besides
# GroundTruthError (LookupError: KeyError, IndexError and unknown codecs).
_FILE_ERRORS = (
  pickle.UnpicklingError,
  EOFError,
  ValueError,
  TypeError,
  AttributeError,
  ImportError,
  LookupError,
  MemoryError,
  OverflowError,
  RecursionError,
  NotImplementedError,
  OSError,
)


def _short(value: object) -> str:
  """``value`` as one line of at most 200 characters."""
  text = " ".join(str(value).split())
  return text if len(text) <= 200 else text[:200] + "..."


def _one_line(error: BaseException) -> str:
  return _short(error) or type(error).__name__


def read_revisited_gnd(
  gnd_path: str | os.PathLike, images_dir: str | os.PathLike | None = None, name: str | None = None
) -> RetrievalDataset:
  """Reads a Revisited ``gnd_<dataset>.pkl`` file, or the official ``gnd_<dataset>.mat``.

  Sizes are bounded: at most gnd_files.MAX_IMAGES database images and
  MAX_QUERIES queries, each easy/hard/junk list at most as long as the
  database, bbx 4 numbers. Any problem raises GroundTruthError naming the file.
  """
  gnd_path = pathlib.Path(gnd_path)
  if not gnd_path.is_file():
    raise GroundTruthError(f"ground-truth file not found: {gnd_path}")
  is_mat = gnd_path.suffix.lower() == ".mat"
  try:
    data = gnd_files.read_file_bytes(gnd_path)
    content = gnd_files.load_gnd_mat(data) if is_mat else gnd_files.load_gnd_pickle(data)
    imlist, qimlist, gnd = _revisited_content(gnd_path, content, 1 if is_mat else 0)
  except GroundTruthError:
    raise
  except _FILE_ERRORS as error:
    kind = "MAT-file" if is_mat else "pickle"
    raise GroundTruthError(
      f"{gnd_path}: not a readable ground-truth {kind} ({_one_line(error)})"
    ) from None
  return RetrievalDataset(
    name or gnd_path.stem.removeprefix("gnd_"),
    "revisited",
    imlist,
    qimlist,
    gnd,
    pathlib.Path(images_dir) if images_dir else None,
  )


def _names(path: pathlib.Path, value: object, key: str, limit: int) -> list[str]:
  """The image names of ``imlist`` or ``qimlist``: plain, distinct, at most ``limit``."""
  if not isinstance(value, (list, tuple)):
    raise GroundTruthError(f"{path}: {key} must be a list, got {type(value).__name__}")
  if len(value) > limit:
    raise GroundTruthError(f"{path}: {key} lists {len(value)} images, more than {limit}")
  names = [check_image_name(n, str(path)) for n in value]
  duplicates = [name for name, count in collections.Counter(names).items() if count > 1]
  if duplicates:
    raise GroundTruthError(f"{path}: {key} lists {duplicates[0]!r} twice")
  return names


def _revisited_content(
  path: pathlib.Path, data: object, base: int
) -> tuple[list[str], list[str], list[dict[str, np.ndarray]]]:
  """imlist, qimlist and checked 0-based gnd entries of a loaded file (``base``: its first index)."""
  if not isinstance(data, dict):
    raise GroundTruthError(
      f"{path}: expected a dict with imlist, qimlist and gnd, got {type(data).__name__}"
    )
  missing = [key for key in ("imlist", "qimlist", "gnd") if key not in data]
  if missing:
    raise GroundTruthError(f"{path}: missing keys {missing}")
  imlist = _names(path, data["imlist"], "imlist", gnd_files.MAX_IMAGES)
  qimlist = _names(path, data["qimlist"], "qimlist", gnd_files.MAX_QUERIES)
  if not isinstance(data["gnd"], (list, tuple)):
    raise GroundTruthError(f"{path}: gnd must be a list, got {type(data['gnd']).__name__}")
  if len(data["gnd"]) != len(qimlist):
    raise GroundTruthError(f"{path}: {len(data['gnd'])} gnd entries for {len(qimlist)} queries")
  return (
    imlist,
    qimlist,
    [_gnd_entry(path, n, e, len(imlist), base) for n, e in enumerate(data["gnd"])],
  )


def _numbers(value: object, limit: int, what: str) -> np.ndarray:
  """A flat float64 array of at most ``limit`` numbers from a 1-D array or a flat list."""
  if isinstance(value, np.ndarray):
    if value.dtype.kind not in "biuf":
      raise ValueError(f"{what} holds {value.dtype} values, not numbers")
    array = value.reshape(-1)
  elif isinstance(value, (list, tuple)):
    if len(value) > limit:
      raise ValueError(f"{what} has {len(value)} values, more than {limit}")
    if not all(type(v) in (int, float) for v in value):
      raise ValueError(f"{what} must be a flat list of numbers")
    array = np.array(value, np.float64).reshape(-1)
  else:
    raise ValueError(f"{what} must be a list or array of numbers, got {type(value).__name__}")
  if array.size > limit:
    raise ValueError(f"{what} has {array.size} values, more than {limit}")
  return array.astype(np.float64)


def _gnd_entry(
  path: pathlib.Path, number: int, entry: object, database_size: int, base: int
) -> dict[str, np.ndarray]:
  """One query's checked ground truth: bbx (4 finite numbers or none), 0-based index arrays."""
  if not isinstance(entry, dict):
    raise GroundTruthError(f"{path}: gnd entry {number} must be a dict, got {type(entry).__name__}")
  try:
    box = _numbers(entry.get("bbx", []), 4, "bbx")
  except ValueError:
    box = np.full(5, np.nan)  # Refused below, with the values' requirement.
  if box.size not in (0, 4) or not np.all(np.isfinite(box)):
    raise GroundTruthError(
      f"{path}: gnd entry {number} bbx must be 4 finite numbers "
      f"(x1, y1, x2, y2), got {_short(entry.get('bbx'))}"
    )
  converted = {"bbx": box}
  try:
    for kind in ("easy", "hard", "junk"):
      ids = _numbers(entry.get(kind, []), database_size, kind)
      if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)):
        raise ValueError(f"{kind} holds values that are not whole numbers")
      converted[kind] = ids - base
  except ValueError as error:
    raise GroundTruthError(f"{path}: gnd entry {number} is malformed ({error})") from None
  for kind in ("easy", "hard", "junk"):
    ids = converted[kind]
    if ids.size and (ids.min() < 0 or ids.max() >= database_size):
      raise GroundTruthError(
        f"{path}: gnd entry {number} {kind} index out of range (0..{database_size - 1})"
      )
    converted[kind] = ids.astype(np.int64)
  return converted
