"""Building an index in shards, on many workers, and merging the shards into one index.

The steps, each usable on its own (``build_index_beam`` runs the second one as an
Apache Beam pipeline, delf_ret.index.beam_pipeline; ``merge_index`` runs the last):

1. :func:`train_quantiser`: the only thing an index learns (the IVF-PQ coarse
   centroids and product quantiser) is trained once, on a sample of the feature
   files (exactly the sample ``build_index`` trains on), and saved as an empty
   index, the *quantiser*. Flat and HNSW indexes learn nothing: theirs is empty.
2. :func:`plan_shards` cuts the sorted feature files into contiguous ranges and
   :func:`build_shard` indexes one range into a shard folder (an index saved as
   ``build_index`` saves one, plus ``shard.json``). The image of the feature file
   at position p of the sorted list gets slot p, whatever the number of shards,
   so slots are unique across shards and a merged index equals the index
   ``build_index`` makes of the same files (slot for slot when no file fails).
3. :func:`merge_shards` checks that the shards were built from one plan with one
   quantiser and settings (same ``shard.json`` fields), that their slot ranges
   neither overlap nor leave a gap, and merges them into one index folder,
   written crash-safely under its writer lock like every index (refused when
   the folder already holds one): faiss ``merge_from`` moves the entries of IVF
   inverted lists (and appends flat vectors); an HNSW graph is built anew from
   the shards' vectors (graphs cannot be merged), in slot order. Image records
   (paths, labels) come along.

The same plan, ``shard.json`` and checks serve the shards of the other first stages
(``stage`` in ``shard.json``: "asmk", "global"; delf_ret.retrieval.stage_shards builds and
merges those with :func:`shard_info`, :func:`finished_shard` and :func:`save_shard`, each
shard's image records in a ``records.json`` of delf_ret.index.records); shards of different
stages are never merged.

A shard whose ``shard.json`` matches its plan is finished: building it again does
nothing but bring its image records in step with the plan's (the paths and labels of the
current run win, as in every first stage's shards), so a killed pipeline resumes. Shard
folders must be on a file system that the merging machine reads (a local folder for the
local runner, a shared mount on a cluster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
from typing import Any
from typing import Callable
from typing import Mapping
from typing import Sequence

import faiss
import numpy as np

from delf_ret.atomic import atomic_write
from delf_ret.features import FeatureFileError
from delf_ret.features import image_id_of
from delf_ret.features import read_features
from delf_ret.index.builder import descriptors_for
from delf_ret.index.builder import train_from_files
from delf_ret.index.errors import LocalIndexError
from delf_ret.index.local_index import ImageRecord
from delf_ret.index.local_index import IndexParams
from delf_ret.index.local_index import LocalFeatureIndex
from delf_ret.index.local_index import current_faiss_file
from delf_ret.index.local_index import read_image_records
from delf_ret.index.local_index import remove_leftover_versions
from delf_ret.index.lock import writer_lock

SHARD_FILE = "shard.json"  # In a shard folder, beside the index: written last.
SHARD_FORMAT = 1
QUANTISER_DIR = "quantiser"  # The trained, empty index in a shards folder.
SHARD_NAME = "shard-{number:05d}-of-{count:05d}"

Failures = list[tuple[str, str]]


class ShardError(LocalIndexError):
  """Shards that cannot be merged (other settings, overlapping slots, unfinished) or built."""


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """The feature files of one shard and the slots they get.

  number / count: this shard's number (0-based) and how many the plan has;
  first_slot: the slot of files[0] (files[i] gets first_slot + i); total_slots: the
  number of feature files of the whole plan; files: feature file paths; image_paths /
  labels: the record of each file's image (None: none), aligned with files.
  """

  number: int
  count: int
  first_slot: int
  total_slots: int
  files: tuple[str, ...]
  image_paths: tuple[str | None, ...]
  labels: tuple[str | None, ...]

  @property
  def end_slot(self) -> int:
    """One past the last slot of this shard."""
    return self.first_slot + len(self.files)

  @property
  def name(self) -> str:
    """The shard's folder name."""
    return SHARD_NAME.format(number=self.number, count=self.count)


def plan_shards(
  feature_paths: Sequence[str | os.PathLike],
  num_shards: int,
  image_paths: Mapping[str, str | os.PathLike] | None = None,
  labels: Mapping[str, str] | None = None,
) -> list[ShardPlan]:
  """Cuts the feature files (in slot order: build_index's order, sorted by name for a
  folder) into ``num_shards`` contiguous ranges of nearly equal size (at most one shard
  per file). ``image_paths`` / ``labels``: image id -> image file / label ("": none).
  """
  if num_shards < 1:
    raise ShardError(f"the number of shards must be at least 1, got {num_shards}")
  files = [str(path) for path in feature_paths]
  if not files:
    raise ShardError("no feature files to build shards of")
  image_paths, labels = image_paths or {}, labels or {}
  paths = {name: os.path.abspath(path) for name, path in image_paths.items()}
  count = min(num_shards, len(files))
  bounds = np.linspace(0, len(files), count + 1).round().astype(int).tolist()
  plans = []
  for number, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
    ids = [image_id_of(path) for path in files[start:end]]
    plans.append(
      ShardPlan(
        number,
        count,
        start,
        len(files),
        tuple(files[start:end]),
        tuple(paths.get(name) for name in ids),
        tuple(labels.get(name) or None for name in ids),
      )
    )
  return plans


def train_quantiser(
  feature_paths: Sequence[pathlib.Path],
  quantiser_dir: str | os.PathLike,
  params: IndexParams,
  dim: int,
  log: Callable[[str], None] = print,
) -> str:
  """Trains the index's quantisers on a sample of the feature files (as build_index does;
  nothing for flat and HNSW indexes) and saves the empty index at ``quantiser_dir``.

  Returns its fingerprint (:func:`fingerprint`). A folder that already holds a quantiser
  of these settings is kept (a resumed run); one of other settings is refused.
  """
  quantiser_dir = pathlib.Path(quantiser_dir)
  if (quantiser_dir / "CURRENT").is_file():
    saved = LocalFeatureIndex.load(quantiser_dir, expected_dim=dim)
    if len(saved) or _settings(saved.params) != _settings(params):
      raise ShardError(
        f"{quantiser_dir} holds a quantiser of other settings (or images); remove it or use "
        f"another shards folder"
      )
    log(f"reusing the trained quantiser in {quantiser_dir}")
    return fingerprint(saved)
  index = LocalFeatureIndex(dim, params)
  if index.needs_training:
    train_from_files(index, list(feature_paths), params, log)
  index.save(quantiser_dir)
  return fingerprint(index)


def fingerprint(index: LocalFeatureIndex) -> str:
  """sha256 of an empty index's faiss serialisation: its type, settings and trained
  quantisers (shards built on one quantiser share it)."""
  if len(index) or index.num_descriptors:
    raise ShardError("a quantiser must hold no images")
  return hashlib.sha256(faiss.serialize_index(index._faiss).tobytes()).hexdigest()


def _settings(params: IndexParams) -> dict[str, Any]:
  """The settings shards must share: every index parameter but the search breadth."""
  settings = dataclasses.asdict(params)
  del settings["nprobe"], settings["ef_search"]
  return settings


VOTES = "votes"  # The first stage of a shard.json without "stage" (written before it existed).


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  """A finished shard's ``shard.json``: its plan (number, count, slots), settings and failures.

  stage: the first stage the shard is part of ("votes": a LocalFeatureIndex; others see
  delf_ret.retrieval.stage_shards); dim, settings, quantiser: what its shards must share (the
  descriptor dimension, the settings, a fingerprint of what was trained once); images: images
  it holds; failures: (feature file, reason) of the files it could not add.
  """

  folder: pathlib.Path
  number: int
  count: int
  first_slot: int
  end_slot: int
  total_slots: int
  dim: int
  settings: dict[str, Any]
  quantiser: str
  images: int
  failures: Failures
  stage: str = VOTES


def shard_info(
  plan: ShardPlan,
  shards_dir: str | os.PathLike,
  stage: str,
  dim: int,
  settings: dict[str, Any],
  quantiser: str,
) -> ShardInfo:
  """The info an unbuilt shard of ``plan`` will have in ``shards_dir/<plan.name>`` (no images,
  no failures yet)."""
  return ShardInfo(
    pathlib.Path(shards_dir) / plan.name,
    plan.number,
    plan.count,
    plan.first_slot,
    plan.end_slot,
    plan.total_slots,
    dim,
    settings,
    quantiser,
    0,
    [],
    stage,
  )


def finished_shard(expected: ShardInfo) -> ShardInfo | None:
  """The info of the shard finished in ``expected.folder`` when it was built as ``expected``
  says (its images and failures aside); None when it is not (unfinished, or another plan's
  or settings')."""
  done = _finished(expected.folder)
  if done is not None and dataclasses.replace(done, images=0, failures=[]) == expected:
    return done
  return None


def save_shard(info: ShardInfo, save: Callable[[pathlib.Path], None]) -> None:
  """Writes a shard crash-safely under its folder's writer lock: the old ``shard.json`` is
  removed (unfinished until the end), ``save(folder)`` writes the shard's index, then the new
  ``shard.json`` is written atomically."""
  folder = info.folder
  with writer_lock(folder):
    (folder / SHARD_FILE).unlink(missing_ok=True)
    remove_leftover_versions(folder)
    save(folder)
    with atomic_write(folder / SHARD_FILE, "w") as handle:
      json.dump(_to_json(info), handle)


def build_shard(
  plan: ShardPlan,
  quantiser_dir: str | os.PathLike,
  shards_dir: str | os.PathLike,
  log: Callable[[str], None] = print,
) -> ShardInfo:
  """Indexes the feature files of ``plan`` into ``shards_dir/<plan.name>``, starting from the
  quantiser at ``quantiser_dir``; returns the shard's info (its failures: files that could
  not be added, as build_index reports them). A shard already finished with this plan and
  quantiser is not built again (its image records rewritten when the plan's differ, as the
  ASMK and global shards': a resumed run with other image paths or labels); an unfinished
  one or another plan's is rebuilt.
  """
  quantiser = LocalFeatureIndex.load(quantiser_dir)
  expected = shard_info(
    plan, shards_dir, VOTES, quantiser.dim, _settings(quantiser.params), fingerprint(quantiser)
  )
  done = finished_shard(expected)
  if done is not None:
    _update_records(done, plan, log)
    return done
  index, failures = quantiser, []
  for slot, path, image_path, label in zip(
    range(plan.first_slot, plan.end_slot), plan.files, plan.image_paths, plan.labels
  ):
    try:
      descriptors = descriptors_for(read_features(path), index.dim, pathlib.Path(path))
    except FeatureFileError as error:
      log(f"{plan.name}: ERROR {error}")
      failures.append((path, str(error)))
      continue
    index._add_at(slot, image_id_of(path), descriptors, image_path, label)
  index._reserve_slots(plan.end_slot)
  info = dataclasses.replace(expected, images=len(index), failures=failures)
  save_shard(info, index.save)
  log(f"{plan.name}: {len(index)} images in slots {plan.first_slot}..{plan.end_slot - 1}")
  return info


def _update_records(done: ShardInfo, plan: ShardPlan, log: Callable[[str], None]) -> None:
  """Gives each image of the finished votes shard ``done`` the record (path, label) that
  ``plan`` gives it, none where the plan has none. The records are compared from the shard's
  metadata alone; only when one changed is the shard loaded and saved again (crash-safely,
  :func:`save_shard`)."""
  wanted = {
    image_id_of(file): ImageRecord(path, label)
    for file, path, label in zip(plan.files, plan.image_paths, plan.labels)
  }
  changed = [
    name
    for name, record in read_image_records(done.folder).items()
    if record != wanted.get(name, ImageRecord())
  ]
  if not changed:
    log(f"{plan.name}: already built ({done.images} images)")
    return
  shard = LocalFeatureIndex.load(done.folder, expected_dim=done.dim)
  for name in changed:
    record = wanted.get(name, ImageRecord())
    shard.set_image_record(name, record.path or "", record.label or "")  # "": none.
  save_shard(done, shard.save)
  log(f"{plan.name}: already built ({done.images} images), image records updated")


def _to_json(info: ShardInfo) -> dict[str, Any]:
  fields = dataclasses.asdict(info)
  del fields["folder"]
  return {"format": SHARD_FORMAT, **fields}


def _finished(folder: pathlib.Path) -> ShardInfo | None:
  """The info of a finished shard in ``folder`` (None: none, or unreadable)."""
  try:
    return read_shard(folder)
  except ShardError:
    return None


def read_shard(folder: str | os.PathLike) -> ShardInfo:
  """The ``shard.json`` of a finished shard, checked; ShardError (naming the folder) if the
  shard is unfinished or the file is damaged."""
  folder = pathlib.Path(folder)
  path = folder / SHARD_FILE
  if not path.is_file():
    raise ShardError(f"{folder} is not a finished index shard ({SHARD_FILE} missing)")
  try:
    stored = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(stored, dict) or stored.pop("format", None) != SHARD_FORMAT:
      raise ValueError(f"not a shard description of format {SHARD_FORMAT}")
    info = ShardInfo(folder=folder, **stored)
    numbers = (info.number, info.count, info.first_slot, info.end_slot, info.total_slots, info.dim)
    if not all(isinstance(n, int) and n >= 0 for n in (*numbers, info.images)):
      raise ValueError("a count or slot is not a non-negative integer")
    if not (info.number < info.count and info.first_slot <= info.end_slot <= info.total_slots):
      raise ValueError("shard number or slot range out of bounds")
    if not isinstance(info.settings, dict) or not isinstance(info.quantiser, str):
      raise ValueError("settings or quantiser malformed")
    if not isinstance(info.stage, str):
      raise ValueError("first stage malformed")
    failures = [(str(path), str(reason)) for path, reason in info.failures]
  except (OSError, ValueError, TypeError) as error:
    raise ShardError(f"{path} is damaged: {error}") from None
  return dataclasses.replace(info, failures=failures)


def check_shards(infos: Sequence[ShardInfo]) -> list[ShardInfo]:
  """The shards in slot order; ShardError unless they share settings, descriptor dimension,
  quantiser and plan, and their slot ranges cover the plan without overlap or gap."""
  if not infos:
    raise ShardError("no shards to merge")
  first = infos[0]
  for info in infos[1:]:
    for what in ("stage", "settings", "dim", "quantiser", "count", "total_slots"):
      if getattr(info, what) != getattr(first, what):
        raise ShardError(
          f"shards {first.folder} and {info.folder} were made with other {_WHAT[what]}: "
          f"{_shown(getattr(first, what))} vs {_shown(getattr(info, what))}; rebuild them "
          "with one quantiser and plan"
        )
  ordered = sorted(infos, key=lambda info: (info.first_slot, info.end_slot))
  end, previous = 0, first
  for info in ordered:
    if info.first_slot < end:
      raise ShardError(
        f"shards {previous.folder} and {info.folder} overlap: slots "
        f"{previous.first_slot}..{previous.end_slot - 1} and {info.first_slot}..{info.end_slot - 1}"
      )
    if info.first_slot > end:
      raise ShardError(f"no shard holds slots {end}..{info.first_slot - 1}: a shard is missing")
    end, previous = info.end_slot, info
  if end != first.total_slots:
    raise ShardError(f"no shard holds slots {end}..{first.total_slots - 1}: a shard is missing")
  return ordered


_WHAT = {
  "stage": "first stages",
  "settings": "index settings",
  "dim": "descriptor dimensions",
  "quantiser": "trained quantisers",
  "count": "numbers of shards",
  "total_slots": "feature file lists",
}


def _shown(value: Any) -> str:
  text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
  return text if len(text) <= 60 else text[:16] + "..."


def shard_folders(shards_dir: str | os.PathLike) -> list[pathlib.Path]:
  """The shard folders (``shard-*``) in a shards folder, sorted; ShardError if there are none."""
  shards_dir = pathlib.Path(shards_dir)
  if not shards_dir.is_dir():
    raise ShardError(f"shards folder not found: {shards_dir}")
  folders = sorted(path for path in shards_dir.glob("shard-*") if path.is_dir())
  if not folders:
    raise ShardError(f"no shard folders (shard-*) in {shards_dir}")
  return folders


def merge_shards(
  shard_dirs: Sequence[str | os.PathLike],
  index_dir: str | os.PathLike,
  log: Callable[[str], None] = print,
  on_disk: bool = False,
) -> tuple[LocalFeatureIndex, Failures]:
  """Merges finished shards (checked by :func:`check_shards`) into a new index at
  ``index_dir``, saved crash-safely under its writer lock; ShardError if ``index_dir``
  already holds an index. Returns the index and the shards' failures.

  on_disk: IVF-PQ only (not pq_fast_scan): the merged inverted lists are written to an
  on-disk data file (faiss.contrib.ondisk.merge_ondisk, reading the shards memory-mapped)
  instead of being gathered in memory, for an index larger than memory; the index is
  then read-only (delf_ret.index.local_index).
  """
  infos = check_shards([read_shard(folder) for folder in shard_dirs])
  if infos[0].stage != VOTES:
    raise ShardError(
      f"{infos[0].folder} is a shard of first_stage {infos[0].stage!r}, not of a votes index "
      "(delf_ret.retrieval.stage_shards merges it; merge_index does)"
    )
  index_dir = pathlib.Path(index_dir)
  with writer_lock(index_dir):
    if (index_dir / "CURRENT").is_file():
      raise ShardError(f"{index_dir} already holds an index; merge the shards into a new folder")
    remove_leftover_versions(index_dir)
    merged: LocalFeatureIndex | None = None
    for number, info in enumerate(infos, 1):
      shard = _load_shard(info)
      if merged is None and on_disk:
        files = [str(current_faiss_file(each.folder)) for each in infos]
        merged = LocalFeatureIndex._merged_on_disk(shard, files)
      if merged is None:
        merged = shard
      else:
        duplicate = next((name for name in shard.image_ids() if name in merged), None)
        if duplicate is not None:
          raise ShardError(f"image {duplicate!r} is in {info.folder} and in an earlier shard")
        if on_disk:
          merged._take_images_of(shard)  # The descriptors: merged on disk by save().
        else:
          merged._merge_from(shard)
      log(f"[{number}/{len(infos)}] merged {info.folder.name}: {len(merged)} images")
    assert merged is not None  # check_shards refuses no shards.
    merged.save(index_dir)
  log(f"index at {index_dir}: {len(merged)} images from {len(infos)} shards")
  return merged, [failure for info in infos for failure in info.failures]


def _load_shard(info: ShardInfo) -> LocalFeatureIndex:
  """The shard's index, checked against its shard.json (settings, images, slots)."""
  shard = LocalFeatureIndex.load(info.folder, expected_dim=info.dim)
  slots = [shard.slot_of(name) for name in shard.image_ids()]
  if _settings(shard.params) != info.settings or len(shard) != info.images:
    raise ShardError(f"{info.folder}: the index does not match {SHARD_FILE} (settings or images)")
  if slots and not (info.first_slot <= min(slots) and max(slots) < info.end_slot):
    raise ShardError(f"{info.folder}: images outside the shard's slots per {SHARD_FILE}")
  return shard


def build_sharded(
  feature_paths: Sequence[pathlib.Path],
  index_dir: str | os.PathLike,
  shards_dir: str | os.PathLike,
  params: IndexParams,
  num_shards: int,
  dim: int,
  image_paths: Mapping[str, str | os.PathLike] | None = None,
  labels: Mapping[str, str] | None = None,
  log: Callable[[str], None] = print,
) -> tuple[LocalFeatureIndex, Failures]:
  """All three steps in this process, one shard after the other (what the Beam pipeline does
  with the shards in parallel): the merged index at ``index_dir`` and the failures."""
  shards_dir = pathlib.Path(shards_dir)
  train_quantiser(feature_paths, shards_dir / QUANTISER_DIR, params, dim, log)
  plans = plan_shards(feature_paths, num_shards, image_paths, labels)
  for plan in plans:
    build_shard(plan, shards_dir / QUANTISER_DIR, shards_dir, log)
  return merge_shards([shards_dir / plan.name for plan in plans], index_dir, log)


def remove_shards(shards_dir: str | os.PathLike, folders: Sequence[str | os.PathLike]) -> None:
  """Removes the quantiser and the shard ``folders`` of ``shards_dir`` (after a merge), and the
  folder itself if nothing else is in it."""
  shards_dir = pathlib.Path(shards_dir)
  for folder in [shards_dir / QUANTISER_DIR, *folders]:
    shutil.rmtree(folder, ignore_errors=True)
  with contextlib.suppress(OSError):
    shards_dir.rmdir()  # Only when nothing else is in it.
