"""Retrieval benchmarks: Oxford5k/Paris6k ground-truth folders and Revisited gnd_*.pkl files."""

from delf_ret.datasets.ground_truth import (RetrievalDataset, crop_to_box, read_original_gt,
                                            read_revisited_gnd)

__all__ = ["RetrievalDataset", "crop_to_box", "read_original_gt", "read_revisited_gnd"]
