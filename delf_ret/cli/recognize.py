r"""Recognises query photos in a labelled gallery: a label, or "unknown", with a score.

Usage:
  # The gallery: an index built with labels (rows image,label; an empty label: unlabelled).
  build_index --images_dir gallery/ --labels_csv gallery.csv \
      --features_dir features/ --index_dir gallery_index/
  recognize --index_dir gallery_index/ --features_dir features/ --image photo.jpg
  # Many photos, answers written to JSON / CSV, evaluated against their labels:
  recognize --index_dir gallery_index/ --features_dir features/ --images_dir queries/ \
      --output_json answers.json --output_csv answers.csv --ground_truth_csv queries.csv
  # Choose retrieval_config.recognition_min_score on a labelled validation set:
  recognize --index_dir gallery_index/ --features_dir features/ --images_dir validation/ \
      --ground_truth_csv validation.csv --calibrate

Each query is retrieved and reranked as by query_index (with the first stage the gallery
was built with: votes, asmk or global; labels are recorded by each); its recognition_top_k
best verified neighbours (at least min_inliers RANSAC inliers) vote for their
labels with their inliers, and the winning label is the answer when its summed
inliers reach recognition_min_score, otherwise "unknown" (see
delf_ret.retrieval.recognition). --ground_truth_csv (image,label rows, images
named by file name or id; an empty label: the photo shows no gallery landmark)
prints Global Average Precision (GAP, the Google Landmark Recognition metric) and
accuracy ("unknown" is right for a non-landmark photo). --calibrate tries every
threshold on those photos and prints the pbtxt line of the one with the best
accuracy (GAP never rewards "unknown", so it would always choose 0).

--output_csv writes query,label,score rows, an unknown answer with an empty label (as
--ground_truth_csv marks a photo of no gallery landmark; --output_json: null).

Many queries: answers are appended to <output>.partial as they are found, so an
interrupted run resumes (like query_index); a photo that cannot be read is
reported in one line and skipped (exit status 1).
"""

from __future__ import annotations

import collections
import csv
import json

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
from delf_ret.evaluation.recognition import choose_min_score
from delf_ret.evaluation.recognition import evaluate_recognition
from delf_ret.features import image_id_of
from delf_ret.index.labels import read_image_labels
from delf_ret.retrieval.recognition import BatchAnswers
from delf_ret.retrieval.recognition import QueryAnswer
from delf_ret.retrieval.recognition import QueryJournal
from delf_ret.retrieval.recognition import QueryRunner
from delf_ret.retrieval.recognition import RecognitionResult
from delf_ret.retrieval.recognition import answer_queries
from delf_ret.retrieval.recognition import gallery_labels
from delf_ret.retrieval.recognition import recognize_ranked
from delf_ret.retrieval.recognition import verified_candidates

FLAGS = flags.FLAGS
define_config_flags("DelfConfig .pbtxt (extraction, retrieval_config and its recognition_*).")
flags.DEFINE_string("image", None, "Query photo (one query; see --images_dir for many).")
define_image_flags("query photos (many queries in one run, instead of --image)")
flags.DEFINE_string("index_dir", None, "Index of the labelled gallery (build_index --labels_csv).")
flags.DEFINE_string("features_dir", None, "Feature files of the gallery images.")
flags.DEFINE_string("output_json", None, "JSON file of the answers (with votes and neighbours).")
flags.DEFINE_string(
  "output_csv",
  None,
  "CSV file of the answers: query,label,score rows; an empty label: unknown (as in "
  "--ground_truth_csv, so a gallery label named unknown stays apart).",
)
flags.DEFINE_string(
  "ground_truth_csv",
  None,
  "CSV of image,label rows for the queries (an empty label: no gallery landmark): prints GAP "
  "and accuracy.",
)
flags.DEFINE_boolean(
  "calibrate",
  False,
  "Choose retrieval_config.recognition_min_score on the queries of --ground_truth_csv (the "
  "highest accuracy) and print the pbtxt line to use.",
)
define_backend_flag()
define_progress_flag()

UNKNOWN = "unknown"


def _ground_truth(query_ids: list[str]) -> dict[str, str | None] | None:
  """{query id: label or None} of --ground_truth_csv for the queries; InputError when a query
  is missing from it."""
  if not FLAGS.ground_truth_csv:
    return None
  labels = read_image_labels(FLAGS.ground_truth_csv).labels
  missing = [query for query in query_ids if query not in labels]
  if missing:
    raise InputError(
      f"{FLAGS.ground_truth_csv}: {len(missing)} queries are not listed, e.g. {missing[0]}"
    )
  return {query: labels[query] or None for query in query_ids}


def _query_paths() -> tuple[list[str], bool]:
  """(query photos, whether there are many); InputError when two share an id."""
  queries, many = query_inputs_from_flags(FLAGS.image)
  paths = [FLAGS.image] if not many else [str(p) for p in queries]
  twice = [i for i, n in collections.Counter(image_id_of(p) for p in paths).items() if n > 1]
  if twice:
    raise InputError(f"two query photos have the id {twice[0]!r} (their file name): rename one")
  return paths, many


def _percent(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.1f}%"


def _answer_line(query: str, result: RecognitionResult) -> str:
  return f"{query}: {result.label or UNKNOWN} (score {result.score:g})"


def _write(records: list[dict], failures, metrics) -> None:
  if FLAGS.output_json:
    with atomic_write(FLAGS.output_json, "w") as handle:
      failed = [{"query": path, "error": reason} for path, reason in failures]
      data = {"queries": records, "failed": failed, "metrics": metrics}
      json.dump(data, handle, indent=2)
  if FLAGS.output_csv:
    with atomic_write(FLAGS.output_csv, "w") as handle:
      writer = csv.writer(handle, lineterminator="\n")
      writer.writerow(["query", "label", "score"])
      for record in records:
        # Unknown is an empty label (JSON: null), never a word a gallery label could be.
        writer.writerow([record["query"], record["label"] or "", f"{record['score']:g}"])
  for path in (FLAGS.output_json, FLAGS.output_csv):
    if path:
      print(f"wrote {path}")


def _calibrate(answers: dict, ground_truth: dict, config) -> None:
  calibration = choose_min_score(answers, ground_truth)
  m = calibration.metrics
  print(
    f"calibrated on {m.num_queries} queries ({m.num_landmark_queries} with a landmark): "
    f"recognition_min_score {calibration.min_score:g} gives accuracy {_percent(m.accuracy)}, "
    f"GAP {_percent(m.gap)}, landmark accuracy {_percent(m.landmark_accuracy)} "
    f"(recognition_top_k {config.retrieval_config.recognition_top_k})"
  )
  print(
    "accuracy by threshold: "
    + ", ".join(f"{t:g}: {100 * a:.1f}%" for t, a in calibration.accuracy_by_threshold.items())
  )
  print(f"retrieval_config {{ recognition_min_score: {calibration.min_score:g} }}")


def _answers(runner: QueryRunner, paths: list[str], many: bool) -> BatchAnswers:
  """Every query answered (many: resumably, bad photos skipped; one: a bad photo is an error)."""
  if not many:
    _, query = runner.features(paths[0])
    return BatchAnswers([runner.answer_features(paths[0], query)], [])
  output = FLAGS.output_json or FLAGS.output_csv
  journal = None
  if output:
    journal = QueryJournal(f"{output}.partial", runner.fingerprint(FLAGS.features_dir))
  log(f"recognising {len(paths)} queries in a gallery of {len(runner.stage)} images")
  batch = answer_queries(paths, runner, journal, log)
  batch.journal = journal
  return batch


def _recognise(answers: list[QueryAnswer], labels: dict, retrieval) -> tuple[list[dict], dict]:
  """The answer records (printed), and {query id: (label, score)} with no threshold."""
  records, scored = [], {}
  for answer in answers:
    result = recognize_ranked(answer.ranked, labels, retrieval)
    unthresholded = recognize_ranked(answer.ranked, labels, retrieval, min_score=0.0)
    scored[answer.image_id] = (unthresholded.label, unthresholded.score)
    neighbours = verified_candidates(answer.ranked, retrieval)[: retrieval.recognition_top_k]
    records.append(
      {
        "query": answer.query,
        "image_id": answer.image_id,
        "label": result.label,
        "score": result.score,
        "votes": result.votes,
        "neighbours": [[i, n, labels.get(i)] for i, n in neighbours],
      }
    )
    print(_answer_line(answer.query, result))
  return records, scored


def _evaluate(records: list[dict], ground_truth: dict, retrieval) -> dict:
  """Prints and returns the figures of the answers against the ground truth."""
  figures = evaluate_recognition(
    {r["image_id"]: (r["label"], r["score"]) for r in records}, ground_truth
  )
  print(
    f"{figures.num_queries} queries ({figures.num_landmark_queries} with a landmark): GAP "
    f"{_percent(figures.gap)}, accuracy {_percent(figures.accuracy)}, landmark accuracy "
    f"{_percent(figures.landmark_accuracy)} (recognition_min_score "
    f"{retrieval.recognition_min_score:g})"
  )
  return figures.as_dict()


def main(argv: list[str]) -> int:
  del argv
  paths, many = _query_paths()
  require_flags(FLAGS, "index_dir", "features_dir")
  if FLAGS.calibrate:
    require_flags(FLAGS, "ground_truth_csv")
  ground_truth = _ground_truth([image_id_of(p) for p in paths])
  config = load_config_from_flags()
  retrieval = config.retrieval_config
  # The stage the gallery was built with; the model loads at the first query extracted.
  runner = QueryRunner.open(
    config, FLAGS.index_dir, FLAGS.features_dir, 1, None, FLAGS.backend, log
  )
  labels = gallery_labels(runner.stage)
  if not any(label is not None for label in labels.values()):
    log(f"warning: no image of {FLAGS.index_dir} has a label: every answer is {UNKNOWN}")
  batch = _answers(runner, paths, many)
  records, scored = _recognise(batch.answers, labels, retrieval)
  metrics = None
  if ground_truth is not None and batch.answers:
    answered = {a.image_id: ground_truth[a.image_id] for a in batch.answers}
    metrics = _evaluate(records, answered, retrieval)
    if FLAGS.calibrate:
      _calibrate(scored, answered, config)
  _write(records, batch.failures, metrics)
  if batch.journal is not None:
    batch.journal.remove()
  return report_failures(batch.failures, "queries")


def run() -> None:
  run_tool(main)


if __name__ == "__main__":
  run()
