"""Building an index from a feature folder as an Apache Beam pipeline (``build_index_beam``).

The steps of delf_ret.index.shards, with the shards built in parallel by Beam:
the quantiser is trained once here, in the launching process (on the sample
``build_index`` trains on); the shards are planned from the sorted feature files
(slots do not depend on how many shards there are); a Beam pipeline builds one
shard per element (``build_shard``: each worker loads the quantiser, reads its
feature files, saves its shard crash-safely); then the shards are merged here
into the index (or left for ``merge_index``). Feature files that cannot be added
are recorded in their shard's ``shard.json`` and reported after the merge, as
``build_index`` reports them; a finished shard is not rebuilt, so a killed
pipeline resumes. Feature files, the quantiser and the shards are read and
written by local path: every worker must see them at the same path (the local
runner; a shared mount on a cluster).

The other first stages (ASMK, global descriptors) build their shards with the same
runner, :func:`run_shard_steps`, with their own step (delf_ret.retrieval.stage_shards).

Beam's options are command-line words (``--beam_pipeline_options`` of the tool,
as tensorflow-datasets names it; delf_ret.extract.beam_options, shared with extraction):
the runner is Beam's in-process FnApiRunner when none or "DirectRunner" is named (Beam's
DirectRunner would first try the Prism runner, which downloads a binary), and Beam logs
warnings only unless ``--default_sdk_harness_log_level`` is given.

Needs the ``beam`` extra (``pip install 'delf-ret[beam]'``): without it this module
imports, and running a pipeline raises BeamIndexError saying so.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Callable
from typing import Mapping
from typing import Sequence

from delf_ret.extract.beam_options import BeamPipelineError
from delf_ret.extract.beam_options import pipeline_options
from delf_ret.extract.beam_options import require_beam
from delf_ret.index.errors import LocalIndexError
from delf_ret.index.local_index import IndexParams
from delf_ret.index.local_index import LocalFeatureIndex
from delf_ret.index.shards import QUANTISER_DIR
from delf_ret.index.shards import Failures
from delf_ret.index.shards import ShardInfo
from delf_ret.index.shards import ShardPlan
from delf_ret.index.shards import build_shard
from delf_ret.index.shards import merge_shards
from delf_ret.index.shards import plan_shards
from delf_ret.index.shards import read_shard
from delf_ret.index.shards import remove_shards
from delf_ret.index.shards import train_quantiser

try:  # An extra: the rest of delf-ret, and this module's import, do without it.
  import apache_beam as beam
except ImportError:
  beam = None

DOING = "building an index"  # What the error without apache-beam says this pipeline does.


class BeamIndexError(LocalIndexError, BeamPipelineError):
  """Apache Beam is not installed, or the index-building pipeline failed."""


def require_beam_for_index() -> None:
  """BeamIndexError (one line, naming the extra to install) when apache-beam is missing."""
  require_beam(DOING, BeamIndexError)


class _BuildShard:
  """The pipeline's step: one shard plan -> the shard folder (a picklable callable)."""

  def __init__(self, quantiser_dir: str, shards_dir: str):
    self.quantiser_dir, self.shards_dir = quantiser_dir, shards_dir

  def __call__(self, plan: ShardPlan) -> str:
    info = build_shard(plan, self.quantiser_dir, self.shards_dir, log=logging.info)
    return str(info.folder)


def run_shard_steps(
  plans: Sequence[ShardPlan],
  step: Callable[[ShardPlan], str],
  beam_argv: Sequence[str] = (),
) -> None:
  """Runs ``step`` (picklable: it goes to the workers) on every plan with a Beam pipeline of
  options ``beam_argv``, one element per plan. BeamIndexError (one line) when the pipeline
  fails; a LocalIndexError of a step is raised as it is."""
  require_beam_for_index()
  options = pipeline_options(beam_argv, quiet=True)
  try:
    with beam.Pipeline(options=options) as pipeline:
      _ = (
        pipeline
        | "Plans" >> beam.Create(list(plans))
        | "Spread" >> beam.Reshuffle()
        | "BuildShards" >> beam.Map(step)
      )
  except LocalIndexError:
    raise
  except Exception as error:  # Beam wraps a worker's error in its own types.
    reason = str(error).strip().splitlines()
    raise BeamIndexError(
      f"the index pipeline failed: {type(error).__name__}: {reason[-1] if reason else ''}"
    ) from None


def build_shards_with_beam(
  plans: Sequence[ShardPlan],
  quantiser_dir: str | os.PathLike,
  shards_dir: str | os.PathLike,
  beam_argv: Sequence[str] = (),
) -> list[ShardInfo]:
  """Builds the planned shards of a votes index with a Beam pipeline of options
  ``beam_argv``; returns their infos in plan order. BeamIndexError (one line) when the
  pipeline fails."""
  run_shard_steps(plans, _BuildShard(str(quantiser_dir), str(shards_dir)), beam_argv)
  return [read_shard(pathlib.Path(shards_dir) / plan.name) for plan in plans]


def build_index_beam(
  feature_paths: Sequence[pathlib.Path],
  index_dir: str | os.PathLike | None,
  shards_dir: str | os.PathLike,
  params: IndexParams,
  dim: int,
  images_per_shard: int,
  beam_argv: Sequence[str] = (),
  image_paths: Mapping[str, str | os.PathLike] | None = None,
  labels: Mapping[str, str] | None = None,
  keep_shards: bool = False,
  on_disk: bool = False,
  log: Callable[[str], None] = print,
) -> tuple[LocalFeatureIndex | None, Failures]:
  """Trains the quantiser, builds the shards with Beam and merges them into ``index_dir``.

  index_dir: the new index folder (one holding an index is refused before any work);
  None: the shards are built and left in ``shards_dir`` for ``merge_index``.
  images_per_shard: feature files per shard (the last shards may hold one less).
  image_paths / labels: image id -> image file / label ("": none), recorded in the index.
  keep_shards: keep ``shards_dir`` after merging (otherwise its quantiser and shard
  folders are removed, and the folder if nothing else is in it). on_disk: merge into on-disk
  inverted lists (delf_ret.index.shards.merge_shards).
  Returns the merged index (None without ``index_dir``) and the failed feature files.
  """
  require_beam_for_index()
  if index_dir is not None and (pathlib.Path(index_dir) / "CURRENT").is_file():
    raise BeamIndexError(f"{index_dir} already holds an index; build into a new folder")
  if images_per_shard < 1:
    raise BeamIndexError(f"images per shard must be at least 1, got {images_per_shard}")
  shards_dir = pathlib.Path(shards_dir)
  quantiser_dir = shards_dir / QUANTISER_DIR
  train_quantiser(feature_paths, quantiser_dir, params, dim, log)
  count = -(-len(feature_paths) // images_per_shard)
  plans = plan_shards(feature_paths, count, image_paths, labels)
  log(f"building {len(plans)} shards of {len(feature_paths)} feature files with Beam")
  infos = build_shards_with_beam(plans, quantiser_dir, shards_dir, beam_argv)
  if index_dir is None:
    log(f"{len(infos)} shards in {shards_dir}; merge them with merge_index")
    return None, [failure for info in infos for failure in info.failures]
  index, failures = merge_shards([info.folder for info in infos], index_dir, log, on_disk)
  if not keep_shards:
    remove_shards(shards_dir, [info.folder for info in infos])
  return index, failures
