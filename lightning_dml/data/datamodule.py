"""``RetrievalDataModule``: splits, transforms, the training batch sampler and the evaluation sets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2

from lightning_dml.data.base import ImageSource, RetrievalDataset
from lightning_dml.data.pair_triplets import ClassPairTripletSampler
from lightning_dml.data.sampler import ClassBalancedBatchSampler, ShuffledBatchSampler
from lightning_dml.data.splits import (
    check_class_list,
    check_disjoint_classes,
    check_evaluation_set,
    hold_out_classes,
    hold_out_images,
)
from lightning_dml.errors import DataError
from lightning_dml.seeds import run_seed

Protocol = Literal["zero_shot", "closed_set", "closed_set_train_reference"]
TrainSampler = Literal["class_balanced", "random", "class_pair_triplets", "shuffled_class_pair_triplets"]
Validation = Literal["seen", "unseen", "test"]
Stage = Literal["validate", "test", "predict"]


class RetrievalDataModule(L.LightningDataModule):
    """Base data module for retrieval: a subclass says what the data is, this class how it is used.

    Subclasses implement :meth:`build`, returning the training pool and the test set (no transforms), and may
    override :meth:`train_augmentation` or :meth:`default_transforms` and the class attributes
    ``num_channels``, ``image_size``, ``mean`` and ``std``.

    Args:
        classes_per_batch: P, distinct classes in each training batch (``class_balanced``).
        samples_per_class: K, images of each class in a training batch (batch size P·K); with
            ``class_pair_triplets`` it is b, the triplets per batch (batch size 3b).
        batch_size: images per batch of the ``random`` sampler (``None``: P·K).
        eval_batch_size: batch size for validation, test and predict.
        validation: which evaluation sets are checked during training, each logged under its own name
            (``val`` when there is one, else ``val_seen`` / ``val_unseen`` / ``val_test``):
            ``seen`` — held-out images of the training classes; ``unseen`` — held-out training classes
            (zero-shot model selection without touching the test set); ``test`` — the test set itself
            (test-set feedback: fine for monitoring, not for model selection in a paper).
        val_classes: training classes held out for ``unseen``: a fraction if < 1, else a count.
        val_images: fraction of each training class's images held out for ``seen``.
        protocol: ``zero_shot`` (train and test classes disjoint, checked at ``setup``), ``closed_set``
            (the same classes, test images evaluated leave-one-out) or ``closed_set_train_reference`` (the
            G-DML paper's: the closed-set split, the test images as queries searched among the training
            images as gallery, both with evaluation transforms).
        train_sampler: ``class_balanced`` (P classes × K images per batch); ``random`` (plain shuffled
            batches of ``batch_size``, the G-DML paper's student and baselines); ``class_pair_triplets``
            (GEMINI: one ordered class pair's b triplets per batch, a fixed plan replayed every epoch); or
            ``shuffled_class_pair_triplets`` (the same fixed triplets dealt into new mixed batches of b each
            epoch: the G-DML authors' Triplet-Network baseline).
        raw_pixels: feed float pixel values in 0–255, without scaling or normalisation (the GEMINI teacher's
            input scale), to the default transforms.
        augment: apply the dataset's training augmentation in the default training transform.
        train_transform: transform for training images; ``None`` gives the dataset's default.
        eval_transform: transform for evaluation images; ``None`` gives the dataset's default.
        num_workers: data loader worker processes.
        seed: seed of the data split (validation hold-outs, closed-set test images): fixed, so that runs
            differ only in training. The batch sampler's plans follow the run seed (``seed_everything``).
    """

    num_channels: int = 3
    image_size: int = 224
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __init__(
        self,
        classes_per_batch: int = 8,
        samples_per_class: int = 4,
        batch_size: int | None = None,
        eval_batch_size: int = 256,
        validation: Sequence[Validation] = ("unseen",),
        val_classes: float = 0.2,
        val_images: float = 0.2,
        protocol: Protocol = "zero_shot",
        train_sampler: TrainSampler = "class_balanced",
        raw_pixels: bool = False,
        augment: bool = True,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(set(validation)) != len(validation):
            raise DataError(f"validation lists a set twice: {list(validation)}")
        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.validation = list(validation)
        self.val_classes = val_classes
        self.val_images = val_images
        self.protocol = protocol
        self.train_sampler = train_sampler
        self.raw_pixels = raw_pixels
        self.augment = augment
        self.train_transform = train_transform
        self.eval_transform = eval_transform
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
        """Split one pool of images into training pool and test set by ``self.protocol``.

        Zero-shot: the images of ``train_classes`` versus the rest; the list must name known classes, each
        once, some but not all. Closed set: ``test_fraction`` of each class's images (seeded) versus the rest.
        """
        if self.protocol == "zero_shot":
            classes = torch.unique(source.labels).tolist()
            check_class_list("train_classes", train_classes, classes)
            if not 0 < len(train_classes) < len(classes):
                raise DataError(
                    f"zero-shot tests the classes not in train_classes, but train_classes picks "
                    f"{len(train_classes)} of the {len(classes)} classes; pick some but not all, or choose "
                    "protocol: closed_set"
                )
            is_train = torch.isin(source.labels, torch.as_tensor(list(train_classes), dtype=torch.long))
        else:
            generator = torch.Generator().manual_seed(self.seed)
            is_train = torch.ones(len(source), dtype=torch.bool)
            is_train[hold_out_images(source.labels, test_fraction, 1, generator)] = False
        everything = RetrievalDataset(source)
        return everything.select(is_train.nonzero().flatten()), everything.select(
            (~is_train).nonzero().flatten()
        )

    def train_augmentation(self) -> list[Callable]:
        """Return the dataset's training augmentations, applied before conversion to float."""
        return []

    def default_transforms(self, train: bool) -> Callable:
        """Return conversion to float and normalisation by ``mean``/``std`` (or raw 0–255 values with
        ``raw_pixels``), augmenting first if ``train`` and ``augment``."""
        augmentation = self.train_augmentation() if train and self.augment else []
        scaling = (
            [v2.ToDtype(torch.float32, scale=False)]
            if self.raw_pixels
            else [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        )
        return v2.Compose([v2.ToImage(), *augmentation, *scaling])

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
        if "unseen" in self.validation and self.protocol != "zero_shot":
            raise DataError(
                f"validation: unseen holds out training classes, but protocol {self.protocol} tests the "
                "training classes; use validation: [seen] or protocol: zero_shot"
            )
        pool, test = self.screen_images(*self.build())
        train_t = self.train_transform or self.default_transforms(train=True)
        eval_t = self.eval_transform or self.default_transforms(train=False)
        generator = torch.Generator().manual_seed(self.seed)
        keep = torch.ones(len(pool), dtype=torch.bool)
        held_out = {}
        if "unseen" in self.validation:
            classes = hold_out_classes(pool.class_ids, self.val_classes, generator)
            held_out["unseen"] = torch.isin(pool.class_ids, classes)
            keep &= ~held_out["unseen"]
        if "seen" in self.validation:
            kept = keep.nonzero().flatten()
            chosen = hold_out_images(pool.class_ids[kept], self.val_images, self.samples_per_class, generator)
            held_out["seen"] = torch.zeros_like(keep).index_fill_(0, kept[chosen], True)
            keep &= ~held_out["seen"]
        self.train_set = pool.select(keep.nonzero().flatten(), train_t, contiguous_labels=True)
        self.test_set = test.select(
            torch.arange(len(test)), eval_t, is_query=test.is_query, is_gallery=test.is_gallery
        )
        if self.protocol == "closed_set_train_reference":
            self.test_set = queries_against_training_images(self.test_set, self.train_set, eval_t)
        names = ["val"] if len(self.validation) == 1 else [f"val_{v}" for v in self.validation]
        self.val_sets = {
            name: self.test_set
            if choice == "test"
            else pool.select(held_out[choice].nonzero().flatten(), eval_t)
            for name, choice in zip(names, self.validation, strict=True)
        }
        if self.protocol == "zero_shot":
            check_disjoint_classes(self.train_set.class_ids, self.test_set.class_ids, "test")
            if "unseen" in self.validation:
                name = names[self.validation.index("unseen")]
                check_disjoint_classes(self.train_set.class_ids, self.val_sets[name].class_ids, name)
        self.check_evaluation_sets()
        rank_zero_info(self.summary())

    def check_evaluation_sets(self) -> None:
        """Refuse an evaluation set whose metrics would mean nothing (see :func:`check_evaluation_set`)."""
        fixes = {
            "seen": f"raise val_images (each class keeps samples_per_class={self.samples_per_class} images "
            "for training)",
            "unseen": "raise val_classes",
            "test": "leave classes out of train_classes (or the dataset's training split), or choose "
            "protocol: closed_set"
            if self.protocol == "zero_shot"
            else "raise test_fraction (or give the dataset's test split more images)",
        }
        check_evaluation_set("the test set", self.test_set, fixes["test"])
        for (name, dataset), choice in zip(self.val_sets.items(), self.validation, strict=True):
            if choice != "test":
                check_evaluation_set(f"{name} (validation: {choice})", dataset, fixes[choice])

    def check_training_set(self) -> None:
        """Refuse a training set without negatives: one class, or class-balanced batches of one class."""
        classes = self.train_set.num_classes
        if classes < 2:
            raise DataError(
                f"the training set holds {classes} class; metric learning needs at least 2: train on more "
                "classes (train_classes, val_classes)"
            )
        if self.train_sampler == "class_balanced" and not 2 <= self.classes_per_batch <= classes:
            raise DataError(
                f"classes_per_batch={self.classes_per_batch}, but class-balanced batches need 2 to {classes} "
                f"classes (the training set's); set classes_per_batch between 2 and {classes}"
            )

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
        """Batches of ``train_sampler``, distinct whole batches on each DDP rank.

        Under DDP the trainer needs ``use_distributed_sampler=False`` (the CLI's default): the batch sampler
        shards itself. Its plans are seeded by the run seed, rank 0's (the same on every rank).
        """
        seed = run_seed() if self.trainer is None else self.trainer.strategy.broadcast(run_seed())
        if self.train_sampler.endswith("class_pair_triplets"):
            shuffle = self.train_sampler == "shuffled_class_pair_triplets"
            sampler = ClassPairTripletSampler(
                self.train_set.labels, self.samples_per_class, seed=seed, shuffle_triplets=shuffle
            )
        elif self.train_sampler == "random":
            batch_size = self.batch_size or self.classes_per_batch * self.samples_per_class
            sampler = ShuffledBatchSampler(len(self.train_set), batch_size, seed=seed)
        else:
            sampler = ClassBalancedBatchSampler(
                self.train_set.labels, self.classes_per_batch, self.samples_per_class, seed=seed
            )
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, dataset: RetrievalDataset) -> DataLoader:
        # Sharded here rather than by Lightning, which cannot inject its sampler into the training batch
        # sampler (hence use_distributed_sampler=False); the evaluation callback drops the padded duplicates.
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(dataset, trainer.world_size, trainer.global_rank, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per validation set, in ``val_sets`` order."""
        return [self._eval_loader(ds) for ds in self.evaluation_sets("validate").values()]

    def test_dataloader(self) -> DataLoader:
        """The test set's loader."""
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        """The test set's loader (embeddings of every test image, in order)."""
        return self._eval_loader(self.test_set)


class ConcatenatedImages(ImageSource):
    """The images of several dataset views one after the other, labelled by class id (their source's)."""

    def __init__(self, views: Sequence[RetrievalDataset]) -> None:
        self.views = list(views)
        self.labels = torch.cat([view.class_ids for view in self.views])
        self.starts = torch.tensor([0, *(len(view) for view in self.views)]).cumsum(0)

    def _locate(self, i: int) -> tuple[RetrievalDataset, int]:
        which = int(torch.searchsorted(self.starts, i, right=True)) - 1
        return self.views[which], i - int(self.starts[which])

    def load(self, i: int) -> object:
        """Return image ``i`` of the concatenation, untransformed."""
        view, position = self._locate(i)
        return view.source.load(int(view.indices[position]))

    def describe(self, i: int) -> str:
        """Return the name of image ``i`` in its own source."""
        view, position = self._locate(i)
        return view.describe(position)


def queries_against_training_images(
    test: RetrievalDataset, train: RetrievalDataset, transform: Callable
) -> RetrievalDataset:
    """One evaluation set: the test images as queries, the training images as gallery (labels = class ids)."""
    combined = ConcatenatedImages([test, train])
    is_query = torch.arange(len(combined)) < len(test)
    return RetrievalDataset(combined, None, transform, is_query=is_query, is_gallery=~is_query)
