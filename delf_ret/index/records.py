"""Each indexed image's record (the absolute path of its file, its label) for any first stage.

A votes index keeps its records in its own ``meta.json`` (LocalFeatureIndex.image_path /
image_label, set_image_record). The ASMK and global first stages keep theirs in one file
beside their folders, ``<index>/records.json``::

  {"format_version": 1, "records": {"<image id>": {"path": "/abs/a.jpg" | null,
                                                   "label": "tower" | null}, ...}}

written atomically (delf_ret.atomic.atomic_write) under the index's writer lock, after the
stage itself is saved. Only images with a path or a label have an entry. A folder without
the file (an index built before records were kept for these stages) has no records and
still opens. Entries of images the stage no longer holds are left out by the reader
(:func:`read_records` with ``known``): a crash between saving the stage and its records
leaves at most such entries, and the next build writes the file anew.

The functions are plain data in, data out, so that builders of shards can merge them:
``read_records`` -> ``merge_records`` / ``updated_records`` -> ``write_records``.
No TensorFlow.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Collection
from typing import Iterable
from typing import Mapping

from delf_ret.atomic import atomic_write
from delf_ret.index.errors import LocalIndexError
from delf_ret.index.local_index import ImageRecord
from delf_ret.index.local_index import check_record
from delf_ret.index.local_index import parse_records

RECORDS_FILE = "records.json"
RECORDS_FORMAT = 1

Records = dict[str, ImageRecord]


class RecordsError(LocalIndexError):
  """A records file is unreadable, of another format version, or holds a malformed record."""


def records_path(index_dir: str | os.PathLike) -> pathlib.Path:
  """``<index_dir>/records.json``."""
  return pathlib.Path(index_dir) / RECORDS_FILE


def read_records(index_dir: str | os.PathLike, known: Collection[str] | None = None) -> Records:
  """The records of the index folder ({} when it has no records file).

  known: the image ids the stage holds; entries of other ids are left out (None: all kept).
  Raises RecordsError naming the file and the reason when it is unreadable, of another
  format version, or holds a malformed record.
  """
  path = records_path(index_dir)
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    return {}
  except (OSError, UnicodeDecodeError) as error:
    raise RecordsError(f"{path}: the image records are unreadable ({error})") from None
  try:
    data = json.loads(text)
    if not isinstance(data, dict):
      raise ValueError(f"a {type(data).__name__}, not an object")
    version = data.get("format_version")
    if version != RECORDS_FORMAT:
      raise RecordsError(f"{path}: format version {version!r}, expected {RECORDS_FORMAT}")
    records = parse_records(data.get("records"))
  except (ValueError, TypeError) as error:
    raise RecordsError(f"{path}: the image records are damaged ({error})") from None
  if known is not None:
    known = set(known)
    records = {image_id: r for image_id, r in records.items() if image_id in known}
  return records


def write_records(index_dir: str | os.PathLike, records: Mapping[str, ImageRecord]) -> None:
  """Writes ``<index_dir>/records.json`` atomically (entries without path and label are left
  out; ids sorted). The caller holds the index folder's writer lock."""
  kept = {
    image_id: {"path": record.path, "label": record.label}
    for image_id, record in sorted(records.items())
    if record != ImageRecord()
  }
  data = json.dumps({"format_version": RECORDS_FORMAT, "records": kept}, ensure_ascii=False)
  with atomic_write(records_path(index_dir), "w") as handle:
    handle.write(data)


def updated_records(
  records: Mapping[str, ImageRecord],
  paths: Mapping[str, str | os.PathLike] | None = None,
  labels: Mapping[str, str] | None = None,
  remove: Iterable[str] = (),
) -> Records:
  """A copy of ``records`` with new paths (made absolute) and labels, and ``remove``'s ids
  dropped.

  paths: image id -> its image file; labels: image id -> label, "" clearing it (an
  unlabelled image, as a labels file writes it). Fields not given stay as they were.
  Raises RecordsError naming the image for an unusable path or label.
  """
  result = dict(records)
  for image_id in remove:
    result.pop(image_id, None)
  for image_id in {*(paths or {}), *(labels or {})}:
    old = result.get(image_id, ImageRecord())
    path = old.path
    if paths is not None and image_id in paths:
      path = os.path.abspath(os.fspath(paths[image_id]))
    label = old.label
    if labels is not None and image_id in labels:
      label = labels[image_id] or None
    try:
      result[image_id] = check_record(image_id, path, label)
    except ValueError as error:
      raise RecordsError(f"cannot record {error}") from None
  return result


def merge_records(parts: Iterable[Mapping[str, ImageRecord]]) -> Records:
  """The records of several indexes (e.g. shards) in one: an image in several parts keeps the
  fields of the last part that records them (a later path or label wins)."""
  merged: Records = {}
  for part in parts:
    for image_id, record in part.items():
      old = merged.get(image_id, ImageRecord())
      merged[image_id] = ImageRecord(
        record.path if record.path is not None else old.path,
        record.label if record.label is not None else old.label,
      )
  return merged


def update_records_file(
  index_dir: str | os.PathLike,
  known: Collection[str],
  paths: Mapping[str, str | os.PathLike] | None = None,
  labels: Mapping[str, str] | None = None,
  remove: Iterable[str] = (),
) -> Records:
  """Reads, updates (:func:`updated_records`) and, when anything changed, rewrites the
  records file of ``index_dir``, keeping only the ``known`` ids the stage holds; returns the
  records. The caller holds the index folder's writer lock."""
  old = read_records(index_dir)
  new = updated_records(old, paths, labels, remove)
  known = set(known)
  new = {image_id: record for image_id, record in new.items() if image_id in known}
  if new != old or (not records_path(index_dir).is_file() and new):
    write_records(index_dir, new)
  return new
