"""Metric-learning losses that pytorch-metric-learning lacks.

Every loss here follows PML's calling convention ``loss(embeddings, labels, indices_tuple=None, ref_emb=None,
ref_labels=None)``. Any loss PML already has is used directly by ``class_path``
(e.g. ``pytorch_metric_learning.losses.MultiSimilarityLoss``) and is not wrapped here.
"""

from lightning_dml.losses.binomial_deviance import BinomialDevianceLoss
from lightning_dml.losses.deml import DeMLAdversary
from lightning_dml.losses.gemini import GeminiLoss, TargetDistanceLoss

__all__ = ["BinomialDevianceLoss", "DeMLAdversary", "GeminiLoss", "TargetDistanceLoss"]
