"""A faiss index of the local descriptors of many database images."""

from delf_ret.index.local_index import LocalIndexError, IndexParams, LocalFeatureIndex

__all__ = ["LocalIndexError", "IndexParams", "LocalFeatureIndex"]
