"""The embedding network after training: loaded from a checkpoint, exported to TorchScript and ONNX."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.core.module import _jit_is_scripting
from torch import Tensor, nn

from lightning_dml.errors import DataError
from lightning_dml.inference.index import eval_mode
from lightning_dml.methods import RetrievalModule
from lightning_dml.models.readouts import Readout, ReadoutEmbedder


class Embedder(nn.Module):
    """The embedding network of a ``RetrievalModule`` alone: ``forward(images) = module.embed(images)``."""

    def __init__(self, module: RetrievalModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: Tensor) -> Tensor:
        """Embeddings (B, D) of images (B, C, H, W)."""
        return self.module.embed(images)


def load_embedder(
    checkpoint_path: str | Path,
    model_class: type[RetrievalModule] | None = None,
    map_location: str | torch.device = "cpu",
    readout: Readout | None = None,
    **overrides: Any,
) -> RetrievalModule | ReadoutEmbedder:
    """Load a trained ``RetrievalModule`` from a Lightning checkpoint, in eval mode; with ``readout``, a
    ``ReadoutEmbedder`` of it, whose output is that readout's features instead of the embedding.

    A checkpoint written by ``lightning-dml fit`` names its class and holds its whole configuration, so no
    argument is needed (classes outside ``lightning_dml`` must be imported first). A checkpoint of a module
    built in Python holds no sub-modules: pass ``model_class`` and the modules as ``overrides`` (for example
    ``backbone=SmallCNN(...)``, ``loss=...``). Loading uses ``weights_only=True``.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path} (look under the run's checkpoints/ folder)")
    if model_class is None:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        model_class = resolve_class(checkpoint.get("hyper_parameters", {}).get("_class_path"), path)
    model = model_class.load_from_checkpoint(path, map_location=map_location, weights_only=True, **overrides)
    return model.eval() if readout is None else ReadoutEmbedder(model, readout).eval()


def resolve_class(class_path: str | None, checkpoint: Path) -> type[RetrievalModule]:
    """The ``RetrievalModule`` subclass a CLI checkpoint names.

    Only ``lightning_dml`` modules are imported here; like Lightning's own loader, any other class must
    already be imported, so a checkpoint cannot make us import arbitrary code.
    """
    if class_path is None:
        raise DataError(f"{checkpoint} names no model class (not saved by the CLI); pass model_class=...")
    module_name, _, class_name = class_path.rpartition(".")
    if module_name.split(".")[0] == "lightning_dml":
        importlib.import_module(module_name)
    model_class = getattr(sys.modules.get(module_name), class_name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, RetrievalModule)):
        raise DataError(
            f"{checkpoint} names {class_path}, not an imported RetrievalModule; import it first or pass "
            "model_class=..."
        )
    return model_class


def export_torchscript(module: nn.Module, example: Tensor, path: str | Path) -> Path:
    """Trace the embedding network on ``example`` images and save it as TorchScript at ``path``.

    ``module`` is a ``RetrievalModule`` (its ``embed`` is exported) or any images-to-embeddings
    ``nn.Module``. Tracing (not scripting) works for every Python-written ``embed`` and timm backbone;
    the batch size stays free, the image size is the example's. Load with ``torch.jit.load(path)``.
    TorchScript is deprecated in PyTorch (a FutureWarning says so); prefer ONNX for new deployments.
    """
    network = as_embedder(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Lightning's own switch that lets tracing inspect a LightningModule outside a Trainer.
    with eval_mode(network), torch.no_grad(), _jit_is_scripting():
        network(example)  # builds lazily made state (a readout's projection) before tracing
        torch.jit.trace(network, example).save(str(path))
    return path


def export_onnx(
    module: nn.Module, example: Tensor, path: str | Path, opset_version: int | None = None
) -> Path:
    """Export the embedding network to ONNX at ``path``: input ``images``, output ``embeddings``.

    Uses PyTorch's ``torch.export``-based exporter (``dynamo=True``, the default since PyTorch 2.9 and the
    maintained one), with a dynamic batch axis; the other axes are fixed to the example's. Weights are
    stored inside the one file (models under 2 GB). Run with ``onnxruntime.InferenceSession(path)``.
    """
    network = as_embedder(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(example) == 0:
        raise DataError("the export example must hold at least one image")
    if len(example) == 1:  # torch.export fixes axes of size 1, so trace on two images
        example = example.expand(2, *example.shape[1:])
    batch = torch.export.Dim("batch")
    with eval_mode(network), torch.no_grad():
        network(example)  # builds lazily made state (a readout's projection) before exporting
        torch.onnx.export(
            network,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_shapes=({0: batch},),
            opset_version=opset_version,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return path


def as_embedder(module: nn.Module) -> nn.Module:
    """The network to export: ``Embedder(module)`` for a ``RetrievalModule``, else ``module`` itself."""
    return Embedder(module) if isinstance(module, RetrievalModule) else module
