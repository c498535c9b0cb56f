r"""Queries the index with one image, or many: top database images, RANSAC-verified.

Usage:
  query_index --config_path my.pbtxt --index_dir index/ --features_dir features/ \
      --image photo.jpg [--box x1,y1,x2,y2] [--num_results 10] \
      [--output_json top.json] [--contact_sheet top.png [--database_images_dir photos/]]
  # Many query photos in one run (model, index and features loaded once):
  query_index --index_dir index/ --features_dir features/ \
      --list_images_path queries.txt (or --images_dir queries/) \
      --output_json results.json --output_csv results.csv

The index is ranked with the first stage it was built with (retrieval_config.first_stage:
votes, asmk or global; a config asking for another is refused), then the top is reranked
from the database's features. Prints rank, image id, first-stage score, RANSAC inliers and
whether the pair is
verified (at least retrieval_config.min_inliers inliers) of the top
results (and each result's label where the index records labels).
--contact_sheet draws the query and the top results: their images are the files
the index recorded at build time, or, with --database_images_dir (for a moved
collection), the files of that folder named by image id.

Many queries: one progress line per query, then one JSON (every query's ranked
results) and one CSV (query,rank,image_id,score,inliers,verified[,label]), both
written atomically at the end. Each answer is also appended to
<output>.partial as it is found: when the run is interrupted, the same command
resumes from there (with other settings or another index it starts afresh); the
file is removed once the results are written. A query photo that cannot be read
is reported in one line and skipped; exit status 1 when some were skipped.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib

import numpy as np
from absl import app
from absl import flags

from delf_ret.atomic import atomic_write
from delf_ret.cli.common import define_backend_flag
from delf_ret.cli.common import define_config_flags
from delf_ret.cli.common import define_progress_flag
from delf_ret.cli.common import load_config_from_flags
from delf_ret.cli.common import log
from delf_ret.cli.common import report_failures
from delf_ret.cli.common import require_flags
from delf_ret.cli.common import run_tool
from delf_ret.cli.inputs import define_image_flags
from delf_ret.cli.inputs import query_inputs_from_flags
from delf_ret.errors import InputError
from delf_ret.features import image_id_of
from delf_ret.images import ImageReadError
from delf_ret.images import list_images
from delf_ret.images import load_image
from delf_ret.retrieval.first_stage import FirstStageIndex
from delf_ret.retrieval.ranking import RankedImage
from delf_ret.retrieval.ranking import is_verified
from delf_ret.retrieval.recognition import QueryAnswer
from delf_ret.retrieval.recognition import QueryJournal
from delf_ret.retrieval.recognition import QueryRunner
from delf_ret.retrieval.recognition import answer_queries
from delf_ret.retrieval.recognition import gallery_labels

FLAGS = flags.FLAGS
define_config_flags("DelfConfig .pbtxt (extraction and retrieval_config).")
flags.DEFINE_string("image", None, "Query image (one query; see --images_dir for many).")
define_image_flags("query images (many queries in one run, instead of --image)")
flags.DEFINE_list("box", [], "Query box x1,y1,x2,y2 in pixels (default: whole image).")
flags.DEFINE_string("index_dir", None, "Index of the database images (build_index).")
flags.DEFINE_string("features_dir", None, "Feature files of the database images.")
flags.DEFINE_integer(
  "num_results", 10, "How many top results to print and write (a positive number).", lower_bound=1
)
flags.DEFINE_string("output_json", None, "JSON file for the top results.")
flags.DEFINE_string(
  "output_csv", None, "CSV file for the top results of many queries (one row per result)."
)
flags.DEFINE_string("contact_sheet", None, "PNG file: the query and the top results (--image).")
flags.DEFINE_string(
  "database_images_dir",
  None,
  "Database images for --contact_sheet, by image id, instead of the paths the index "
  "recorded (for a moved collection).",
)
define_backend_flag()
define_progress_flag()


def _box(values: list[str]) -> tuple[float, float, float, float] | None:
  """--box as (x1, y1, x2, y2) pixels, or None; InputError unless it is 4 finite numbers."""
  if not values:
    return None
  try:
    if len(values) != 4:
      raise ValueError
    x1, y1, x2, y2 = (float(v) for v in values)
  except ValueError:
    raise InputError(f"--box needs 4 numbers x1,y1,x2,y2, got {','.join(values)}") from None
  if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
    raise InputError(f"--box needs 4 finite numbers x1,y1,x2,y2 (pixels), got {','.join(values)}")
  return x1, y1, x2, y2


def database_image(index: FirstStageIndex, image_id: str, override: dict | None) -> pathlib.Path:
  """The file of a database image: in --database_images_dir (``override``, {id: path}) when it
  is there, else the path the index recorded; ImageReadError when neither gives a file."""
  if override is not None and image_id in override:
    return override[image_id]
  recorded = index.image_path(image_id)
  if recorded is not None and pathlib.Path(recorded).is_file():
    return pathlib.Path(recorded)
  where = f"not in --database_images_dir {FLAGS.database_images_dir}" if override else ""
  if recorded is None:
    reason = "the index recorded no path for it (built from feature files or before paths were "
    reason += "recorded)"
  else:
    reason = f"its recorded file {recorded} is missing (moved?)"
  hint = "" if override else "; give --database_images_dir"
  raise ImageReadError(
    f"no image file for database image {image_id}: {'; '.join(filter(None, (where, reason)))}{hint}"
  )


def _check_recorded_paths(index: FirstStageIndex) -> None:
  """ImageReadError, before any work, when the index recorded no image path at all."""
  if len(index) and all(index.image_path(image_id) is None for image_id in index.image_ids()):
    raise ImageReadError(
      f"{FLAGS.index_dir} records no image paths (built from feature files, or before paths "
      f"were recorded): give --database_images_dir for --contact_sheet"
    )


def _contact_sheet(path: str, query_image: np.ndarray, index, top: list[RankedImage]) -> None:
  from delf_ret.evaluation.visualize import draw_contact_sheet  # Lazy: matplotlib.

  override = None
  if FLAGS.database_images_dir:
    override = {image_id_of(p): p for p in list_images(FLAGS.database_images_dir)}
  files = [database_image(index, entry.image_id, override) for entry in top]
  images, captions = [], []
  for rank, (entry, file) in enumerate(zip(top, files), 1):
    images.append(load_image(file))
    inliers = "-" if entry.inliers is None else entry.inliers
    captions.append(f"{rank}. {entry.image_id}\nscore {entry.score:.1f}, inliers {inliers}")
  draw_contact_sheet(path, query_image, images, captions, query_caption="query")


def _labels(index: FirstStageIndex) -> dict[str, str | None] | None:
  """{image id: label} when the index records a label for some image, else None."""
  labels = gallery_labels(index)
  return labels if any(label is not None for label in labels.values()) else None


def _result_rows(top: list[RankedImage], labels, retrieval) -> list[dict]:
  rows = []
  for rank, entry in enumerate(top, 1):
    row = {
      "rank": rank,
      "image_id": entry.image_id,
      "score": entry.score,
      "inliers": entry.inliers,
      "verified": is_verified(entry, retrieval),
    }
    if labels is not None:
      row["label"] = labels.get(entry.image_id)
    rows.append(row)
  return rows


def _print_table(top: list[RankedImage], labels, retrieval) -> None:
  label_head = "  label" if labels is not None else ""
  print(f"{'rank':>4}  {'image':<40} {'score':>8} {'inliers':>7}  verified{label_head}")
  for rank, entry in enumerate(top, 1):
    inliers = "-" if entry.inliers is None else entry.inliers
    verified = "-" if entry.inliers is None else "yes" if is_verified(entry, retrieval) else "no"
    label = f"  {labels.get(entry.image_id) or '-'}" if labels is not None else ""
    if labels is not None:
      verified = f"{verified:<8}"
    print(f"{rank:>4}  {entry.image_id:<40} {entry.score:>8.2f} {inliers:>7}  {verified}{label}")
  print(f"verified: at least {retrieval.min_inliers} RANSAC inliers (retrieval_config.min_inliers)")


def _single(runner: QueryRunner, labels) -> int:
  image, query = runner.features(FLAGS.image)
  answer = runner.answer_features(FLAGS.image, query)
  top = answer.ranked[: FLAGS.num_results]
  print(
    f"{FLAGS.image}: {answer.num_features} features; top {len(top)} of "
    f"{len(runner.stage)} indexed images (first_stage {runner.stage.name})"
  )
  retrieval = runner.config.retrieval_config
  _print_table(top, labels, retrieval)
  if FLAGS.output_json:
    with atomic_write(FLAGS.output_json, "w") as handle:
      results = _result_rows(top, labels, retrieval)
      data = {"query": FLAGS.image, "num_features": answer.num_features, "results": results}
      json.dump(data, handle, indent=2)
  if FLAGS.contact_sheet:
    _contact_sheet(FLAGS.contact_sheet, image, runner.stage, top)
  for path in (FLAGS.output_json, FLAGS.contact_sheet):
    if path:
      print(f"wrote {path}")
  return 0


def _write_batch(answers: list[QueryAnswer], failures, labels, retrieval) -> None:
  queries = [
    {
      "query": answer.query,
      "num_features": answer.num_features,
      "results": _result_rows(answer.ranked[: FLAGS.num_results], labels, retrieval),
    }
    for answer in answers
  ]
  if FLAGS.output_json:
    with atomic_write(FLAGS.output_json, "w") as handle:
      failed = [{"query": path, "error": reason} for path, reason in failures]
      json.dump({"queries": queries, "failed": failed}, handle, indent=2)
  if FLAGS.output_csv:
    columns = ["query", "rank", "image_id", "score", "inliers", "verified"]
    columns += ["label"] if labels is not None else []
    with atomic_write(FLAGS.output_csv, "w") as handle:
      writer = csv.DictWriter(handle, columns, lineterminator="\n")
      writer.writeheader()
      for answer in answers:
        for row in _result_rows(answer.ranked[: FLAGS.num_results], labels, retrieval):
          writer.writerow({"query": answer.query, **row})


def _batch(runner: QueryRunner, paths: list[pathlib.Path], labels) -> int:
  retrieval = runner.config.retrieval_config
  journal_path = f"{FLAGS.output_json or FLAGS.output_csv}.partial"
  journal = QueryJournal(journal_path, runner.fingerprint(FLAGS.features_dir))
  log(f"answering {len(paths)} queries against {len(runner.stage)} indexed images")
  batch = answer_queries([str(p) for p in paths], runner, journal, log)
  _write_batch(batch.answers, batch.failures, labels, retrieval)
  journal.remove()
  resumed = f" ({batch.resumed} from an earlier run)" if batch.resumed else ""
  log(f"answered {len(batch.answers)} of {len(paths)} queries{resumed}")
  for path in (FLAGS.output_json, FLAGS.output_csv):
    if path:
      print(f"wrote {path}")
  return report_failures(batch.failures, "queries")


def main(argv: list[str]) -> int:
  del argv
  queries, many = query_inputs_from_flags(FLAGS.image)
  require_flags(FLAGS, "index_dir", "features_dir")
  if many and FLAGS.contact_sheet:
    raise app.UsageError("--contact_sheet draws one query: use it with --image")
  if many and not (FLAGS.output_json or FLAGS.output_csv):
    raise app.UsageError("many queries need --output_json or --output_csv")
  box = _box(FLAGS.box)
  config = load_config_from_flags()
  # The stage the index was built with; the model loads at the first query extracted.
  runner = QueryRunner.open(
    config, FLAGS.index_dir, FLAGS.features_dir, FLAGS.num_results, box, FLAGS.backend, log
  )
  if FLAGS.contact_sheet and not FLAGS.database_images_dir:
    _check_recorded_paths(runner.stage)
  labels = _labels(runner.stage)
  return _batch(runner, queries, labels) if many else _single(runner, labels)


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
