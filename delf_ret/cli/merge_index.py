r"""Merges index shards into one index (the last step of a sharded build).

Usage:
  # Every shard folder (shard-*) of a shards folder, e.g. build_index_beam --shards_only's:
  merge_index --shards_dir shards/ --index_dir index/
  # Named shard folders:
  merge_index --shard_dirs shards/shard-00000-of-00002,shards/shard-00001-of-00002 \
      --index_dir index/
  # An IVF-PQ index larger than memory: inverted lists in an on-disk file (read-only index):
  merge_index --shards_dir shards/ --index_dir index/ --on_disk
  # With the packed feature store reranking reads (<index_dir>/features/), as build_index:
  merge_index --shards_dir shards/ --index_dir index/ --features_dir features/

Shards are built by build_index_beam (delf_ret.index.shards: one trained quantiser,
image slots planned from the sorted feature files). They are merged only when
they were made for the same first stage with the same index settings, descriptor
dimension, quantiser (or ASMK codebook) and plan, and their slot ranges neither
overlap nor leave a gap (a missing shard); otherwise the tool names the two shards
and the difference. ASMK shards are appended over their shared codebook into
<index_dir>/asmk/, global-descriptor shards concatenated into <index_dir>/global/
with the whitening learned once on all of them (delf_ret.retrieval.stage_shards), as
build_index saves those first stages; the image records (paths, labels) the shards
were built with come along (a votes index's meta.json, or <index_dir>/records.json).
Votes shards: IVF-PQ shards are merged with faiss' merge_from, flat ones appended,
HNSW graphs rebuilt; with
--on_disk, IVF-PQ shards (without pq_fast_scan) are merged into faiss' on-disk
inverted lists (faiss.contrib.ondisk.merge_ondisk: index.ivfdata beside
index.faiss, memory-mapped when searched), for an index larger than memory; such
an index is read-only (build_index cannot add to it or remove from it). The index
is written crash-safely into a new --index_dir (a folder holding an index is
refused) and opens in query_index and perform_retrieval as any index. Without
--features_dir no packed feature store is written (reranking then reads the .delf
files; build_index with the same --features_dir adds it). Exit status
1 if some feature files failed when the shards were built (they are listed), 2 on
unusable input.
"""

from __future__ import annotations

from absl import flags

from delf_ret.cli.common import define_progress_flag
from delf_ret.cli.common import log
from delf_ret.cli.common import report_failures
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.errors import InputError
from delf_ret.index.shards import shard_folders
from delf_ret.retrieval.indexing import sync_database_store
from delf_ret.retrieval.stage_shards import merge_stage_shards

FLAGS = flags.FLAGS
flags.DEFINE_string("shards_dir", None, "Folder of shard folders (shard-*) to merge, all of them.")
flags.DEFINE_list("shard_dirs", [], "Shard folders to merge (instead of --shards_dir).")
flags.DEFINE_string("index_dir", None, "Folder of the merged index (new; created).")
flags.DEFINE_boolean(
  "on_disk",
  False,
  "Keep the merged inverted lists in an on-disk file (IVF-PQ without pq_fast_scan; the "
  "index is then read-only), for an index larger than memory.",
)
flags.DEFINE_string(
  "features_dir",
  None,
  "Folder of the shards' .delf feature files: the merged index gets their packed feature "
  "store (<index_dir>/features/), as build_index's does. Default: none.",
)
define_progress_flag()


def main(argv: list[str]) -> int:
  del argv
  require_flags(FLAGS, "index_dir")
  if bool(FLAGS.shards_dir) == bool(FLAGS.shard_dirs):
    raise InputError("give exactly one of --shards_dir and --shard_dirs")
  folders = shard_folders(FLAGS.shards_dir) if FLAGS.shards_dir else FLAGS.shard_dirs
  log(f"merging {len(folders)} shards into {FLAGS.index_dir}")
  _, image_ids, failures = merge_stage_shards(
    folders, FLAGS.index_dir, log=log, on_disk=FLAGS.on_disk
  )
  if FLAGS.features_dir:
    sync_database_store(FLAGS.index_dir, FLAGS.features_dir, image_ids, log)
  else:
    log("no packed feature store written (no --features_dir): reranking reads the .delf files")
  return report_failures(failures, "feature files")


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
