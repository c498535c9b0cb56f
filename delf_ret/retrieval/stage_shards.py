"""Building the ASMK and global first stages in shards, on many workers, and merging them.

The steps of delf_ret.index.shards (one plan of contiguous ranges of the sorted feature
files, ``shard.json`` per shard, the same checks before a merge), for the first stages
that are not the votes index (``retrieval_config.first_stage``; delf_ret.retrieval.first_stage):

* ``"asmk"``: the codebook is trained once, on the sample ``build_index`` trains on (the
  descriptors of at most CODEBOOK_TRAINING_IMAGES feature files, evenly spaced in the sorted
  list; size by the same rule), and saved as an empty AsmkIndex, the shards' *quantiser*.
  Each shard aggregates its files over that codebook (:func:`build_asmk_shard`); the merge
  appends the shards in slot order (AsmkIndex.merge_from: nothing is aggregated again).
* ``"global"``: each shard holds the raw global descriptors (``.delg_global`` beside each
  ``.delf``) of its files (:func:`build_global_shard`); the merge concatenates them in slot
  order and learns the PCA-whitening once, on all of them, by build_index's rule
  (first_stage.whitening_rule), then stores the whitened descriptors.

The merged stage is saved where build_index saves it (``<index>/asmk/``, or ``<index>/global/``
with its ``whitening.npz``), so query_index and perform_retrieval open it as they open a
build_index result, and it ranks the same images with the same scores (same codebook, same
images in the same order; same whitening of the same descriptors). The Beam pipeline runs
the shard steps (delf_ret.index.beam_pipeline.run_shard_steps); ``build_index_beam`` and
``merge_index`` are the tools.

Image records (absolute paths, labels; delf_ret.index.records) come along as with votes
shards: the plan gives each file's record, each shard keeps those of the images it holds in
its own ``records.json``, and the merge writes them to ``<index>/records.json`` (as
build_index records them) under the index's writer lock, after the stage. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from typing import Any
from typing import Callable
from typing import Collection
from typing import Mapping
from typing import Sequence

import numpy as np

from delf_ret.config import DelfRetrievalConfig
from delf_ret.extract.global_features import apply_whitening
from delf_ret.extract.global_features import learn_pca_whitening
from delf_ret.features import FeatureFileError
from delf_ret.features import global_file_name
from delf_ret.features import image_id_of
from delf_ret.features import read_global_descriptor
from delf_ret.index.asmk import STORED_PARAMS
from delf_ret.index.asmk import AsmkIndex
from delf_ret.index.asmk import AsmkParams
from delf_ret.index.beam_pipeline import BeamIndexError
from delf_ret.index.beam_pipeline import require_beam_for_index
from delf_ret.index.beam_pipeline import run_shard_steps
from delf_ret.index.errors import LocalIndexError
from delf_ret.index.global_index import GlobalDescriptorIndex
from delf_ret.index.lock import writer_lock
from delf_ret.index.records import Records
from delf_ret.index.records import RecordsError
from delf_ret.index.records import merge_records
from delf_ret.index.records import read_records
from delf_ret.index.records import records_path
from delf_ret.index.records import updated_records
from delf_ret.index.records import write_records
from delf_ret.index.shards import QUANTISER_DIR
from delf_ret.index.shards import VOTES
from delf_ret.index.shards import ShardError
from delf_ret.index.shards import ShardInfo
from delf_ret.index.shards import ShardPlan
from delf_ret.index.shards import check_shards
from delf_ret.index.shards import finished_shard
from delf_ret.index.shards import merge_shards
from delf_ret.index.shards import plan_shards
from delf_ret.index.shards import read_shard
from delf_ret.index.shards import remove_shards
from delf_ret.index.shards import save_shard
from delf_ret.index.shards import shard_info
from delf_ret.retrieval.first_stage import ASMK_FOLDER
from delf_ret.retrieval.first_stage import GLOBAL_FOLDER
from delf_ret.retrieval.first_stage import WHITENING_IMAGES_PER_DIM
from delf_ret.retrieval.first_stage import Failures as FirstStageFailures
from delf_ret.retrieval.first_stage import FirstStageError
from delf_ret.retrieval.first_stage import built_stage
from delf_ret.retrieval.first_stage import read_descriptors
from delf_ret.retrieval.first_stage import recorded_settings
from delf_ret.retrieval.first_stage import train_asmk
from delf_ret.retrieval.first_stage import whitening_rule
from delf_ret.retrieval.first_stage import write_whitening

ASMK = "asmk"
GLOBAL = "global"
SHARDED_STAGES = (ASMK, GLOBAL)

Failures = list[tuple[str, str]]
Log = Callable[[str], None]


# ASMK ------------------------------------------------------------------------------


def asmk_fingerprint(asmk: AsmkIndex) -> str:
  """sha256 of an ASMK index's codebook, its stored settings and extraction settings record
  (shards aggregated over one trained codebook share it)."""
  digest = hashlib.sha256(asmk.codebook().tobytes())
  digest.update(json.dumps(_asmk_settings(asmk), sort_keys=True).encode())
  return digest.hexdigest()


def _asmk_settings(asmk: AsmkIndex) -> dict[str, Any]:
  """What ASMK shards must share besides the codebook: STORED_PARAMS and the extraction
  settings record of the descriptors."""
  params = dataclasses.asdict(asmk.params)
  return {"params": {name: params[name] for name in STORED_PARAMS}, "extraction": asmk.settings}


def train_asmk_quantiser(
  feature_paths: Sequence[pathlib.Path],
  quantiser_dir: str | os.PathLike,
  params: AsmkParams,
  log: Log = print,
) -> str:
  """Trains the ASMK codebook once (as build_index would on these files) and saves it as an
  empty AsmkIndex at ``quantiser_dir``; returns its fingerprint. A folder already holding
  an empty one of these settings is kept (a resumed run); another is refused."""
  quantiser_dir = pathlib.Path(quantiser_dir)
  paths = [pathlib.Path(path) for path in feature_paths]
  settings = recorded_settings(paths[0].parent) if paths else None
  if (quantiser_dir / "CURRENT").is_file():
    saved = AsmkIndex.load(quantiser_dir)
    stored = {name: getattr(params, name) for name in STORED_PARAMS}
    stored["codebook_size"] = params.codebook_size or saved.params.codebook_size
    if len(saved) or _asmk_settings(saved) != {"params": stored, "extraction": settings}:
      raise ShardError(
        f"{quantiser_dir} holds an ASMK codebook of other settings (or images); remove it or "
        "use another shards folder"
      )
    log(f"reusing the trained ASMK codebook in {quantiser_dir}")
    return asmk_fingerprint(saved)
  if not paths:
    raise FirstStageError("no feature files to build the ASMK index of")
  asmk = train_asmk(paths, params, settings, log)
  asmk.save(quantiser_dir)
  return asmk_fingerprint(asmk)


def build_asmk_shard(
  plan: ShardPlan, quantiser_dir: str | os.PathLike, shards_dir: str | os.PathLike, log: Log = print
) -> ShardInfo:
  """Aggregates the feature files of ``plan`` over the codebook at ``quantiser_dir`` into an
  AsmkIndex in ``shards_dir/<plan.name>``, with the plan's image records (paths, labels) of
  the images it holds in its ``records.json`` (files that cannot be added are the shard's
  failures, as build_index reports them); a shard finished with this plan and codebook is
  kept (its records rewritten when the plan's differ)."""
  asmk = AsmkIndex.load(quantiser_dir)
  expected = shard_info(
    plan, shards_dir, ASMK, asmk.dim, _asmk_settings(asmk), asmk_fingerprint(asmk)
  )
  records = plan_records(plan)
  done = _finished_with_records(
    expected, records, lambda folder: AsmkIndex.load(folder).image_ids(), log
  )
  if done is not None:
    return done
  failures: FirstStageFailures = []
  for file in plan.files:
    path = pathlib.Path(file)
    descriptors = read_descriptors(path, failures)
    if descriptors is None:
      continue
    try:
      asmk.add(image_id_of(path), descriptors, asmk.settings)
    except LocalIndexError as error:
      failures.append((path, f"{path}: {error}"))
  info = dataclasses.replace(
    expected, images=len(asmk), failures=[(str(path), reason) for path, reason in failures]
  )
  save_shard(info, _saver(asmk.save, _held(records, asmk.image_ids())))
  log(f"{plan.name}: {len(asmk)} images aggregated")
  return info


# Records ----------------------------------------------------------------------------


def plan_records(plan: ShardPlan) -> Records:
  """The image records (absolute path, label) that ``plan`` gives its files' images (only
  images with a path or a label); RecordsError naming an image whose path or label cannot
  be recorded."""
  ids = [image_id_of(file) for file in plan.files]
  paths = {name: path for name, path in zip(ids, plan.image_paths) if path is not None}
  labels = {name: label for name, label in zip(ids, plan.labels) if label is not None}
  return updated_records({}, paths, labels)


def _held(records: Records, image_ids: Collection[str]) -> Records:
  """The records of the images a shard holds."""
  held = set(image_ids)
  return {name: record for name, record in records.items() if name in held}


def _saver(
  save: Callable[[pathlib.Path], None], records: Records
) -> Callable[[pathlib.Path], None]:
  """``save`` (a shard's index), then the shard's ``records.json`` in the same folder."""

  def save_with_records(folder: pathlib.Path) -> None:
    save(folder)
    write_records(folder, records)

  return save_with_records


def _finished_with_records(
  expected: ShardInfo,
  records: Records,
  held_ids: Callable[[pathlib.Path], Collection[str]],
  log: Log,
) -> ShardInfo | None:
  """finished_shard(expected); its ``records.json`` rewritten (under the folder's writer lock)
  when it holds other records than ``records`` gives the images of the shard (``held_ids``:
  the ids its index holds), as after a resumed run with other image paths or labels."""
  done = finished_shard(expected)
  if done is None:
    return None
  held = _held(records, held_ids(done.folder))
  try:
    stored = read_records(done.folder)
  except RecordsError:
    stored = None
  if stored != held:
    with writer_lock(done.folder):
      write_records(done.folder, held)
    log(f"{done.folder.name}: already built ({done.images} images), image records updated")
  else:
    log(f"{done.folder.name}: already built ({done.images} images)")
  return done


# Global descriptors -----------------------------------------------------------------


def global_dimension(feature_paths: Sequence[pathlib.Path]) -> int:
  """The dimension of the first readable ``.delg_global`` file beside ``feature_paths`` (the
  one build_index compares the others with); FirstStageError, as build_index's, when none is
  there."""
  for path in feature_paths:
    target = pathlib.Path(path).parent / global_file_name(image_id_of(path))
    try:
      return int(read_global_descriptor(target).shape[0])
    except (FeatureFileError, OSError):
      continue
  folders = sorted({str(pathlib.Path(path).parent) for path in feature_paths})
  raise FirstStageError(
    f"no .delg_global files in {', '.join(folders)}: first_stage global needs the images' "
    f"global descriptors; extract them with use_global_features: true"
  )


def build_global_shard(
  plan: ShardPlan, shards_dir: str | os.PathLike, dim: int, log: Log = print
) -> ShardInfo:
  """The raw global descriptors (``<id>.delg_global`` beside each feature file of ``plan``)
  in a GlobalDescriptorIndex in ``shards_dir/<plan.name>``; a missing or unreadable file, or
  one of another dimension than ``dim``, is a failure. The plan's image records of the
  images it holds go to its ``records.json``. A finished shard is kept (its records rewritten
  when the plan's differ)."""
  expected = shard_info(plan, shards_dir, GLOBAL, dim, {}, "")
  records = plan_records(plan)
  done = _finished_with_records(
    expected, records, lambda folder: GlobalDescriptorIndex.load(folder, dim).image_ids(), log
  )
  if done is not None:
    return done
  failures: Failures = []
  ids: list[str] = []
  rows: list[np.ndarray] = []
  for file in plan.files:
    path = pathlib.Path(file)
    target = path.parent / global_file_name(image_id_of(path))
    try:
      row = read_global_descriptor(target)
    except (FeatureFileError, OSError) as error:
      failures.append((str(path), f"{target}: {error}"))
      continue
    if row.shape != (dim,):
      failures.append((str(path), f"{target}: {row.shape[0]}-d, the others {dim}-d"))
      continue
    ids.append(image_id_of(path))
    rows.append(row)
  table = GlobalDescriptorIndex(dim)
  if ids:
    table.add_many(ids, np.stack(rows))
  info = dataclasses.replace(expected, images=len(table), failures=failures)
  save_shard(info, _saver(table.save, _held(records, ids)))
  log(f"{plan.name}: {len(table)} global descriptors")
  return info


# Merging ---------------------------------------------------------------------------


def _merge_asmk(infos: list[ShardInfo], folder: pathlib.Path, log: Log) -> list[str]:
  merged: AsmkIndex | None = None
  for number, info in enumerate(infos, 1):
    shard = AsmkIndex.load(info.folder)
    if len(shard) != info.images:
      raise ShardError(f"{info.folder}: the ASMK index does not match its shard.json (images)")
    if merged is None:
      merged = shard
    else:
      try:
        merged.merge_from(shard)
      except LocalIndexError as error:
        raise ShardError(f"cannot merge {info.folder}: {error}") from None
    log(f"[{number}/{len(infos)}] merged {info.folder.name}: {len(merged)} images")
  assert merged is not None  # check_shards refuses no shards.
  merged.save(folder)
  return merged.image_ids()


def _merge_global(infos: list[ShardInfo], folder: pathlib.Path, log: Log) -> list[str]:
  ids: list[str] = []
  seen: set[str] = set()
  parts: list[np.ndarray] = []
  for info in infos:
    shard = GlobalDescriptorIndex.load(info.folder, expected_dim=info.dim)
    if len(shard) != info.images:
      raise ShardError(f"{info.folder}: the global index does not match its shard.json (images)")
    shard_ids, rows = shard.descriptors()
    duplicate = next((name for name in shard_ids if name in seen), None)
    if duplicate is not None:
      raise ShardError(f"image {duplicate!r} is in {info.folder} and in an earlier shard")
    ids += shard_ids
    seen.update(shard_ids)
    parts.append(rows)
  if not ids:
    raise ShardError(f"no global descriptor in the {len(infos)} shards to build the index of")
  raw = np.concatenate(parts)
  whitening = learn_pca_whitening(raw) if whitening_rule(len(ids), raw.shape[1]) else None
  log(
    f"global descriptors: {raw.shape[1]}-d, "
    + (
      f"PCA-whitening to {whitening[1].shape[0]} dimensions learned on {len(ids)} images"
      if whitening
      else f"not whitened ({len(ids)} images, fewer than {WHITENING_IMAGES_PER_DIM} per dimension)"
    )
  )
  write_whitening(folder, whitening)
  rows = raw if whitening is None else apply_whitening(raw, *whitening)
  table = GlobalDescriptorIndex(rows.shape[1])
  table.add_many(ids, rows)
  table.save(folder)
  return table.image_ids()


def _merge_records(infos: list[ShardInfo], index_dir: pathlib.Path, ids: list[str]) -> None:
  """The shards' image records, merged into ``<index>/records.json`` (for the merged ``ids``;
  written when there are any, or to replace a stale file). Shards built before records
  were kept have none. The caller holds the index folder's writer lock."""
  held = set(ids)
  records = merge_records(read_records(info.folder, known=held) for info in infos)
  if records or records_path(index_dir).is_file():
    write_records(index_dir, records)


def merge_stage_shards(
  shard_dirs: Sequence[str | os.PathLike],
  index_dir: str | os.PathLike,
  log: Log = print,
  on_disk: bool = False,
) -> tuple[str, list[str], Failures]:
  """Merges finished shards of any first stage into a new index folder (refused when it
  holds an index): votes shards by delf_ret.index.shards.merge_shards (``on_disk`` there),
  ASMK and global shards into ``<index>/asmk`` / ``<index>/global`` as build_index saves them,
  with their image records in ``<index>/records.json`` (delf_ret.index.records), written
  after the stage. The shards must pass check_shards (one stage, plan, settings and
  codebook; no overlap or gap). Returns (the stage, the merged image ids in order, the
  shards' failures)."""
  infos = check_shards([read_shard(folder) for folder in shard_dirs])
  stage = infos[0].stage
  if stage == VOTES:
    index, failures = merge_shards([info.folder for info in infos], index_dir, log, on_disk)
    return stage, index.image_ids(), failures
  if stage not in SHARDED_STAGES:
    raise ShardError(f"{infos[0].folder} is a shard of an unknown first stage {stage!r}")
  if on_disk:
    raise ShardError(f"on-disk merging is for IVF-PQ votes indexes, not first_stage {stage!r}")
  index_dir = pathlib.Path(index_dir)
  with writer_lock(index_dir):
    if built_stage(index_dir) is not None:
      raise ShardError(f"{index_dir} already holds an index; merge the shards into a new folder")
    if stage == ASMK:
      ids = _merge_asmk(infos, index_dir / ASMK_FOLDER, log)
    else:
      ids = _merge_global(infos, index_dir / GLOBAL_FOLDER, log)
    _merge_records(infos, index_dir, ids)
  log(f"{stage} index at {index_dir}: {len(ids)} images from {len(infos)} shards")
  return stage, ids, [failure for info in infos for failure in info.failures]


# All steps ------------------------------------------------------------------------


class _StageShard:
  """The pipeline's step for an ASMK or global shard (a picklable callable when ``log`` is None:
  a worker logs with logging.info)."""

  def __init__(self, stage: str, shards_dir: str, dim: int, log: Log | None = None):
    self.stage, self.shards_dir, self.dim, self.log = stage, shards_dir, dim, log

  def __call__(self, plan: ShardPlan) -> str:
    log = self.log or logging.info
    if self.stage == ASMK:
      quantiser = pathlib.Path(self.shards_dir) / QUANTISER_DIR
      info = build_asmk_shard(plan, quantiser, self.shards_dir, log=log)
    else:
      info = build_global_shard(plan, self.shards_dir, self.dim, log=log)
    return str(info.folder)


def _prepare(
  stage: str,
  feature_paths: Sequence[pathlib.Path],
  shards_dir: pathlib.Path,
  retrieval_config: DelfRetrievalConfig,
  log: Log,
) -> int:
  """What is learned before the shards: the ASMK codebook (returns 0), or the global
  descriptors' dimension."""
  if stage == ASMK:
    params = AsmkParams.from_config(retrieval_config)
    train_asmk_quantiser(feature_paths, shards_dir / QUANTISER_DIR, params, log)
    return 0
  return global_dimension(feature_paths)


def build_stage_sharded(
  feature_paths: Sequence[pathlib.Path],
  index_dir: str | os.PathLike | None,
  shards_dir: str | os.PathLike,
  retrieval_config: DelfRetrievalConfig,
  images_per_shard: int,
  beam_argv: Sequence[str] | None = (),
  keep_shards: bool = False,
  log: Log = print,
  image_paths: Mapping[str, str | os.PathLike] | None = None,
  labels: Mapping[str, str] | None = None,
) -> tuple[list[str] | None, Failures]:
  """The ASMK or global first stage (``retrieval_config.first_stage``) of the feature files,
  built in shards of ``images_per_shard`` files with Beam (options ``beam_argv``; None: one
  shard after the other in this process, without Beam) and merged into ``index_dir`` (None:
  the shards are left in ``shards_dir`` for merge_index). keep_shards: keep ``shards_dir``
  after merging. image_paths / labels: image id -> image file / label ("": none), recorded
  as build_index records them (absolute paths; in each shard, then in ``<index>/records.json``;
  RecordsError for an unusable one, before any work). Returns (the merged image ids in order,
  None without ``index_dir``; the files that could not be added)."""
  stage = retrieval_config.first_stage
  if stage not in SHARDED_STAGES:
    raise FirstStageError(f"first_stage {stage!r} is not built by these shards")
  if beam_argv is not None:
    require_beam_for_index()
  if index_dir is not None and built_stage(index_dir) is not None:
    raise BeamIndexError(f"{index_dir} already holds an index; build into a new folder")
  if images_per_shard < 1:
    raise BeamIndexError(f"images per shard must be at least 1, got {images_per_shard}")
  shards_dir = pathlib.Path(shards_dir)
  feature_ids = {image_id_of(path) for path in feature_paths}
  updated_records(  # An unusable path or label is refused before any work.
    {},
    {name: path for name, path in (image_paths or {}).items() if name in feature_ids},
    {name: label for name, label in (labels or {}).items() if name in feature_ids},
  )
  dim = _prepare(stage, feature_paths, shards_dir, retrieval_config, log)
  plans = plan_shards(
    feature_paths, -(-len(feature_paths) // images_per_shard), image_paths, labels
  )
  log(f"building {len(plans)} {stage} shards of {len(feature_paths)} feature files")
  if beam_argv is None:
    for plan in plans:
      _StageShard(stage, str(shards_dir), dim, log)(plan)
  else:
    run_shard_steps(plans, _StageShard(stage, str(shards_dir), dim), beam_argv)
  folders = [shards_dir / plan.name for plan in plans]
  if index_dir is None:
    log(f"{len(plans)} shards in {shards_dir}; merge them with merge_index")
    return None, [failure for folder in folders for failure in read_shard(folder).failures]
  _, ids, failures = merge_stage_shards(folders, index_dir, log)
  if not keep_shards:
    remove_shards(shards_dir, folders)
  return ids, failures
