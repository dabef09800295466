"""Models: backbones (images -> features), embedding heads (features -> embeddings) and their composition."""

from lightning_dml.models.backbones import SmallCNN, TimmBackbone, TorchvisionBackbone
from lightning_dml.models.cifar_resnet import CifarResNet
from lightning_dml.models.deml import ChannelAttention, DeMLNetwork, SplitSmallCNN
from lightning_dml.models.gemini import GeminiNetwork
from lightning_dml.models.heads import EmbeddingHead, EmbeddingNetwork

__all__ = [
    "ChannelAttention",
    "CifarResNet",
    "DeMLNetwork",
    "EmbeddingHead",
    "EmbeddingNetwork",
    "GeminiNetwork",
    "SmallCNN",
    "SplitSmallCNN",
    "TimmBackbone",
    "TorchvisionBackbone",
]
