"""Data layer: image sources, retrieval views, batch samplers, transforms and one data module per dataset."""

from lightning_dml.data.base import ImageFiles, ImageSource, RetrievalDataset, TensorImages
from lightning_dml.data.batches import ClassBalanced, ClassPairTriplets, RandomBatches, TrainingBatches
from lightning_dml.data.benchmark import BenchmarkDataModule
from lightning_dml.data.cars import Cars196
from lightning_dml.data.cub import CUB200
from lightning_dml.data.datamodule import RetrievalDataModule
from lightning_dml.data.digits import Digits
from lightning_dml.data.folder import ImageFolder
from lightning_dml.data.image_csv import ImageCSV
from lightning_dml.data.image_files import ImageFileDataModule
from lightning_dml.data.inshop import InShop
from lightning_dml.data.pair_triplets import ClassPairTripletSampler
from lightning_dml.data.sampler import ClassBalancedBatchSampler
from lightning_dml.data.sop import StanfordOnlineProducts
from lightning_dml.data.torchvision_sets import CIFAR10, CIFAR100, MNIST, FashionMNIST
from lightning_dml.data.transforms import Preprocessing, Transforms

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CUB200",
    "MNIST",
    "BenchmarkDataModule",
    "Cars196",
    "ClassBalanced",
    "ClassBalancedBatchSampler",
    "ClassPairTripletSampler",
    "ClassPairTriplets",
    "Digits",
    "FashionMNIST",
    "ImageCSV",
    "ImageFileDataModule",
    "ImageFiles",
    "ImageFolder",
    "ImageSource",
    "InShop",
    "Preprocessing",
    "RandomBatches",
    "RetrievalDataModule",
    "RetrievalDataset",
    "StanfordOnlineProducts",
    "TensorImages",
    "TrainingBatches",
    "Transforms",
]
