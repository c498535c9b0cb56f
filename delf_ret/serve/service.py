"""What the page's queries run on, kept in memory: the model, the index and every database
image's features; queries, match pictures and gallery changes.

A query is extraction (skipped for a database photo queried whole: its features, and its
global descriptor for first_stage "global", are in memory) -> ranked list by the first
stage the index was built with (votes, asmk or global: first_stage.open_first_stage,
ranking.first_stage) -> RANSAC reranking of the top (ranking.rerank) -> recognition of
its label from the verified neighbours (delf_ret.retrieval.recognition.recognize).
Nothing is read from disk during a query.

Files are reached only by image id: each id is looked up in the index's image records
(the stage's image_path / image_label, whatever the stage; or, for indexes without
records, in the image folders given at start); no path from a request reaches the file
system. Photos added to the gallery are stored in the service's own folder
(``<index folder>/gallery_photos``), their features in the features folder, both
written atomically; the index is saved through its stage's crash-safe save. Every
method that reads or changes the index is called from one worker thread
(delf_ret.serve.jobs), except the read-only look-ups, which take the service's lock.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import re
import tempfile
import threading
import time
from typing import Callable
from typing import Iterable
from typing import Sequence

import numpy as np
from PIL import Image

from delf_ret.atomic import write_bytes_atomic
from delf_ret.config import DelfConfig
from delf_ret.errors import DelfRetError
from delf_ret.errors import InputError
from delf_ret.evaluation.visualize import draw_matches
from delf_ret.features import LocalFeatures
from delf_ret.features import feature_file_name
from delf_ret.features import global_file_name
from delf_ret.features import read_features
from delf_ret.features import read_global_descriptor
from delf_ret.features import write_features
from delf_ret.features import write_global_descriptor
from delf_ret.images import IMAGE_SUFFIXES
from delf_ret.images import ImageReadError
from delf_ret.images import crop_to_box
from delf_ret.images import list_images
from delf_ret.images import load_image
from delf_ret.images import shrink_to_max_side
from delf_ret.match import RansacParams
from delf_ret.match import verify_pair
from delf_ret.retrieval.first_stage import FirstStageIndex
from delf_ret.retrieval.first_stage import Query
from delf_ret.retrieval.first_stage import QueryExtract
from delf_ret.retrieval.first_stage import open_first_stage
from delf_ret.retrieval.first_stage import saved_version
from delf_ret.retrieval.ranking import RankedImage
from delf_ret.retrieval.ranking import first_stage
from delf_ret.retrieval.ranking import is_verified
from delf_ret.retrieval.ranking import rerank
from delf_ret.retrieval.recognition import RecognitionResult
from delf_ret.retrieval.recognition import recognize

GALLERY_DIR = "gallery_photos"  # Inside the index folder: the photos added through the page.
MAX_ID_CHARS = 255  # The longest image id a request may name (a file stem: NAME_MAX).
MAX_LABEL_CHARS = 200
PICTURE_SIDE = 640  # Longest side (pixels) of each photo in a match picture.
THUMBNAIL_SIDE = 256  # Longest side of the grid's thumbnails.
VIEW_SIDE = 1024  # Longest side of a photo shown whole (picking a query box).
RESULTS_SHOWN = 24  # Entries of the ranked list a query returns to the page.
# matplotlib's figures are not thread-safe: one match picture is drawn at a time.
_DRAWING = threading.Lock()

Progress = Callable[[str, float], None]  # (stage, fraction done of the query)


@dataclasses.dataclass(frozen=True)
class Box:
  """A query box as fractions of the image's width and height, 0 <= x1 < x2 <= 1."""

  x1: float
  y1: float
  x2: float
  y2: float

  @classmethod
  def parse(cls, text: str) -> "Box":
    """'x1,y1,x2,y2' fractions; InputError unless 4 numbers with 0 <= x1 < x2 <= 1 (same y)."""
    try:
      values = [float(value) for value in text.split(",")]
      if len(values) != 4:
        raise ValueError
    except ValueError:
      raise InputError(f"query box must be 4 numbers x1,y1,x2,y2, got {text[:80]!r}") from None
    box = cls(*values)
    if not (0 <= box.x1 < box.x2 <= 1 and 0 <= box.y1 < box.y2 <= 1):
      raise InputError(f"query box {text[:80]!r} must lie inside the photo (fractions 0 to 1)")
    return box

  def crop(self, image: np.ndarray) -> np.ndarray:
    """The part of ``image`` [H, W, 3] inside the box (delf_ret.images.crop_to_box)."""
    height, width = image.shape[:2]
    return crop_to_box(
      image, (self.x1 * width, self.y1 * height, self.x2 * width, self.y2 * height)
    )


@dataclasses.dataclass
class Answer:
  """One query's answer.

  picture: the query photo features were extracted from (cropped to its box), shrunk to
    PICTURE_SIDE pixels on its longer side by ``factor``, [H, W, 3] uint8.
  features: its features (points in pixels of the photo before shrinking); ranked: the reranked list (delf_ret.retrieval.ranking);
  recognition: the label answer (delf_ret.retrieval.recognition.RecognitionResult);
  seconds: wall time per stage ("extraction", "search", "loading", "matching",
  "ransac", "total").
  """

  picture: np.ndarray
  factor: float
  features: LocalFeatures
  ranked: list[RankedImage]
  recognition: RecognitionResult
  seconds: dict[str, float]
  excluded: str | None = None  # The database photo queried (left out of the list).


def image_folders_map(folders: Iterable[str | os.PathLike]) -> dict[str, pathlib.Path]:
  """{image id (file stem): image file} of the images directly inside each folder; the
  first folder naming an id wins."""
  found: dict[str, pathlib.Path] = {}
  for folder in folders:
    for path in list_images(folder):
      found.setdefault(path.stem, path.resolve())
  return found


class SearchService:
  """The model, index and database features in memory, and the page's operations.

  Args:
    config: the DelfConfig (extraction and retrieval_config).
    index_dir: the index folder (the gallery photos are stored inside it).
    features_dir: the ``<image id>.delf`` files of the indexed images.
    extract: image [H, W, 3] uint8 -> what the index's first stage needs of a query:
      LocalFeatures, or (LocalFeatures, global descriptor) for "global"
      (first_stage.query_extractor of the same config).
    image_dirs: folders whose images stand for indexed ids the index has no path for.
    log: progress lines while the features load.
  """

  def __init__(
    self,
    config: DelfConfig,
    index_dir: str | os.PathLike,
    features_dir: str | os.PathLike,
    extract: QueryExtract,
    image_dirs: Sequence[str | os.PathLike] = (),
    log: Callable[[str], None] = print,
  ):
    self.config = config
    self.index_dir = pathlib.Path(index_dir)
    self.features_dir = pathlib.Path(features_dir)
    self.gallery_dir = self.index_dir / GALLERY_DIR
    self._extract = extract
    self._lock = threading.RLock()
    self._folder_images = image_folders_map(image_dirs)
    self._version = saved_version(self.index_dir)  # Read before loading: a change shows.
    # The stage the index was built with (the config must ask for it).
    self.stage: FirstStageIndex = open_first_stage(self.index_dir, config.retrieval_config)
    self._features: dict[str, LocalFeatures] = {}
    self._globals: dict[str, np.ndarray] = {}  # Raw global descriptors (first_stage global).
    ids = self.stage.image_ids()
    for number, image_id in enumerate(ids, 1):
      self._features[image_id] = read_features(self.features_dir / feature_file_name(image_id))
      if self.stage.needs_global:
        path = self.features_dir / global_file_name(image_id)
        self._globals[image_id] = read_global_descriptor(path)
      if number % 100 == 0 or number == len(ids):
        log(f"[{number}/{len(ids)}] database features loaded")
    self._thumbnails: dict[tuple[str, int], bytes] = {}

  # Look-ups (any thread) -----------------------------------------------------------------

  def photos(self) -> list[dict]:
    """Every indexed image: {"id", "label", "has_image", "added"} in index order."""
    with self._lock:
      return [
        {
          "id": image_id,
          "label": self.stage.image_label(image_id),
          "has_image": self.image_file(image_id) is not None,
          "added": self._is_gallery_photo(image_id),
        }
        for image_id in self.stage.image_ids()
      ]

  def has_photo(self, image_id: str) -> bool:
    """Whether ``image_id`` is a well-formed id of an indexed image."""
    with self._lock:
      return is_image_id(image_id) and image_id in self.stage

  def label(self, image_id: str) -> str | None:
    with self._lock:
      return self.stage.image_label(image_id) if image_id in self.stage else None

  def image_file(self, image_id: str) -> pathlib.Path | None:
    """The image file of an indexed id (its record, else the image folders); None if unknown."""
    with self._lock:
      if not is_image_id(image_id) or image_id not in self.stage:
        return None
      recorded = self.stage.image_path(image_id)
      path = pathlib.Path(recorded) if recorded else self._folder_images.get(image_id)
    return path if path is not None and path.is_file() else None

  def picture(self, image_id: str, side: int) -> bytes | None:
    """JPEG of an indexed image shrunk to ``side`` pixels on its longer side; None if unknown."""
    key = (image_id, side)
    with self._lock:
      if key in self._thumbnails:
        return self._thumbnails[key]
    path = self.image_file(image_id)
    if path is None:
      return None
    image, _ = shrink_to_max_side(load_image(path, self.config.max_image_pixels), side)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=85)
    with self._lock:
      if len(self._thumbnails) > 2000:
        self._thumbnails.clear()
      self._thumbnails[key] = buffer.getvalue()
    return buffer.getvalue()

  def _is_gallery_photo(self, image_id: str) -> bool:
    path = self.stage.image_path(image_id)
    return path is not None and pathlib.Path(path).parent == self.gallery_dir.resolve()

  # Queries (worker thread) ---------------------------------------------------------------

  def query(
    self,
    image: np.ndarray | None = None,
    database_id: str | None = None,
    box: Box | None = None,
    progress: Progress = lambda stage, done: None,
  ) -> Answer:
    """Answers a query photo (``image``) or an indexed photo (``database_id``, left out of
    its own list), optionally cut to ``box``; see the module docstring."""
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    if database_id is not None:
      image = self._database_image(database_id)
    assert image is not None
    if box is not None:
      image = box.crop(image)
    progress("extracting features", 0.05)
    if database_id is not None and box is None:
      query = Query(self._features[database_id], self._globals.get(database_id))
    else:
      query = Query.of(self._extract(image))
    features = query.features
    seconds["extraction"] = time.perf_counter() - start
    progress("searching the index", 0.45)
    retrieval = self.config.retrieval_config
    skip = {database_id} if database_id else set()
    # No lock: only this (the worker) thread changes the index and the features.
    ranked = [
      e
      for e in first_stage(features, self.stage, retrieval, seconds, query.global_descriptor)
      if e.image_id not in skip
    ]
    candidates = min(retrieval.rerank_top_n, len(ranked))
    loaded = [0]

    def load(image_id: str) -> LocalFeatures:
      loaded[0] += 1
      progress(f"verifying {loaded[0]}/{candidates}", 0.5 + 0.5 * loaded[0] / max(1, candidates))
      return self._features[image_id]

    reranked = rerank(features, ranked, load, retrieval, timings=seconds)
    verified = [(e.image_id, e.inliers or 0) for e in reranked if is_verified(e, retrieval)]
    labels = {image_id: self.stage.image_label(image_id) for image_id, _ in verified}
    recognition = recognize(
      verified, labels, retrieval.recognition_top_k, retrieval.recognition_min_score
    )
    seconds["total"] = time.perf_counter() - start
    picture, factor = shrink_to_max_side(image, PICTURE_SIDE)
    return Answer(picture, factor, features, reranked, recognition, seconds, database_id)

  def _database_image(self, image_id: str) -> np.ndarray:
    path = self.image_file(image_id)
    if path is None or image_id not in self._features:
      raise InputError(f"no indexed photo {image_id[:80]!r} with an image file")
    return load_image(path, self.config.max_image_pixels)

  def match_picture(self, answer: Answer, image_id: str, target: pathlib.Path) -> None:
    """Draws the RANSAC inliers between the query and an indexed image into ``target`` (PNG)."""
    path = self.image_file(image_id)
    with self._lock:
      features = self._features.get(image_id)
    if path is None or features is None:
      raise InputError(f"no indexed photo {image_id[:80]!r} with an image file")
    result = verify_pair(
      answer.features, features, RansacParams.from_config(self.config.retrieval_config)
    )
    pairs = result.matches[result.inliers]
    picture, factor = shrink_to_max_side(
      load_image(path, self.config.max_image_pixels), PICTURE_SIDE
    )
    with _DRAWING:
      draw_matches(
        target,
        answer.picture,
        picture,
        answer.features.locations[pairs[:, 0]] * answer.factor,
        features.locations[pairs[:, 1]] * factor,
        f"query - {image_id}: {result.num_inliers} RANSAC inliers of "
        f"{result.num_matches} putative matches",
      )

  # Gallery changes (worker thread) -------------------------------------------------------

  def _check_not_changed_elsewhere(self) -> None:
    """InputError when another program (build_index, a second server) saved the index since
    this one loaded it: saving the page's copy would silently undo that program's changes."""
    if saved_version(self.index_dir) != self._version:
      raise InputError(
        f"the index in {self.index_dir} was changed by another program since the server "
        "started; restart delf_serve to load it, then change the gallery again"
      )

  def _saved(self) -> None:
    self.stage.save(self.index_dir)
    self._version = saved_version(self.index_dir)

  def add_photo(self, data: bytes, image: np.ndarray, name: str, label: str | None) -> str:
    """Stores an uploaded photo (its bytes, decoded as ``image``) in the gallery folder,
    extracts and writes its features, adds it to the index with its label and saves the
    index; returns its new image id (from ``name``, made unique)."""
    label = check_label(label)
    self._check_not_changed_elsewhere()
    query = Query.of(self._extract(image))
    with self._lock:
      self._check_not_changed_elsewhere()
      image_id = self._new_id(name)
      suffix = pathlib.Path(name).suffix.lower()
      path = self.gallery_dir / f"{image_id}{suffix if suffix in IMAGE_SUFFIXES else '.img'}"
      self.gallery_dir.mkdir(parents=True, exist_ok=True)
      write_bytes_atomic(path, data)
      written = [path, self.features_dir / feature_file_name(image_id)]
      write_features(written[1], query.features)
      if query.global_descriptor is not None:  # Beside the .delf, as extraction writes it.
        written.append(self.features_dir / global_file_name(image_id))
        write_global_descriptor(written[2], query.global_descriptor)
      try:
        self.stage.add_image(image_id, query, path.resolve(), label)
        try:
          self._saved()
        except BaseException:  # Not saved (e.g. another writer holds the index): undo it.
          self.stage.delete_image(image_id)
          raise
      except BaseException:
        for file in written:
          file.unlink(missing_ok=True)
        raise
      self._features[image_id] = query.features
      if query.global_descriptor is not None:
        self._globals[image_id] = query.global_descriptor
    return image_id

  def remove_photo(self, image_id: str) -> None:
    """Deletes an image from the index and saves it; a photo the page added is deleted with
    its feature file, other files are left alone."""
    with self._lock:
      if image_id not in self.stage:
        raise InputError(f"no indexed photo {image_id[:80]!r}")
      self._check_not_changed_elsewhere()
      owned = self._is_gallery_photo(image_id)
      path = self.stage.image_path(image_id)
      self.stage.delete_image(image_id)
      try:
        self._saved()
      except BaseException:  # Not saved: memory goes back to the index as it is saved.
        self.stage = open_first_stage(self.index_dir, self.config.retrieval_config)
        raise
      self._features.pop(image_id, None)
      self._globals.pop(image_id, None)
      self._thumbnails = {k: v for k, v in self._thumbnails.items() if k[0] != image_id}
      if owned and path:
        pathlib.Path(path).unlink(missing_ok=True)
        (self.features_dir / feature_file_name(image_id)).unlink(missing_ok=True)
        (self.features_dir / global_file_name(image_id)).unlink(missing_ok=True)

  def _new_id(self, name: str) -> str:
    stem = re.sub(r"[^\w-]+", "_", pathlib.Path(name).stem).strip("_")[:60] or "photo"
    candidate, number = stem, 1
    while candidate in self.stage or (self.features_dir / feature_file_name(candidate)).exists():
      number += 1
      candidate = f"{stem}_{number}"
    return candidate


def is_image_id(text: str) -> bool:
  """Whether a request's ``text`` can name an image id (a file stem, as build_index makes
  them, spaces and any script included): 1 to MAX_ID_CHARS printable characters without a
  path separator, not "." or "..". The id is then only looked up in the index: it never
  becomes part of a path."""
  return (
    0 < len(text) <= MAX_ID_CHARS
    and text.isprintable()
    and "/" not in text
    and "\\" not in text
    and text not in (".", "..")
  )


def check_label(label: str | None) -> str | None:
  """A gallery label: stripped text of at most MAX_LABEL_CHARS printable characters, or None
  when empty; InputError otherwise."""
  label = (label or "").strip()
  if not label:
    return None
  if len(label) > MAX_LABEL_CHARS or not label.isprintable():
    raise InputError(f"a label is 1 to {MAX_LABEL_CHARS} printable characters")
  return label


def decode_upload(
  data: bytes, name: str, max_pixels: int, scratch: str | os.PathLike
) -> np.ndarray:
  """An uploaded photo's bytes as RGB [H, W, 3] through delf_ret.images.load_image (pixel limit
  checked from the header before decoding); ImageReadError naming the upload otherwise."""
  with tempfile.NamedTemporaryFile(dir=str(scratch), suffix=".upload") as handle:
    handle.write(data)
    handle.flush()
    try:
      return load_image(handle.name, max_pixels)
    except DelfRetError as error:
      raise ImageReadError(str(error).replace(handle.name, name or "the upload")) from None
