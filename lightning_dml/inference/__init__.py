"""Inference after training: load the trained embedder and export it, search a gallery index, read and write
embedding files."""

from lightning_dml.inference.embedding_files import read_embeddings, write_embeddings
from lightning_dml.inference.export import Embedder, export_onnx, export_torchscript, load_embedder
from lightning_dml.inference.index import EmbeddingIndex, embed_images

__all__ = [
    "Embedder",
    "EmbeddingIndex",
    "embed_images",
    "export_onnx",
    "export_torchscript",
    "load_embedder",
    "read_embeddings",
    "write_embeddings",
]
