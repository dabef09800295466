"""Retrieval after training: search a gallery index, load the trained embedder, export it."""

from lightning_dml.retrieval.export import Embedder, export_onnx, export_torchscript, load_embedder
from lightning_dml.retrieval.index import EmbeddingIndex, embed_images

__all__ = [
    "Embedder",
    "EmbeddingIndex",
    "embed_images",
    "export_onnx",
    "export_torchscript",
    "load_embedder",
]
