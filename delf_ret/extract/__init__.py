"""DELF feature extraction: image pyramid, attention selection, keypoints, PCA."""

from delf_ret.extract.extractor import DelfExtractor, ImageTooSmallError
from delf_ret.extract.selection import select_features

__all__ = ["DelfExtractor", "ImageTooSmallError", "select_features"]
