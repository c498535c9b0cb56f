"""Evaluation: ground truth of the published benchmarks, retrieval metrics, report files.

Pure numpy (and matplotlib for figures); no TensorFlow.
"""

from delf_ret.evaluation.ground_truth import GroundTruthError
from delf_ret.evaluation.ground_truth import RetrievalDataset
from delf_ret.evaluation.ground_truth import read_original_gt
from delf_ret.evaluation.ground_truth import read_revisited_gnd
from delf_ret.evaluation.metrics import DEFAULT_KS
from delf_ret.evaluation.metrics import SplitMetrics
from delf_ret.evaluation.metrics import evaluate_original
from delf_ret.evaluation.metrics import evaluate_revisited
from delf_ret.evaluation.report import write_report

__all__ = [
  "GroundTruthError",
  "RetrievalDataset",
  "read_original_gt",
  "read_revisited_gnd",
  "DEFAULT_KS",
  "SplitMetrics",
  "evaluate_original",
  "evaluate_revisited",
  "write_report",
]
