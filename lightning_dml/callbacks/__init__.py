"""Callbacks: retrieval evaluation (exact under DDP) and what is logged around it."""

from lightning_dml.callbacks.attention_maps import AttentionMaps
from lightning_dml.callbacks.checkpoint import LatestAndBestCheckpoint
from lightning_dml.callbacks.embedding_writer import EmbeddingWriter
from lightning_dml.callbacks.pictures import Pictures
from lightning_dml.callbacks.retrieval_evaluation import RetrievalEvaluation
from lightning_dml.callbacks.run_summary import RunSummary

__all__ = [
    "AttentionMaps",
    "EmbeddingWriter",
    "LatestAndBestCheckpoint",
    "Pictures",
    "RetrievalEvaluation",
    "RunSummary",
]
