"""Retrieval: ranking database images by descriptor votes, RANSAC reranking, benchmark runs."""

from delf_ret.retrieval.ranking import RankedImage
from delf_ret.retrieval.ranking import RetrievalResult
from delf_ret.retrieval.ranking import rank_database
from delf_ret.retrieval.ranking import rerank
from delf_ret.retrieval.ranking import retrieve

__all__ = ["RankedImage", "RetrievalResult", "rank_database", "rerank", "retrieve"]
