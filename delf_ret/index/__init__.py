"""A faiss index of the local descriptors of many database images."""

from delf_ret.index.errors import IndexBusyError
from delf_ret.index.local_index import ImageHits
from delf_ret.index.local_index import IndexParams
from delf_ret.index.local_index import LocalFeatureIndex
from delf_ret.index.local_index import LocalIndexError

__all__ = ["ImageHits", "IndexBusyError", "LocalIndexError", "IndexParams", "LocalFeatureIndex"]
