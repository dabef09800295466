"""Metric-learning losses (and a positional miner) that pytorch-metric-learning lacks.

Only ``BinomialDevianceLoss`` follows PML's loss convention ``loss(embeddings, labels, indices_tuple=None)``,
and ``BatchTriplets`` PML's miner convention ``miner(embeddings, labels)``. The others have their own
signatures and are called by their methods: ``GeminiLoss(embeddings, labels, indices_tuple, features)``
(G-DML teacher; ``indices_tuple`` required, plus the anchors' stream features),
``TargetDistanceLoss(embeddings, targets)`` (G-DML student) and ``DeMLAdversary(normalized, strength)``
(DeML, on the (I, J, B, d) learner embeddings) and ``NeighbourhoodPreservation(embeddings, features)``
(a regulariser of ``MetricLearning``). Any loss PML already has is used directly by ``class_path``
(e.g. ``pytorch_metric_learning.losses.MultiSimilarityLoss``) and is not wrapped here.
"""

from lightning_dml.losses.batch_triplets import BatchTriplets
from lightning_dml.losses.binomial_deviance import BinomialDevianceLoss
from lightning_dml.losses.deml import DeMLAdversary
from lightning_dml.losses.gemini import GeminiLoss, TargetDistanceLoss
from lightning_dml.losses.neighbourhood import NeighbourhoodPreservation

__all__ = [
    "BatchTriplets",
    "BinomialDevianceLoss",
    "DeMLAdversary",
    "GeminiLoss",
    "NeighbourhoodPreservation",
    "TargetDistanceLoss",
]
