import math

import torch

from lightning_dml.losses import NeighbourhoodPreservation


def brute_force(embeddings: torch.Tensor, reference: torch.Tensor, temperature: float) -> float:
    """KL(p_i || q_i) averaged over i, by loops in float64 from the definition."""
    e = embeddings.double().tolist()
    r = reference.double().flatten(1)
    r = (r - r.mean(0)).tolist()

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    total = 0.0
    for i in range(len(e)):
        others = [j for j in range(len(e)) if j != i]
        p = [math.exp(cosine(r[i], r[j]) / temperature) for j in others]
        q = [math.exp(cosine(e[i], e[j]) / temperature) for j in others]
        p = [x / sum(p) for x in p]
        q = [x / sum(q) for x in q]
        total += sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    return total / len(e)


def test_the_term_is_the_mean_kl_of_neighbour_distributions_computed_by_hand():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(7, 3, generator=generator)
    reference = torch.rand(7, 2, 2, 2, generator=generator)  # non-negative maps, as a ReLU block's
    term = NeighbourhoodPreservation(weight=2.5, temperature=0.3)
    expected = 2.5 * brute_force(embeddings, reference, 0.3)
    assert abs(float(term(embeddings, reference)) - expected) < 1e-5 * expected


def test_embeddings_with_the_references_neighbours_cost_nothing_and_no_gradient_reaches_the_reference():
    generator = torch.Generator().manual_seed(1)
    reference = torch.randn(6, 4, generator=generator, requires_grad=True)
    centred = (reference - reference.mean(0)).detach()
    term = NeighbourhoodPreservation(temperature=0.2)
    assert float(term(3 * centred, reference)) < 1e-6  # same cosines, whatever the scale
    embeddings = torch.randn(6, 4, generator=generator, requires_grad=True)
    term(embeddings, reference).backward()
    assert reference.grad is None and embeddings.grad.abs().sum() > 0
