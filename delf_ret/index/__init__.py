"""A faiss index of the local descriptors of many database images."""

from delf_ret.index.local_index import IndexParams, LocalFeatureIndex, LocalIndexError

__all__ = ["LocalIndexError", "IndexParams", "LocalFeatureIndex"]
