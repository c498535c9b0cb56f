"""Retrieval reports: ``mAP.txt`` (human-readable), ``metrics.json`` and a PR plot per split.

``results`` maps a stage name ("first_stage", "reranked") to the metrics of
each split ("easy", "medium", "hard" for the Revisited protocol, "original"
for the Oxford5k/Paris6k one). mAP, mP@k and mR@k are reported in percent.
"""

from __future__ import annotations

import json
import math
import pathlib

from delf_ret.atomic import atomic_write
from delf_ret.evaluation.metrics import RECALL_LEVELS
from delf_ret.evaluation.metrics import SplitMetrics

Results = dict[str, dict[str, SplitMetrics]]


def _percent(value: float) -> float | None:
  return None if math.isnan(value) else round(100.0 * value, 2)


def split_line(split: str, metrics: SplitMetrics) -> str:
  """One line of mAP.txt, e.g. ``easy    mAP 71.43  mP@1 80.00 ... (5 queries)``."""
  if metrics.num_queries == 0:
    return f"{split:<8} mAP n/a (no query has positives in this split)"
  parts = [f"mAP {100 * metrics.mean_ap:6.2f}"]
  parts += [f"mP@{k} {100 * value:6.2f}" for k, value in metrics.precision_at.items()]
  parts += [f"mR@{k} {100 * value:6.2f}" for k, value in metrics.recall_at.items()]
  return f"{split:<8} " + "  ".join(parts) + f"  ({metrics.num_queries} queries)"


def map_text(dataset: str, protocol: str, results: Results) -> str:
  """The text of mAP.txt: a header, then one block per stage with one line per split."""
  lines = [f"# {dataset}, {protocol} protocol; mAP, mP@k and mR@k in percent"]
  for stage, splits in results.items():
    lines.append(f"[{stage}]")
    lines += [split_line(split, metrics) for split, metrics in splits.items()]
  return "\n".join(lines) + "\n"


def metrics_dict(
  dataset: str,
  protocol: str,
  query_names: list[str],
  results: Results,
  seconds_per_query: dict[str, float] | None = None,
) -> dict:
  """JSON-ready metrics: per stage and split, the means and every query's AP (null: excluded).

  seconds_per_query: mean wall seconds per query of each pipeline stage
  (extraction, search, loading, matching, ransac, total), stored as given.
  """
  stages = {}
  for stage, splits in results.items():
    stages[stage] = {
      split: {
        "mAP": _percent(m.mean_ap),
        "mP@k": {str(k): _percent(v) for k, v in m.precision_at.items()},
        "mR@k": {str(k): _percent(v) for k, v in m.recall_at.items()},
        "num_queries": m.num_queries,
        "ap_per_query": {name: _percent(ap) for name, ap in zip(query_names, m.ap_per_query)},
        "pr_curve": {"recall": list(RECALL_LEVELS), "precision": m.pr_curve},
      }
      for split, m in splits.items()
    }
  payload = {
    "dataset": dataset,
    "protocol": protocol,
    "num_queries": len(query_names),
    "stages": stages,
  }
  if seconds_per_query:
    payload["seconds_per_query"] = {
      stage: round(value, 4) for stage, value in seconds_per_query.items()
    }
  return payload


def write_report(
  output_dir: str | pathlib.Path,
  dataset: str,
  protocol: str,
  query_names: list[str],
  results: Results,
  seconds_per_query: dict[str, float] | None = None,
) -> list[pathlib.Path]:
  """Writes mAP.txt, metrics.json and pr_<split>.png (one curve per stage); returns the paths.

  seconds_per_query: per-stage timings for metrics.json (see metrics_dict).
  """
  # Lazy: matplotlib (1-2 s) when a report is written, not when evaluation is imported.
  from delf_ret.evaluation.visualize import plot_precision_recall

  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  written = [output_dir / "mAP.txt", output_dir / "metrics.json"]
  with atomic_write(written[0], "w") as handle:
    handle.write(map_text(dataset, protocol, results))
  with atomic_write(written[1], "w") as handle:
    json.dump(
      metrics_dict(dataset, protocol, query_names, results, seconds_per_query), handle, indent=2
    )
    handle.write("\n")
  splits = list(next(iter(results.values())).keys()) if results else []
  for split in splits:
    path = output_dir / f"pr_{split}.png"
    curves = {stage: results[stage][split].pr_curve for stage in results}
    plot_precision_recall(path, list(RECALL_LEVELS), curves, f"{dataset} {split}")
    written.append(path)
  return written
