"""Retrieval: ranking database images by descriptor votes, RANSAC reranking, benchmark runs."""

from delf_ret.retrieval.ranking import RankedImage, RetrievalResult, rank_database, rerank, retrieve

__all__ = ["RankedImage", "RetrievalResult", "rank_database", "rerank", "retrieve"]
