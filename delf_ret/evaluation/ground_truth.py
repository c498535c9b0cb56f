"""Reading retrieval ground truth in the published layouts.

(a) Original Oxford5k / Paris6k: a folder of ``<landmark>_<n>_query.txt``
    (one line: query image name and its box x1 y1 x2 y2; Oxford names carry an
    ``oxc1_`` prefix), ``_good.txt``, ``_ok.txt`` and ``_junk.txt`` (image names
    without extension, one per line). The database is every image of the
    images folder.
(b) Revisited ROxford5k / RParis6k: ``gnd_<dataset>.pkl``, a dict with
    ``imlist`` and ``qimlist`` (names without extension) and ``gnd``, one dict
    per query with ``bbx`` (x1, y1, x2, y2) and 0-based index lists ``easy``,
    ``hard``, ``junk``.

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


def _read_names(path: pathlib.Path) -> list[str]:
  return [line.strip() for line in path.read_text().splitlines() if line.strip()]


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
    fields = query_file.read_text().split()
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
  """A benchmark from exactly one of a Revisited ``gnd_*.pkl`` file and an original gt folder.

  name: the dataset's name in reports (default: from the pkl file name, or the
  gt folder's name).
  """
  if bool(gnd_path) == bool(gt_dir):
    raise GroundTruthError(
      "give exactly one of a Revisited gnd_<dataset>.pkl file "
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


# The only globals a published gnd_<dataset>.pkl may name: numpy arrays and their parts.
_PICKLE_GLOBALS = {
  ("numpy.core.multiarray", "_reconstruct"),
  ("numpy._core.multiarray", "_reconstruct"),
  ("numpy.core.multiarray", "scalar"),
  ("numpy._core.multiarray", "scalar"),
  ("numpy", "ndarray"),
  ("numpy", "dtype"),
  ("_codecs", "encode"),
}


class _GroundTruthUnpickler(pickle.Unpickler):
  """Builds only containers, strings, numbers and numpy arrays; any other global is refused.

  A pickle can name any importable callable (os.system, builtins.exec, ...)
  and have it called while loading; the published ground-truth files hold
  dicts, lists, strings, numbers and numpy arrays only.
  """

  def find_class(self, module: str, name: str):
    if (module, name) in _PICKLE_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
      f"refused to load {module}.{name}: a ground-truth file holds "
      f"only lists, dicts, strings, numbers and numpy arrays"
    )


def load_ground_truth_pickle(path: str | os.PathLike) -> object:
  """The object in a ground-truth pickle, read with _GroundTruthUnpickler (never runs code)."""
  with open(path, "rb") as handle:
    return _GroundTruthUnpickler(handle, encoding="latin1").load()


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


def read_revisited_gnd(
  pkl_path: str | os.PathLike, images_dir: str | os.PathLike | None = None, name: str | None = None
) -> RetrievalDataset:
  """Reads a Revisited gnd_<dataset>.pkl file."""
  pkl_path = pathlib.Path(pkl_path)
  if not pkl_path.is_file():
    raise GroundTruthError(f"ground-truth file not found: {pkl_path}")
  try:
    data = load_ground_truth_pickle(pkl_path)
  except (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    MemoryError,
    OverflowError,
  ) as error:
    raise GroundTruthError(f"{pkl_path}: not a readable ground-truth pickle ({error})") from None
  if not isinstance(data, dict):
    raise GroundTruthError(
      f"{pkl_path}: expected a dict with imlist, qimlist and gnd, got {type(data).__name__}"
    )
  missing = [key for key in ("imlist", "qimlist", "gnd") if key not in data]
  if missing:
    raise GroundTruthError(f"{pkl_path}: missing keys {missing}")
  for key in ("imlist", "qimlist", "gnd"):
    if not isinstance(data[key], (list, tuple)):
      raise GroundTruthError(f"{pkl_path}: {key} must be a list, got {type(data[key]).__name__}")
  imlist = [check_image_name(n, str(pkl_path)) for n in data["imlist"]]
  qimlist = [check_image_name(n, str(pkl_path)) for n in data["qimlist"]]
  for names, what in ((imlist, "imlist"), (qimlist, "qimlist")):
    duplicates = [name for name, count in collections.Counter(names).items() if count > 1]
    if duplicates:
      duplicate = duplicates[0]
      raise GroundTruthError(f"{pkl_path}: {what} lists {duplicate!r} twice")
  if len(data["gnd"]) != len(qimlist):
    raise GroundTruthError(f"{pkl_path}: {len(data['gnd'])} gnd entries for {len(qimlist)} queries")
  gnd = []
  for number, entry in enumerate(data["gnd"]):
    if not isinstance(entry, dict):
      raise GroundTruthError(
        f"{pkl_path}: gnd entry {number} must be a dict, got {type(entry).__name__}"
      )
    try:
      converted: dict[str, np.ndarray] = {
        "bbx": np.asarray(entry.get("bbx", []), np.float64).reshape(-1)
      }
      for kind in ("easy", "hard", "junk"):
        converted[kind] = np.asarray(entry.get(kind, []), np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
      raise GroundTruthError(f"{pkl_path}: gnd entry {number} is malformed ({error})") from None
    box = converted["bbx"]
    if box.size not in (0, 4) or not np.all(np.isfinite(box)):
      raise GroundTruthError(
        f"{pkl_path}: gnd entry {number} bbx must be 4 finite numbers "
        f"(x1, y1, x2, y2), got {box.tolist()}"
      )
    for kind in ("easy", "hard", "junk"):
      ids = converted[kind]
      if ids.size and (ids.min() < 0 or ids.max() >= len(imlist)):
        raise GroundTruthError(
          f"{pkl_path}: gnd entry {number} {kind} index out of range (0..{len(imlist) - 1})"
        )
    gnd.append(converted)
  dataset_name = name or pkl_path.stem.removeprefix("gnd_")
  return RetrievalDataset(
    dataset_name,
    "revisited",
    imlist,
    qimlist,
    gnd,
    pathlib.Path(images_dir) if images_dir else None,
  )
