"""Report files: mAP.txt lines, metrics.json values, one PR plot per split."""

import json
import math

from delf_ret.evaluation.metrics import RECALL_LEVELS
from delf_ret.evaluation.metrics import SplitMetrics
from delf_ret.evaluation.report import write_report


def metrics(mean_ap, queries, aps):
  return SplitMetrics(
    mean_ap,
    {1: 0.5, 5: 0.2},
    {1: 0.25, 5: 1.0},
    aps,
    queries,
    [0.5] * len(RECALL_LEVELS) if queries else [],
  )


def test_write_report(tmp_path):
  results = {
    "first_stage": {
      "easy": metrics(0.5, 2, [0.25, 0.75]),
      "medium": metrics(0.625, 2, [0.5, 0.75]),
      "hard": metrics(math.nan, 0, [math.nan, math.nan]),
    },
    "reranked": {
      "easy": metrics(1.0, 2, [1.0, 1.0]),
      "medium": metrics(1.0, 2, [1.0, 1.0]),
      "hard": metrics(math.nan, 0, [math.nan, math.nan]),
    },
  }
  written = write_report(tmp_path, "toy", "revisited", ["q1", "q2"], results)
  assert sorted(p.name for p in written) == [
    "mAP.txt",
    "metrics.json",
    "pr_easy.png",
    "pr_hard.png",
    "pr_medium.png",
  ]
  lines = (tmp_path / "mAP.txt").read_text().splitlines()
  assert lines[0].startswith("# toy, revisited protocol")
  assert lines[1] == "[first_stage]"
  assert lines[2].split()[:3] == ["easy", "mAP", "50.00"]
  assert "mP@1  50.00" in lines[2] and "mR@5 100.00" in lines[2] and "(2 queries)" in lines[2]
  assert lines[3].split()[:3] == ["medium", "mAP", "62.50"]
  assert lines[4].startswith("hard") and "n/a" in lines[4]
  assert lines[5] == "[reranked]" and lines[6].split()[:3] == ["easy", "mAP", "100.00"]
  data = json.loads((tmp_path / "metrics.json").read_text())
  easy = data["stages"]["first_stage"]["easy"]
  assert easy["mAP"] == 50.0 and easy["mP@k"] == {"1": 50.0, "5": 20.0}
  assert easy["ap_per_query"] == {"q1": 25.0, "q2": 75.0}
  assert data["stages"]["first_stage"]["hard"]["mAP"] is None
  for split in ("easy", "medium", "hard"):
    assert (tmp_path / f"pr_{split}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
