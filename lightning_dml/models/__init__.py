"""Models: backbones (images -> features), embedding heads (features -> embeddings), the DeML and GEMINI
networks, and readouts (pooled features of named layers)."""

from lightning_dml.models.backbones import SmallCNN, TimmBackbone, TorchvisionBackbone
from lightning_dml.models.cifar_resnet import CifarResNet
from lightning_dml.models.deml import ChannelAttention, DeMLNetwork, SplitSmallCNN
from lightning_dml.models.gemini import GeminiNetwork
from lightning_dml.models.heads import EmbeddingHead
from lightning_dml.models.readouts import LayerReadouts, Readout, ReadoutEmbedder

__all__ = [
    "ChannelAttention",
    "CifarResNet",
    "DeMLNetwork",
    "EmbeddingHead",
    "GeminiNetwork",
    "LayerReadouts",
    "Readout",
    "ReadoutEmbedder",
    "SmallCNN",
    "SplitSmallCNN",
    "TimmBackbone",
    "TorchvisionBackbone",
]
