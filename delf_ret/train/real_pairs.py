"""Real training pairs: overlapping photos of one scene with verified correspondences.

Consecutive photos of a folder (by sorted name) are matched with OpenCV SIFT
and RANSAC on the fundamental matrix; where ground-truth cameras are known
(a ``cameras.csv`` in the Strecha layout), matches must also lie on the true
epipolar line. Points are (y, x) pixels of the loaded photos. numpy + OpenCV,
no TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Callable
from typing import Sequence

import cv2
import numpy as np

from delf_ret.atomic import atomic_write
from delf_ret.protos.delf_train_config_pb2 import SelfSupervisedConfig
from delf_ret.train.photos import TrainingDataError

# The real pairs found in a training folder, cached in the run's output folder.
REAL_PAIRS_FILE = "real_pairs.npz"


@dataclasses.dataclass
class RealPair:
  """Two overlapping photos (indices into the photo list) and their matches.

  matches: float32 [M, 4] of (ya, xa, yb, xb) pixels of the loaded photos.
  """

  index_a: int
  index_b: int
  matches: np.ndarray


def _camera_rows(path: str | os.PathLike) -> list[list[float]]:
  try:
    rows = [
      [float(v) for v in line.split()]
      for line in pathlib.Path(path).read_text().splitlines()
      if line.strip()
    ]
  except ValueError:  # A word that is not a number, or bytes that are not text.
    rows = []
  if (
    len(rows) < 9
    or any(len(row) != 3 for row in rows[:8])
    or len(rows[8]) != 2
    or min(rows[8]) <= 0
  ):
    raise TrainingDataError(
      f"{path}: not a Strecha camera file (9 rows of numbers: K, distortion, R, t, size)"
    )
  return rows


def read_strecha_camera(path: str | os.PathLike) -> np.ndarray:
  """3x4 projection matrix P = K [R^T | -R^T t] (pixels) of a Strecha ``.camera`` file."""
  rows = _camera_rows(path)
  intrinsics, rotation, centre = np.array(rows[0:3]), np.array(rows[4:7]), np.array(rows[7])
  return intrinsics @ np.concatenate([rotation.T, (-rotation.T @ centre)[:, None]], axis=1)


def fundamental_from_projections(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
  """F (3x3) with x_b^T F x_a = 0 for (x, y, 1) pixels, from two 3x4 projection matrices."""
  _, _, vt = np.linalg.svd(p_a)
  centre_a = vt[-1]
  epipole = p_b @ centre_a
  cross = np.array(
    [[0, -epipole[2], epipole[1]], [epipole[2], 0, -epipole[0]], [-epipole[1], epipole[0], 0]]
  )
  return cross @ p_b @ np.linalg.pinv(p_a)


def epipolar_distance(fundamental: np.ndarray, matches: np.ndarray) -> np.ndarray:
  """Symmetric point-to-epipolar-line distance [M] (pixels) of (ya, xa, yb, xb) matches [M, 4]."""
  a = np.concatenate([matches[:, [1, 0]], np.ones((len(matches), 1))], axis=1)
  b = np.concatenate([matches[:, [3, 2]], np.ones((len(matches), 1))], axis=1)
  lines_b = a @ fundamental.T
  lines_a = b @ fundamental
  residual = np.abs(np.sum(b * lines_b, axis=1))
  return 0.5 * (
    residual / np.maximum(np.hypot(lines_b[:, 0], lines_b[:, 1]), 1e-12)
    + residual / np.maximum(np.hypot(lines_a[:, 0], lines_a[:, 1]), 1e-12)
  )


def sift_keypoints(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
  """OpenCV SIFT of an RGB uint8 photo: (x, y) float32 [K, 2] pixels and descriptors [K, 128]
  (None without keypoints)."""
  sift = cv2.SIFT_create(nfeatures=4000)  # type: ignore[attr-defined]
  keys, descriptors = sift.detectAndCompute(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), None)
  return np.array([k.pt for k in keys], np.float32).reshape(-1, 2), descriptors


def sift_matches(
  sift_a: tuple[np.ndarray, np.ndarray | None],
  sift_b: tuple[np.ndarray, np.ndarray | None],
  ratio: float = 0.8,
  ransac_px: float = 1.5,
  seed: int = 0,
) -> np.ndarray:
  """Ratio-test matches of two photos' SIFT kept by RANSAC on the fundamental matrix.

  sift_a, sift_b: :func:`sift_keypoints` of each photo; ransac_px: the RANSAC
  threshold in pixels. Returns float32 [M, 4] (ya, xa, yb, xb) pixels.
  """
  (xy_a, desc_a), (xy_b, desc_b) = sift_a, sift_b
  if desc_a is None or desc_b is None or len(xy_a) < 8 or len(xy_b) < 8:
    return np.zeros((0, 4), np.float32)
  pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
  good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < ratio * m[1].distance]
  if len(good) < 8:
    return np.zeros((0, 4), np.float32)
  matched_a = xy_a[[m.queryIdx for m in good]]
  matched_b = xy_b[[m.trainIdx for m in good]]
  cv2.setRNGSeed(seed)
  try:
    _, mask = cv2.findFundamentalMat(matched_a, matched_b, cv2.USAC_MAGSAC, ransac_px, 0.999, 10000)
  except cv2.error:  # OpenCV's USAC asserts when every model it fits is degenerate.
    return np.zeros((0, 4), np.float32)
  if mask is None:
    return np.zeros((0, 4), np.float32)
  keep = mask.ravel().astype(bool)
  return np.concatenate([matched_a[keep][:, ::-1], matched_b[keep][:, ::-1]], axis=1).astype(
    np.float32
  )


def find_real_pairs(
  photos: Sequence[np.ndarray],
  paths: Sequence[pathlib.Path],
  max_gap: int,
  min_matches: int,
  cameras: dict[pathlib.Path, np.ndarray],
  max_epipolar_px: float,
  log: Callable[[str], None] = print,
) -> list[RealPair]:
  """Overlapping photo pairs among neighbours (by sorted name) of each folder.

  Photos i and j of one folder with 0 < j - i <= max_gap are matched with
  SIFT + RANSAC; pairs keeping at least ``min_matches`` matches are kept. Where
  both photos have ground-truth cameras (3x4 projection matrices, at the
  loaded photos' resolution), matches farther than ``max_epipolar_px`` pixels
  from the true epipolar line are dropped too.
  """
  by_folder: dict[pathlib.Path, list[int]] = {}
  for index, path in enumerate(paths):
    by_folder.setdefault(pathlib.Path(path).parent, []).append(index)
  pairs = []
  for folder, indices in sorted(by_folder.items()):
    kept = 0
    sift = {index: sift_keypoints(photos[index]) for index in indices}
    for position, index_a in enumerate(indices):
      for index_b in indices[position + 1 : position + 1 + max_gap]:
        matches = sift_matches(sift[index_a], sift[index_b])
        projection_a = cameras.get(pathlib.Path(paths[index_a]))
        projection_b = cameras.get(pathlib.Path(paths[index_b]))
        if len(matches) and projection_a is not None and projection_b is not None:
          fundamental = fundamental_from_projections(projection_a, projection_b)
          matches = matches[epipolar_distance(fundamental, matches) <= max_epipolar_px]
        if len(matches) >= min_matches:
          pairs.append(RealPair(index_a, index_b, matches))
          kept += 1
    log(f"real pairs: {kept} in {folder}")
  return pairs


def camera_tables(paths: Sequence[pathlib.Path]) -> list[pathlib.Path]:
  """Every ``cameras.csv`` in a folder holding one of the photos or in any folder above it
  (followed through symbolic links too), sorted; each folder is looked at once."""
  seen: set[pathlib.Path] = set()
  tables = set()
  for path in map(pathlib.Path, paths):
    for start in (path.absolute(), path.resolve()):
      for folder in start.parents:
        if folder in seen:
          break  # Its parents have been looked at too.
        seen.add(folder)
        if (folder / "cameras.csv").is_file():
          tables.add(folder / "cameras.csv")
  return sorted(tables)


def _camera_rows_of_table(table: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(photo, camera file) of each row of a cameras.csv; both relative to the folder above
  the table's, the photo resolved."""
  base = pathlib.Path(os.path.dirname(table.parent))  # The folder above the table's.
  try:
    with open(table, newline="") as handle:
      reader = csv.DictReader(handle)
      missing = {"image", "camera_file"} - set(reader.fieldnames or ())
      named = [(row["image"], row["camera_file"]) for row in reader] if not missing else []
  except (UnicodeDecodeError, csv.Error) as error:
    raise TrainingDataError(f"{table}: not a camera table ({error})") from error
  if missing:
    raise TrainingDataError(
      f"{table}: not a camera table (no column {', '.join(sorted(missing))}; "
      "expected image,scene,camera_file)"
    )
  for line, (image, camera_file) in enumerate(named, start=2):
    if not image or not camera_file:
      raise TrainingDataError(f"{table}: line {line} has no image or camera_file")
  return [((base / image).resolve(), base / camera_file) for image, camera_file in named]


def strecha_cameras(
  paths: Sequence[pathlib.Path], photos: Sequence[np.ndarray]
) -> dict[pathlib.Path, np.ndarray]:
  """Projection matrices (3x4, pixels of the loaded photos) of the photos listed in a
  ``cameras.csv`` (Strecha layout) of their folders or a folder above (:func:`camera_tables`),
  keyed by the given paths; the same for a folder of photos and a list of them.

  The CSV rows are ``image,scene,camera_file`` relative to the folder above the CSV's;
  row 9 of a camera file is the image size the camera refers to, so each matrix is
  rescaled to the loaded photo's size. Rows of photos not given, or whose camera file
  is missing, are skipped; a malformed table or camera file raises TrainingDataError.
  """
  wanted = {pathlib.Path(p).resolve(): i for i, p in enumerate(paths)}
  cameras = {}
  for table in camera_tables(paths):
    for image, camera_file in _camera_rows_of_table(table):
      if image not in wanted or not camera_file.is_file():
        continue
      width = _camera_rows(camera_file)[8][0]
      photo = photos[wanted[image]]
      factor = photo.shape[1] / width
      cameras[pathlib.Path(paths[wanted[image]])] = np.diag(
        [factor, factor, 1.0]
      ) @ read_strecha_camera(camera_file)
  return cameras


def _cache_key(
  paths: Sequence[pathlib.Path],
  settings: SelfSupervisedConfig,
  cameras: dict[pathlib.Path, np.ndarray],
) -> str:
  """What the real pairs depend on: the photos, their ground-truth cameras and the settings
  that find them. Without cameras the key is what it was before cameras were part of it,
  so caches of photo sets without cameras stay valid; a cache found without the cameras
  that are found now is not reused."""
  content: dict[str, object] = {
    "photos": [str(p) for p in paths],
    "max_side": settings.photo_max_side,
    "gap": settings.max_pair_gap,
    "min": settings.min_pair_matches,
    "epipolar": settings.max_epipolar_px,
  }
  if cameras:
    content["cameras"] = {str(p): cameras[p].tolist() for p in sorted(cameras)}
  return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _read_cache(cache: pathlib.Path, key: str) -> list[RealPair] | None:
  """The pairs of a cache file written for ``key``, or None (no file, another key)."""
  if not cache.is_file():
    return None
  with np.load(cache, allow_pickle=False) as data:
    if str(data["key"]) != key:
      return None
    offsets = data["offsets"]
    return [
      RealPair(int(a), int(b), data["matches"][offsets[i] : offsets[i + 1]])
      for i, (a, b) in enumerate(zip(data["index_a"], data["index_b"]))
    ]


def _write_cache(cache: pathlib.Path, key: str, pairs: Sequence[RealPair]) -> None:
  offsets = np.cumsum([0] + [len(p.matches) for p in pairs])
  matches = np.concatenate([p.matches for p in pairs]) if pairs else np.zeros((0, 4), np.float32)
  cache.parent.mkdir(parents=True, exist_ok=True)
  with atomic_write(cache) as handle:
    np.savez(
      handle,
      key=np.array(key),
      offsets=offsets,
      matches=matches,
      index_a=np.array([p.index_a for p in pairs], np.int64),
      index_b=np.array([p.index_b for p in pairs], np.int64),
    )


def load_real_pairs(
  photos: list[np.ndarray],
  paths: list[pathlib.Path],
  settings: SelfSupervisedConfig,
  cache_dir: pathlib.Path,
  log: Callable[[str], None],
) -> list[RealPair]:
  """Finds (or reads from ``cache_dir``/REAL_PAIRS_FILE) the overlapping real pairs among the
  photos, with the ``selfsup`` block's max_pair_gap, min_pair_matches and max_epipolar_px;
  ground-truth cameras come from the photos' cameras.csv files (:func:`strecha_cameras`)."""
  if settings.max_pair_gap == 0 or settings.real_pair_fraction == 0:
    return []
  cameras = strecha_cameras(paths, photos)
  key = _cache_key(paths, settings, cameras)
  cache = cache_dir / REAL_PAIRS_FILE
  cached = _read_cache(cache, key)
  if cached is not None:
    log(f"real pairs: {len(cached)} read from {cache} ({len(cameras)} photos with cameras)")
    return cached
  start = time.time()
  pairs = find_real_pairs(
    photos,
    paths,
    settings.max_pair_gap,
    settings.min_pair_matches,
    cameras,
    settings.max_epipolar_px,
    log=log,
  )
  log(
    f"real pairs: {len(pairs)} found in {time.time() - start:.0f} s "
    f"({len(cameras)} photos with ground-truth cameras)"
  )
  _write_cache(cache, key, pairs)
  return pairs
