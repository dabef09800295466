"""Binomial deviance loss (Yi et al. 2014) in the asymmetric form of Ustinova & Lempitsky 2016 and DeML."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import BaseDistance, CosineSimilarity
from pytorch_metric_learning.losses import GenericPairLoss
from pytorch_metric_learning.reducers import BaseReducer, MeanReducer
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from lightning_dml.errors import DataError


class BinomialDevianceLoss(GenericPairLoss):
    """Binomial deviance on pair similarities ``s``; positive and negative pairs averaged apart, then summed.

    A positive pair costs ``softplus(-alpha * (s - beta))`` and a negative pair
    ``softplus(alpha * negative_cost * (s - beta))``; ``negative_cost`` (``C``) makes negatives above the
    threshold ``beta`` far more expensive (Ustinova & Lempitsky and ABE use ``C = 25``, DeML ``C = 35``).
    Pairs come from ``labels`` (all pairs) or from a miner's ``indices_tuple``; the distance must be a
    similarity (default: cosine). ``**kwargs`` go to PML: ``distance``, ``reducer``, regularizers.
    """

    def __init__(
        self, alpha: float = 2.0, beta: float = 0.5, negative_cost: float = 25.0, **kwargs: Any
    ) -> None:
        super().__init__(mat_based_loss=False, **kwargs)
        if not self.distance.is_inverted:
            raise DataError(
                f"BinomialDevianceLoss needs a similarity, got {type(self.distance).__name__}; "
                "use CosineSimilarity or DotProductSimilarity as distance"
            )
        self.alpha = alpha
        self.beta = beta
        self.negative_cost = negative_cost
        self.add_to_recordable_attributes(list_of_names=["alpha", "beta", "negative_cost"], is_stat=False)

    def _compute_loss(
        self,
        pos_pair_sim: torch.Tensor | list,
        neg_pair_sim: torch.Tensor | list,
        indices_tuple: tuple[torch.Tensor, ...],
    ) -> dict[str, dict[str, Any]]:
        """Return PML's loss dict: per-pair positive and negative costs, each reduced on its own."""
        # GenericPairLoss passes [] (not an empty tensor) for a side without pairs; 0 is PML's "no loss".
        pos_loss = F.softplus(-self.alpha * (pos_pair_sim - self.beta)) if len(pos_pair_sim) > 0 else 0
        neg_loss = (
            F.softplus(self.alpha * self.negative_cost * (neg_pair_sim - self.beta))
            if len(neg_pair_sim) > 0
            else 0
        )
        return {
            "pos_loss": {
                "losses": pos_loss,
                "indices": lmu.pos_pairs_from_tuple(indices_tuple),
                "reduction_type": "pos_pair",
            },
            "neg_loss": {
                "losses": neg_loss,
                "indices": lmu.neg_pairs_from_tuple(indices_tuple),
                "reduction_type": "neg_pair",
            },
        }

    def get_default_reducer(self) -> BaseReducer:
        """Plain mean per side: every pair's softplus cost is positive, so nothing is 'already satisfied'."""
        return MeanReducer()

    def get_default_distance(self) -> BaseDistance:
        """Cosine similarity, as in the papers."""
        return CosineSimilarity()

    def _sub_loss_names(self) -> list[str]:
        return ["pos_loss", "neg_loss"]
