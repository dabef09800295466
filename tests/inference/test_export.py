"""Export of the embedding network: TorchScript and ONNX give the model's embeddings; checkpoint loading."""

from pathlib import Path

import lightning as L
import onnxruntime
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_dml.data import RetrievalDataset, TensorImages
from lightning_dml.errors import DataError
from lightning_dml.inference import export_onnx, export_torchscript, load_embedder
from lightning_dml.inference.export import resolve_class
from lightning_dml.losses import BinomialDevianceLoss
from lightning_dml.methods import MetricLearning
from lightning_dml.models import SmallCNN

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


def trained_looking_model() -> MetricLearning:
    """A small model whose batch-norm statistics are not the initial ones, back in training mode."""
    torch.manual_seed(0)
    model = MetricLearning(SmallCNN(in_channels=1, widths=(8, 16)), BinomialDevianceLoss(), embedding_size=12)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8) * 2 + 0.5)
    return model.train()


def reference(model: MetricLearning, images: torch.Tensor) -> torch.Tensor:
    """The model's own embeddings in eval mode."""
    with torch.no_grad():
        return model.eval().embed(images)


def test_torchscript_gives_the_model_embeddings_for_any_batch_size(tmp_path):
    model = trained_looking_model()
    path = export_torchscript(model, torch.randn(3, 1, 8, 8), tmp_path / "export/embedder.pt")
    assert model.training  # the training flag is given back
    loaded = torch.jit.load(str(path))
    for batch in (1, 7):
        images = torch.randn(batch, 1, 8, 8)
        torch.testing.assert_close(loaded(images), reference(model, images), atol=1e-5, rtol=0)


def test_onnx_gives_the_model_embeddings_with_a_dynamic_batch_axis(tmp_path):
    model = trained_looking_model()
    path = export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "embedder.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["embedder.onnx"]  # weights inside the one file
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["embeddings"]
    for batch in (1, 5):
        images = torch.randn(batch, 1, 8, 8)
        (embeddings,) = session.run(None, {"images": images.numpy()})
        torch.testing.assert_close(torch.from_numpy(embeddings), reference(model, images), atol=1e-5, rtol=0)


def test_python_built_checkpoint_loads_with_its_class_and_modules(tmp_path):
    model = trained_looking_model()
    images = torch.randn(6, 1, 8, 8)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    dataset = RetrievalDataset(TensorImages(torch.zeros(2, 1, 8, 8), [0, 1]), transform=torch.Tensor.float)
    trainer.predict(model, DataLoader(dataset), return_predictions=False)  # attaches the model to save it
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(DataError, match="names no model class"):
        load_embedder(tmp_path / "model.ckpt")
    loaded = load_embedder(
        tmp_path / "model.ckpt",
        MetricLearning,
        backbone=SmallCNN(in_channels=1, widths=(8, 16)),
        loss=BinomialDevianceLoss(),
    )
    assert not loaded.training
    torch.testing.assert_close(loaded.embed(images), reference(model, images))


def test_checkpoint_classes_are_resolved_without_importing_foreign_modules():
    checkpoint = Path("run.ckpt")
    assert resolve_class("lightning_dml.methods.MetricLearning", checkpoint) is MetricLearning
    with pytest.raises(DataError, match="not an imported RetrievalModule"):
        resolve_class("collections.OrderedDict", checkpoint)
    with pytest.raises(DataError, match="not an imported RetrievalModule"):
        resolve_class("a_package_never_imported.Model", checkpoint)
    with pytest.raises(DataError, match="checkpoint not found"):
        load_embedder("nowhere.ckpt")
