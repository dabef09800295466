"""BatchTriplets with PML's triplet loss against torch's own triplet margin loss on the same rows."""

import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import MeanReducer

from lightning_dml.errors import DataError
from lightning_dml.losses import BatchTriplets


def test_pml_triplet_loss_on_batch_triplets_equals_the_authors_torch_triplet_loss():
    b = 6
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(3 * b, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2] * 2 + [3, 0, 0, 1, 2, 0])  # anchor/positive alike, negative not
    loss = TripletMarginLoss(
        margin=3.0, distance=LpDistance(normalize_embeddings=False), reducer=MeanReducer()
    )(embeddings, labels, BatchTriplets()(embeddings, labels))
    # the authors' Triplet-Network: nn.TripletMarginLoss(margin=3, p=2, eps=0) on (anchor, positive, negative)
    reference = torch.nn.TripletMarginLoss(margin=3.0, p=2, eps=0)(*embeddings.view(3, b, 2))
    torch.testing.assert_close(loss, reference)
    (gradient,) = torch.autograd.grad(loss, embeddings)
    (reference_gradient,) = torch.autograd.grad(reference, embeddings)
    torch.testing.assert_close(gradient, reference_gradient)


def test_a_batch_not_laid_out_as_triplets_is_refused():
    labels = torch.tensor([0, 1, 0, 1, 0, 1])  # anchors 0, 1 and positives 0, 1 ... negatives share labels
    with pytest.raises(DataError, match="laid out as \\[anchors, positives, negatives\\]"):
        BatchTriplets()(torch.zeros(6, 2), labels)
    with pytest.raises(DataError, match="3b rows, got 4"):
        BatchTriplets()(torch.zeros(4, 2), torch.zeros(4))
