"""A faiss index of the local descriptors of many database images."""

from delf_ret.index.local_index import ImageHits, IndexParams, LocalFeatureIndex, LocalIndexError

__all__ = ["ImageHits", "LocalIndexError", "IndexParams", "LocalFeatureIndex"]
