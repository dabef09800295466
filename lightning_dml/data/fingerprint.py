"""A short fingerprint of a dataset view, so that files computed on one split refuse to meet another."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from lightning_dml.data.base import RetrievalDataset

#: Images whose pixels enter the fingerprint: the first, middle and last of the view.
_SAMPLED_IMAGES = 3


def dataset_fingerprint(dataset: RetrievalDataset) -> str:
    """``"{source type}:{source length}:{view length}:{hash}"`` of a dataset view.

    The hash covers the selected source indices, the view's labels and the pixels of a few images, so
    another dataset, another split or another label numbering gives another fingerprint; transforms are
    not part of it.
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(dataset.indices.numpy().astype(np.int64).tobytes())
    digest.update(torch.as_tensor(dataset.labels).numpy().astype(np.int64).tobytes())
    if len(dataset):
        for position in np.linspace(0, len(dataset) - 1, _SAMPLED_IMAGES).round().astype(int):
            digest.update(np.asarray(dataset.source.load(int(dataset.indices[position]))).tobytes())
    source = dataset.source
    return f"{type(source).__name__}:{len(source)}:{len(dataset)}:{digest.hexdigest()}"
