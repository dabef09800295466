"""Metric-learning losses (and a positional miner) that pytorch-metric-learning lacks.

``BinomialDevianceLoss`` follows PML's calling convention ``loss(embeddings, labels, indices_tuple=None)``
and ``BatchTriplets`` PML's miner convention ``miner(embeddings, labels)``; the G-DML and DeML losses are
called by their own methods. Any loss PML already has is used directly by ``class_path``
(e.g. ``pytorch_metric_learning.losses.MultiSimilarityLoss``) and is not wrapped here.
"""

from lightning_dml.losses.batch_triplets import BatchTriplets
from lightning_dml.losses.binomial_deviance import BinomialDevianceLoss
from lightning_dml.losses.deml import DeMLAdversary
from lightning_dml.losses.gemini import GeminiLoss, TargetDistanceLoss

__all__ = ["BatchTriplets", "BinomialDevianceLoss", "DeMLAdversary", "GeminiLoss", "TargetDistanceLoss"]
