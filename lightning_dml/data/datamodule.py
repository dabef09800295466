"""``RetrievalDataModule``: splits, transforms, the training batch sampler and the evaluation sets."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from lightning_dml.data.base import ImageSource, RetrievalDataset
from lightning_dml.data.batches import ClassBalanced, TrainingBatches
from lightning_dml.data.protocol import ClassSplit, Protocol, TestGallery
from lightning_dml.data.splits import check_evaluation_set, hold_out_classes, hold_out_images
from lightning_dml.data.transforms import Preprocessing, Transforms
from lightning_dml.errors import DataError
from lightning_dml.seeds import run_seed

Validation = Literal["seen", "unseen", "test"]
#: Loader workers per GPU when ``num_workers`` is left ``None``: at most this many, and the CPU cores per GPU.
GPU_WORKERS = 8
Stage = Literal["validate", "test", "predict"]
#: The defaults of ``sampler`` and ``transforms`` (frozen, so one instance serves every data module).
CLASS_BALANCED = ClassBalanced()
DATASET_TRANSFORMS = Transforms()


def on_gpu(trainer: L.Trainer | None) -> bool:
    """Whether ``trainer`` runs on CUDA devices."""
    return trainer is not None and trainer.strategy.root_device.type == "cuda"


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of dataset items, except that images held channels last (``(3, H, W)`` views of
    ``(H, W, 3)`` memory: the cache's, centre-cropped) become a channels-last batch: stacking them into a
    ``(B, 3, H, W)`` contiguous batch would transpose every image, 7 × the time of the copy (224 px)."""
    if all(item["image"].ndim == 3 and item["image"].stride(0) == 1 for item in items):
        batch = default_collate([{**item, "image": item["image"].permute(1, 2, 0)} for item in items])
        batch["image"] = batch["image"].permute(0, 3, 1, 2)
        return batch
    return default_collate(items)


def loader_options(trainer: L.Trainer | None, num_workers: int | None) -> dict[str, Any]:
    """Return the ``DataLoader`` arguments for a run on ``trainer``'s devices.

    On a GPU: ``num_workers`` (``None``: the CPU cores per device, at most :data:`GPU_WORKERS`), pinned
    memory, 4 batches prefetched per worker. On the CPU: ``num_workers`` (``None``: 0, the training process
    loads, as its threads already use the cores). Workers persist across epochs.
    """
    gpu = on_gpu(trainer)
    if num_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        num_workers = max(1, min(GPU_WORKERS, cores // trainer.num_devices)) if gpu else 0
    options = {
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "pin_memory": gpu,
        "collate_fn": collate_items,
    }
    if gpu and num_workers > 0:
        options["prefetch_factor"] = 4
    return options


class RetrievalDataModule(L.LightningDataModule):
    """Base data module for retrieval: a subclass says what the data is, this class how it is used.

    Subclasses implement :meth:`build`, returning the training pool and the test set (no transforms), and set
    the class attributes ``num_channels`` and ``default_preprocessing`` (the dataset's image sizes,
    normalisation and augmentation, which ``transforms`` may change).

    Args:
        sampler: how training batches are drawn (:mod:`lightning_dml.data.batches`): ``ClassBalanced`` (P
            classes × K images, the default), ``RandomBatches`` (plain shuffled batches, the G-DML paper's
            student and baselines) or ``ClassPairTriplets`` (GEMINI's fixed class-pair triplets).
        eval_batch_size: batch size for validation, test and predict.
        validation: which evaluation sets are checked during training, each logged under its own name
            (``val`` when there is one, else ``val_seen`` / ``val_unseen`` / ``val_test``):
            ``seen`` — held-out images of the training classes; ``unseen`` — held-out training classes
            (zero-shot model selection without touching the test set); ``test`` — the test set itself
            (test-set feedback: fine for monitoring, not for model selection in a paper).
        val_classes: training classes held out for ``unseen``: a fraction if < 1, else a count.
        val_images: fraction of each training class's images held out for ``seen`` (each class keeps the
            images the sampler needs).
        protocol: how classes are split: ``zero_shot`` (train and test classes disjoint, checked at
            ``setup``) or ``closed_set`` (the same classes, other images).
        test_gallery: what the test images are searched among: ``test_images`` (the test set itself,
            leave-one-out or by its own query/gallery roles) or ``training_images`` (the test images as
            queries, the training images as gallery, both with evaluation transforms: the G-DML paper's
            evaluation; needs ``closed_set``).
        transforms: changes to the dataset's image preprocessing (:class:`~lightning_dml.data.transforms.
            Transforms`: sizes, crop, normalisation, augmentation, raw 0–255 pixels).
        num_workers: data loader worker processes; ``None``: :func:`loader_options` decides (on a GPU, the
            CPU cores per device up to 8, with pinned memory and prefetching; on the CPU, none).
        seed: seed of the data split (validation hold-outs, closed-set test images): fixed, so that runs
            differ only in training. The batch sampler's plans follow the run seed (``seed_everything``).
    """

    num_channels: int = 3
    default_preprocessing: Preprocessing = Preprocessing(image_size=224, mean=(0.5,), std=(0.5,))

    def __init__(
        self,
        sampler: TrainingBatches = CLASS_BALANCED,
        eval_batch_size: int = 256,
        validation: Sequence[Validation] = ("unseen",),
        val_classes: float = 0.2,
        val_images: float = 0.2,
        protocol: ClassSplit = "zero_shot",
        test_gallery: TestGallery = "test_images",
        transforms: Transforms = DATASET_TRANSFORMS,
        num_workers: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(set(validation)) != len(validation):
            raise DataError(f"validation lists a set twice: {list(validation)}")
        self.sampler = sampler
        self.eval_batch_size = eval_batch_size
        self.validation = list(validation)
        self.val_classes = val_classes
        self.val_images = val_images
        self.protocol = Protocol(protocol, test_gallery)
        self.preprocessing = transforms.resolve(self.default_preprocessing)
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: RetrievalDataset | None = None
        self.val_sets: dict[str, RetrievalDataset] = {}
        self.test_set: RetrievalDataset | None = None

    def build(self) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Return the training pool and the test set for ``self.protocol``, without transforms."""
        raise NotImplementedError

    def screen_images(
        self, pool: RetrievalDataset, test: RetrievalDataset
    ) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Return the training pool and test set that the splits are made from: every image here; data
        modules reading image files check them first (see :class:`ImageFileDataModule`)."""
        return pool, test

    def split_pool(
        self, source: ImageSource, train_classes: Sequence[int], test_fraction: float
    ) -> tuple[RetrievalDataset, RetrievalDataset]:
        """Split one pool of images into training pool and test set by the protocol, with the split seed (see
        :meth:`Protocol.split_pool`)."""
        return self.protocol.split_pool(source, train_classes, test_fraction, self.seed)

    def transform(self, train: bool, scale: bool = True) -> Callable | None:
        """Return the transform of training (``train``) or evaluation images (from ``preprocessing``), without
        its float steps unless ``scale``."""
        return self.preprocessing.transform(train, scale)

    def normalise_with(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise images with ``mean`` and ``std``: ``preprocessing`` takes them, and the sets already
        built (by an early ``setup``) get the training and evaluation transforms recomputed from it."""
        self.preprocessing = replace(self.preprocessing, mean=tuple(mean), std=tuple(std))
        self.retransform()

    def scales_after_transfer(self) -> bool:
        """Whether the loaders give uint8 images that :meth:`on_after_batch_transfer` finishes: under a
        trainer on a GPU (the float steps run there, batched) or with loader workers (uint8 batches cross
        processes in a quarter of the bytes; float ones cost more to move than the float steps cost, see
        benchmarks/input_pipeline.py). Otherwise the loaders' images are the sets' own, ready for the
        model."""
        trainer = self.trainer
        return trainer is not None and (
            on_gpu(trainer) or loader_options(trainer, self.num_workers)["num_workers"] > 0
        )

    def loader_view(self, dataset: RetrievalDataset) -> RetrievalDataset:
        """Return ``dataset`` as the loaders read it when :meth:`scales_after_transfer`: the same items, its
        transform stopping before the float steps (uint8 images)."""
        view = copy.copy(dataset)
        view.transform = self.transform(dataset is self.train_set, scale=False)
        return view

    def retransform(self) -> None:
        """Give the sets already built the training and evaluation transforms of ``preprocessing``."""
        if self.train_set is None:
            return
        train_t, eval_t = self.transform(True), self.transform(False)
        self.train_set.transform = train_t
        for dataset in [self.test_set, *self.val_sets.values()]:
            dataset.transform = eval_t

    @property
    def num_train_classes(self) -> int:
        """Number of classes the model trains on (known after ``setup``)."""
        if self.train_set is None:
            self.setup()
        return self.train_set.num_classes

    def setup(self, stage: str | None = None) -> None:
        """Build and check the training, validation and test sets once; for ``fit`` also check that the
        training set can form batches, so that an impossible split stops before any training step."""
        if self.train_set is None:
            self.build_sets()
        if stage == "fit":
            self.check_training_set()

    def build_sets(self) -> None:
        """Split the data into the training, validation and test sets, check them and log their sizes."""
        self.protocol.check_validation(self.validation)
        pool, test = self.screen_images(*self.build())
        train_t, eval_t = self.transform(True), self.transform(False)
        generator = torch.Generator().manual_seed(self.seed)
        keep = torch.ones(len(pool), dtype=torch.bool)
        held_out = {}
        if "unseen" in self.validation:
            classes = hold_out_classes(pool.class_ids, self.val_classes, generator)
            held_out["unseen"] = torch.isin(pool.class_ids, classes)
            keep &= ~held_out["unseen"]
        if "seen" in self.validation:
            kept = keep.nonzero().flatten()
            needed = self.sampler.images_per_class
            chosen = hold_out_images(pool.class_ids[kept], self.val_images, needed, generator)
            held_out["seen"] = torch.zeros_like(keep).index_fill_(0, kept[chosen], True)
            keep &= ~held_out["seen"]
        self.train_set = pool.select(keep.nonzero().flatten(), train_t, contiguous_labels=True)
        test_set = test.select(
            torch.arange(len(test)), eval_t, is_query=test.is_query, is_gallery=test.is_gallery
        )
        self.test_set = self.protocol.test_set(test_set, self.train_set, eval_t)
        names = ["val"] if len(self.validation) == 1 else [f"val_{v}" for v in self.validation]
        self.val_sets = {
            name: self.test_set
            if choice == "test"
            else pool.select(held_out[choice].nonzero().flatten(), eval_t)
            for name, choice in zip(names, self.validation, strict=True)
        }
        pairs = zip(names, self.validation, strict=True)
        unseen = {name: self.val_sets[name] for name, choice in pairs if choice == "unseen"}
        self.protocol.check_disjoint(self.train_set, {"test": self.test_set, **unseen})
        self.check_evaluation_sets()
        rank_zero_info(self.summary())

    def check_evaluation_sets(self) -> None:
        """Refuse an evaluation set whose metrics would mean nothing (see :func:`check_evaluation_set`)."""
        fixes = {
            "seen": f"raise val_images (each class keeps {self.sampler.images_per_class} images for "
            f"training, as sampler {self.sampler} needs)",
            "unseen": "raise val_classes",
        }
        check_evaluation_set("the test set", self.test_set, self.protocol.test_fix)
        for (name, dataset), choice in zip(self.val_sets.items(), self.validation, strict=True):
            if choice != "test":
                check_evaluation_set(f"{name} (validation: {choice})", dataset, fixes[choice])

    def check_training_set(self) -> None:
        """Refuse a training set without negatives: one class, or sampler batches without them."""
        classes = self.train_set.num_classes
        if classes < 2:
            raise DataError(
                f"the training set holds {classes} class; metric learning needs at least 2: train on more "
                "classes (train_classes, val_classes)"
            )
        self.sampler.check_classes(classes)

    def summary(self) -> str:
        """Return a short table of images and classes per split and the protocol."""
        sets = {"train": self.train_set, **self.val_sets, "test": self.test_set}
        rows = [f"{name:<12}{len(ds):>9}{ds.num_classes:>9}" for name, ds in sets.items()]
        header = f"{type(self).__name__} ({self.protocol})\n{'set':<12}{'images':>9}{'classes':>9}"
        return "\n".join([header, *rows])

    def evaluation_sets(self, stage: Stage) -> dict[str, RetrievalDataset]:
        """Return the named evaluation sets of a stage, in data loader order."""
        self.setup(stage)
        return self.val_sets if stage == "validate" else {"test": self.test_set}

    def train_dataloader(self) -> DataLoader:
        """Batches of ``sampler``, distinct whole batches on each DDP rank.

        Under DDP the trainer needs ``use_distributed_sampler=False`` (the CLI's default): the batch sampler
        shards itself. Its plans are seeded by the run seed, rank 0's (the same on every rank).
        """
        seed = run_seed() if self.trainer is None else self.trainer.strategy.broadcast(run_seed())
        return self._loader(
            self.train_set, batch_sampler=self.sampler.batch_sampler(self.train_set.labels, seed)
        )

    def _eval_loader(self, dataset: RetrievalDataset) -> DataLoader:
        # Sharded here rather than by Lightning, which cannot inject its sampler into the training batch
        # sampler (hence use_distributed_sampler=False); the evaluation callback drops the padded duplicates.
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(dataset, trainer.world_size, trainer.global_rank, shuffle=False)
        return self._loader(dataset, batch_size=self.eval_batch_size, sampler=sampler)

    def _loader(self, dataset: RetrievalDataset, **sampling: Any) -> DataLoader:
        # the set's uint8 view when the float steps run after transfer (see scales_after_transfer)
        dataset = self.loader_view(dataset) if self.scales_after_transfer() else dataset
        return DataLoader(dataset, **sampling, **loader_options(self.trainer, self.num_workers))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Finish the transforms of a uint8 batch where it arrived (the loaders' :meth:`loader_view`, when
        :meth:`scales_after_transfer`; the sets' own images are floats): normalised floats by
        :meth:`Preprocessing.scale_batch`, on the GPU when the trainer uses one."""
        if batch["image"].dtype == torch.uint8:
            batch["image"] = self.preprocessing.scale_batch(batch["image"])
        return batch

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per validation set, in ``val_sets`` order."""
        return [self._eval_loader(ds) for ds in self.evaluation_sets("validate").values()]

    def test_dataloader(self) -> DataLoader:
        """The test set's loader."""
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        """The test set's loader (embeddings of every test image, in order)."""
        return self._eval_loader(self.test_set)
