"""Readouts in the evaluation: the logged metrics equal the metric core's on layers pooled by hand."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_dml.callbacks import RetrievalEvaluation
from lightning_dml.callbacks.run_summary import metrics_table
from lightning_dml.data import Digits
from lightning_dml.losses import BinomialDevianceLoss
from lightning_dml.methods import MetricLearning
from lightning_dml.metrics import retrieval_metrics
from lightning_dml.models import Readout, SmallCNN

READOUTS = {
    "gap": Readout("backbone.blocks.1"),
    "grid2": Readout("backbone.blocks.1", pooling="grid", size=2),
}


def digits_model() -> MetricLearning:
    torch.manual_seed(0)
    return MetricLearning(SmallCNN(1, widths=(8, 16)), BinomialDevianceLoss(), embedding_size=8)


def test_readout_metrics_equal_the_metric_core_on_hand_pooled_layers():
    model, data = digits_model(), Digits(validation=[])
    evaluation = RetrievalEvaluation(recall_at=[1, 4], clustering=False, readouts=READOUTS)
    trainer = L.Trainer(
        callbacks=[evaluation], logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (logged,) = trainer.test(model, datamodule=data, verbose=False)
    images = torch.stack([data.test_set[i]["image"] for i in range(len(data.test_set))])
    labels = torch.as_tensor(data.test_set.labels)
    with torch.no_grad():
        blocks = model.eval().backbone.blocks
        maps = blocks[1](F.max_pool2d(blocks[0](images), 2))  # (N, 16, 4, 4): 8 px → 4 px
    by_hand = {
        "gap": maps.mean(dim=(2, 3)),
        "grid2": maps.reshape(len(maps), 16, 2, 2, 2, 2).mean(dim=(3, 5)).flatten(1),
    }
    for name, features in by_hand.items():
        expected = retrieval_metrics(features.double(), labels, recall_at=[1, 4])
        assert {key: logged[f"test/{name}/{key}"] for key in expected} == pytest.approx(expected, abs=1e-6)
        torch.testing.assert_close(evaluation.last_readouts["test"][name], features)
    embedding = retrieval_metrics(model(images).detach(), labels, recall_at=[1, 4])
    assert logged["test/map@r"] == pytest.approx(embedding["map@r"], abs=1e-6)  # the embedding is unchanged
    assert "embeddings" in evaluation.last_outputs["test"]
    assert not any(key.startswith("readout/") for key in evaluation.last_outputs["test"])


def test_summary_shows_readout_rows_beside_the_embedding():
    metrics = {"val/map@r": 0.3, "val/grid7/map@r": 0.5, "test/map@r": 0.4, "test/grid7/map@r": 0.6}
    table = metrics_table(metrics)
    rows = list(table.columns[0].cells)
    assert rows == ["map@r", "grid7/map@r"]
    assert list(table.columns[2].cells) == ["0.4000", "0.6000"]
