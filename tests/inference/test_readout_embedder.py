"""A shipped readout: predict, index, checkpoint loading and both exports give the evaluation's features."""

import lightning as L
import onnxruntime
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_dml.callbacks import EmbeddingWriter, RetrievalEvaluation
from lightning_dml.data import Digits
from lightning_dml.inference import (
    EmbeddingIndex,
    embed_images,
    export_onnx,
    export_torchscript,
    load_embedder,
    read_embeddings,
)
from lightning_dml.losses import BinomialDevianceLoss
from lightning_dml.methods import MetricLearning
from lightning_dml.models import Readout, ReadoutEmbedder, SmallCNN

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

# 16 channels × 2 × 2 = 64 dims, projected to 20: the projection is shipped too
GRID = Readout("backbone.blocks.1", pooling="grid", size=2, max_dim=20, seed=5)


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A model, its checkpoint, the digits test images and the evaluation's features of ``GRID``."""
    torch.manual_seed(0)
    model = MetricLearning(SmallCNN(1, widths=(8, 16)), BinomialDevianceLoss(), embedding_size=8)
    data = Digits(validation=[])
    evaluation = RetrievalEvaluation(recall_at=[1], clustering=False, readouts={"grid": GRID})
    trainer = quiet_trainer(callbacks=[evaluation])
    trainer.test(model, datamodule=data, verbose=False)
    checkpoint = tmp_path_factory.mktemp("run") / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    images = torch.stack([data.test_set[i]["image"] for i in range(len(data.test_set))])
    return model, checkpoint, images, evaluation.last_readouts["test"]["grid"], data


def test_readout_embedder_and_loaded_checkpoint_give_the_evaluation_features(evaluated):
    model, checkpoint, images, features, _ = evaluated
    assert features.shape == (len(images), 20)
    torch.testing.assert_close(embed_images(ReadoutEmbedder(model, GRID), images), features)
    loaded = load_embedder(
        checkpoint,
        MetricLearning,
        readout=GRID,
        backbone=SmallCNN(1, widths=(8, 16)),
        loss=BinomialDevianceLoss(),
    )
    assert isinstance(loaded, ReadoutEmbedder) and not loaded.training
    torch.testing.assert_close(embed_images(loaded, images), features)


def test_index_of_readout_features_searches_with_the_readout_embedder(evaluated):
    model, _, images, features, _ = evaluated
    index = EmbeddingIndex(features)
    scores, ids = index.search_images(ReadoutEmbedder(model, GRID), images[:6], k=1)
    assert ids[:, 0].tolist() == list(range(6))  # each image finds itself
    torch.testing.assert_close(scores[:, 0], torch.ones(6), atol=1e-5, rtol=0)


def test_exports_give_the_evaluation_features(evaluated, tmp_path):
    model, _, images, features, _ = evaluated
    embedder = ReadoutEmbedder(model, GRID)
    scripted = torch.jit.load(str(export_torchscript(embedder, images[:3], tmp_path / "readout.pt")))
    torch.testing.assert_close(scripted(images[:7]), features[:7], atol=1e-5, rtol=0)
    session = onnxruntime.InferenceSession(
        str(export_onnx(embedder, images[:1], tmp_path / "readout.onnx")), providers=["CPUExecutionProvider"]
    )
    (exported,) = session.run(None, {"images": images[:5].numpy()})
    torch.testing.assert_close(torch.from_numpy(exported), features[:5], atol=1e-5, rtol=0)


def test_predict_writes_the_readout_as_the_embeddings(evaluated, tmp_path):
    model, _, _, features, data = evaluated
    writer = EmbeddingWriter(tmp_path / "readout.npz", readout=GRID)
    loader = DataLoader(data.test_set, batch_size=100)
    quiet_trainer(callbacks=[writer]).predict(model, loader, return_predictions=False)
    written = read_embeddings(tmp_path / "readout.npz")
    torch.testing.assert_close(torch.from_numpy(written["embeddings"]), features)
