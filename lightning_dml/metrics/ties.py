"""Retrieval measures under tied scores: their expected value over a uniformly random order of tied items.

A ranking with ties is a sequence of *tie groups* (items of equal score). Following McSherry & Najork
(ECIR 2008), a measure of a ranking with ties is its mean over every order of the items inside each group,
all orders equally likely; without ties this is the measure itself. Two closed forms are needed:

- Recall@K: the best relevant item's group starts after ``a`` items that score higher and holds ``t``
  items, ``h`` of them relevant. With ``n = K - a`` of its positions inside the top K, the first relevant
  item lands there with probability ``1 - C(t - h, n) / C(t, n)``.
- AP@R and R-Precision: for position i (1-based) inside a group of size t with h relevant items, preceded
  by H relevant items in earlier groups, u = i - (group start): E[rel(i)] = h / t and
  E[rel(i) · #relevant in 1..i] = (h / t) · (1 + H + (u - 1)(h - 1) / (t - 1)), because two distinct
  positions of one group are both relevant with probability h(h - 1) / (t(t - 1)). Summing over i ≤ R
  and dividing by R gives expected R-Precision and AP@R (each term of AP@R carries its 1 / i).

So a collapsed embedding (every score equal) scores exactly what a random ranking scores on average.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expected_recall_at(above: Tensor, tied: Tensor, tied_relevant: Tensor, k: int) -> Tensor:
    """Per query, the probability ``(Nq,)`` float64 that a relevant item ranks within the first ``k``.

    ``above``: items scoring strictly higher than the best relevant item; ``tied``: items scoring equal to
    it (itself included); ``tied_relevant``: the relevant ones among those (at least 1).

    >>> expected_recall_at(torch.tensor([0, 0, 3]), torch.tensor([1, 4, 2]), torch.tensor([1, 1, 1]), 2)
    tensor([1.0000, 0.5000, 0.0000], dtype=torch.float64)
    """
    slots = (k - above).clamp(min=0)
    slots = torch.minimum(slots, tied)
    recall = (slots > 0).double()  # exact wherever the group is a single item
    grouped = torch.nonzero((tied > 1) & (slots > 0)).flatten()
    if len(grouped):
        t, h, n = (values[grouped].double() for values in (tied, tied_relevant, slots))
        # C(t - h, n) / C(t, n) = prod_{j < n} (t - h - j) / (t - j): zero once j reaches t - h.
        j = torch.arange(int(n.max()), device=t.device, dtype=torch.float64)
        factors = ((t - h)[:, None] - j).clamp(min=0) / (t[:, None] - j).clamp(min=1)
        miss = torch.where(j < n[:, None], factors, 1.0).prod(1)
        recall[grouped] = 1 - miss
    return recall


def expected_precisions(
    scores: Tensor, hits: Tensor, relevant: Tensor, boundary_tied: Tensor, boundary_relevant: Tensor
) -> tuple[Tensor, Tensor]:
    """Expected ``(AP@R, R-Precision)`` per query, ``(Nq,)`` float64 each, NaN where R = 0.

    ``scores`` ``(Nq, L)``: each query's L best scores, best first (L > max R); ``hits`` ``(Nq, L)``: which
    of those items are relevant; ``relevant``: R. Tie groups are runs of equal scores. The group holding
    position R may continue past the list, so its full size and relevant count over the whole gallery come
    as ``boundary_tied`` and ``boundary_relevant``; every earlier group lies wholly inside the list.
    """
    rows, width = scores.shape
    positions = torch.arange(width, device=scores.device)
    starts_group = torch.ones_like(hits)
    starts_group[:, 1:] = scores[:, 1:] != scores[:, :-1]
    start = torch.cummax(torch.where(starts_group, positions, 0), dim=1).values
    group = starts_group.long().cumsum(1) - 1
    size = torch.zeros(rows, width, device=scores.device).scatter_add_(
        1, group, torch.ones(rows, width, device=scores.device)
    )
    found = torch.zeros(rows, width, device=scores.device).scatter_add_(1, group, hits.float())
    tied, tied_relevant = size.gather(1, group).double(), found.gather(1, group).double()
    last = (relevant - 1).clamp(min=0)[:, None]
    in_boundary = scores == scores.gather(1, last)
    tied = torch.where(in_boundary, boundary_tied[:, None].double(), tied)
    tied_relevant = torch.where(in_boundary, boundary_relevant[:, None].double(), tied_relevant)

    before = (hits.long().cumsum(1) - hits.long()).gather(1, start).double()
    offset = (positions - start).double()  # u - 1
    share = tied_relevant / tied
    pairs = torch.where(tied > 1, offset * (tied_relevant - 1) / (tied - 1).clamp(min=1), 0.0)
    within = positions < relevant[:, None]
    precision_terms = share * (1 + before + pairs) / (positions + 1)
    count = relevant.double().where(relevant > 0, torch.nan)
    average_precision = (precision_terms * within).sum(1) / count
    r_precision = (share * within).sum(1) / count
    return average_precision, r_precision
