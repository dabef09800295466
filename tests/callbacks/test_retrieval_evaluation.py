"""The evaluation callback: de-duplication, set names, query/gallery roles and the image-count check."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_dml.callbacks import RetrievalEvaluation
from lightning_dml.callbacks.retrieval_evaluation import unique_by_index
from lightning_dml.data import Digits, RetrievalDataModule, RetrievalDataset, TensorImages
from lightning_dml.errors import LightningDMLError
from lightning_dml.methods import RetrievalModule
from lightning_dml.metrics import clustering_metrics, retrieval_metrics


class Flatten(RetrievalModule):
    """Embeds an image as its flattened pixels (no parameters to train)."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float()


def points(n: int = 60, classes: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered 1×2×2 'images' with their labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, 4, generator=generator) * 3
    return (centres[labels] + torch.randn(n, 4, generator=generator)).reshape(n, 1, 2, 2), labels


class QueryGallery(RetrievalDataModule):
    """Test set with explicit roles: even positions are queries, every item is in the gallery."""

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        images, labels = points()
        source = TensorImages(images, labels)
        is_query = torch.arange(len(labels)) % 2 == 0
        test = RetrievalDataset(source, is_query=is_query, is_gallery=torch.ones_like(is_query))
        return RetrievalDataset(source), test

    def transform(self, train: bool, scale: bool = True):
        return None


def trainer(**kwargs) -> L.Trainer:
    """A quiet trainer whose evaluation seeds k-means as ``clustering_metrics`` does; ``kwargs``: its
    ``RetrievalEvaluation``'s options."""
    return L.Trainer(
        callbacks=[RetrievalEvaluation(recall_at=[1, 4], seed=0, **kwargs)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_unique_by_index_drops_padded_repeats_and_sorts():
    outputs = {"indices": torch.tensor([3, 1, 3, 0, 1]), "labels": torch.tensor([30, 10, 31, 0, 11])}
    unique = unique_by_index(outputs)
    assert unique["indices"].tolist() == [0, 1, 3]
    assert unique["labels"].tolist() == [0, 10, 30]  # the first of each repeated index is kept


def test_query_vs_gallery_metrics_equal_the_metric_core():
    images, labels = points()
    embeddings = images.flatten(1)
    is_query = torch.arange(len(labels)) % 2 == 0
    ids = torch.arange(len(labels))
    expected = retrieval_metrics(
        embeddings[is_query],
        labels[is_query],
        embeddings,
        labels,
        query_ids=ids[is_query],
        gallery_ids=ids,
        recall_at=[1, 4],
    ) | clustering_metrics(embeddings[is_query], labels[is_query])  # k-means on the queries only
    (logged,) = trainer().test(
        Flatten(), datamodule=QueryGallery(validation=[], protocol="closed_set"), verbose=False
    )
    assert logged == pytest.approx({f"test/{key}": value for key, value in expected.items()}, abs=1e-6)
    assert logged["test/nmi"] != pytest.approx(clustering_metrics(embeddings, labels)["nmi"], abs=1e-3)


def test_cluster_all_clusters_queries_and_gallery_together():
    images, labels = points()
    expected = clustering_metrics(images.flatten(1), labels)
    (logged,) = trainer(cluster="all").test(
        Flatten(), datamodule=QueryGallery(validation=[], protocol="closed_set"), verbose=False
    )
    assert {key: logged[f"test/{key}"] for key in expected} == pytest.approx(expected, abs=1e-6)


def test_each_validation_set_is_logged_under_its_own_name():
    data = Digits(validation=["seen", "test"], eval_batch_size=100)
    logged = trainer().validate(Flatten(), datamodule=data, verbose=False)[0]
    assert {key.split("/")[0] for key in logged} == {"val_seen", "val_test"}
    test_set = data.test_set
    pixels = torch.stack([test_set[i]["image"] for i in range(len(test_set))]).flatten(1)
    expected = retrieval_metrics(pixels, test_set.labels, recall_at=[1, 4])
    assert logged["val_test/map@r"] == pytest.approx(expected["map@r"], abs=1e-6)


def test_an_evaluation_that_loses_images_is_refused():
    data = QueryGallery(validation=[], protocol="closed_set")
    data.setup()
    lossy = DataLoader(data.test_set, batch_size=7, sampler=range(0, 60, 2))
    with pytest.raises(LightningDMLError, match="evaluated 30 distinct images of 60"):
        trainer().test(Flatten(), dataloaders=lossy, verbose=False)
