"""Callbacks: retrieval evaluation (exact under DDP) and what is logged around it."""

from lightning_dml.callbacks.retrieval_evaluation import RetrievalEvaluation

__all__ = ["RetrievalEvaluation"]
