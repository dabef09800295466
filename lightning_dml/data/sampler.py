"""Training batch samplers: class-balanced P×K batches or plain shuffled ones, whole batches split across
ranks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from lightning_dml.errors import DataError

_MAX_LISTED_CLASSES = 10


class ShardedBatchSampler(Sampler[list[int]]):
    """Base of the batch samplers: a subclass plans an epoch's batches, this class shards them across ranks.

    Every rank computes the same plan, so rank ``r`` of ``W`` takes whole batches ``r, r + W, ...``,
    truncated so all ranks yield the same number. ``num_replicas`` / ``rank`` left ``None`` are read from
    ``torch.distributed`` when iterating (1 / 0 if it is not initialised). Under Lightning set
    ``Trainer(use_distributed_sampler=False)``: these samplers do the distributed split themselves.

    A subclass sets ``num_batches``, the length of every epoch's plan: the same in each epoch, because
    Lightning reads ``len()`` once and skips validation in an epoch that yields fewer batches.
    """

    num_batches: int

    def __init__(self, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def epoch_plan(self) -> Tensor:
        """All batches of the current epoch as a ``(num_batches, batch_size)`` tensor of positions."""
        raise NotImplementedError

    @property
    def sampler(self) -> ShardedBatchSampler:
        """This sampler itself, because Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` only."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next ``__iter__`` / ``__len__`` use."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        """Yield this rank's batches for the current epoch as lists of dataset positions."""
        for batch in self._rank_batches():
            yield batch.tolist()

    def __len__(self) -> int:
        """Number of batches ``__iter__`` yields on this rank, the same in every epoch."""
        world_size, _ = world(self.num_replicas, self.rank)
        return self.num_batches // world_size

    def _rank_batches(self) -> Tensor:
        world_size, rank = world(self.num_replicas, self.rank)
        plan = self.epoch_plan()
        per_rank = len(plan) // world_size
        return plan[rank::world_size][:per_rank]


def world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(world size, rank)``: the given values, else ``torch.distributed``'s, else ``(1, 0)``."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if not 0 <= rank < num_replicas:
        raise DataError(f"rank={rank} is outside num_replicas={num_replicas}; pass 0 <= rank < num_replicas")
    return num_replicas, rank


class ClassBalancedBatchSampler(ShardedBatchSampler):
    """Yield batches of ``classes_per_batch`` (P) distinct classes × ``samples_per_class`` (K) positions.

    The K positions of a class are consecutive in a batch. Each epoch, every class's images are shuffled
    and cut into groups of K (the last group topped up with other images of the same class); batches take
    P groups of P distinct classes, drawn in proportion to the groups each class has left. Every epoch has
    ``num_batches`` batches, the most the class sizes allow (:func:`most_batches`); the groups left over
    are dropped. The plan depends only on ``(seed, epoch)``; ranks share it out as
    :class:`ShardedBatchSampler` says.
    """

    def __init__(
        self,
        labels: Tensor | Sequence[int],
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_replicas, rank)
        if classes_per_batch < 1 or samples_per_class < 1:
            raise DataError(
                f"classes_per_batch={classes_per_batch} and samples_per_class={samples_per_class} "
                "must both be at least 1"
            )
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        class_ids, counts = labels.unique(return_counts=True)
        _check_class_sizes(class_ids, counts, classes_per_batch, samples_per_class)
        order = labels.argsort(stable=True)
        self.positions_per_class: list[Tensor] = list(order.split(counts.tolist()))
        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class
        self.seed = seed
        groups_per_class = (counts + samples_per_class - 1) // samples_per_class
        self.num_batches = most_batches(groups_per_class.tolist(), classes_per_batch)
        self._cached_plan: tuple[int, Tensor] | None = None

    def epoch_plan(self) -> Tensor:
        """All batches of the current epoch as a ``(num_batches, P * K)`` tensor, cached per epoch."""
        if self._cached_plan is None or self._cached_plan[0] != self.epoch:
            self._cached_plan = (self.epoch, self._build_plan(self.epoch))
        return self._cached_plan[1]

    def _build_plan(self, epoch: int) -> Tensor:
        generator = epoch_generator(self.seed, epoch)
        groups = [self._shuffled_groups(positions, generator) for positions in self.positions_per_class]
        # a class is in a batch at most once, so at most num_batches of its groups can be used
        remaining = torch.tensor([min(len(g), self.num_batches) for g in groups], dtype=torch.float64)
        batches = []
        # hand-written: PML's MPerClassSampler neither covers every image per epoch nor splits across ranks
        for left in range(self.num_batches, 0, -1):
            classes = self._draw_classes(remaining, left, generator)
            remaining[classes] -= 1
            batches.append(torch.cat([groups[c][int(remaining[c])] for c in classes.tolist()]))
        return torch.stack(batches)  # at least one: there are >= P classes of >= K images

    def _draw_classes(self, remaining: Tensor, left: int, generator: torch.Generator) -> Tensor:
        """P distinct classes in proportion to their ``remaining`` groups, such that ``left - 1`` more
        batches stay possible: of the classes with ``>= left`` groups (each needed in every batch left
        unless others have groups to spare), at most the spare groups' count is left out."""
        spare = int(remaining.clamp(max=left).sum()) - self.classes_per_batch * left
        full = (remaining >= left).nonzero().flatten()
        needed = max(0, len(full) - spare)
        chosen = full[torch.multinomial(remaining[full], needed, generator=generator)] if needed else full[:0]
        weights = remaining.clone()
        weights[chosen] = 0
        others = self.classes_per_batch - needed
        drawn = torch.multinomial(weights, others, generator=generator) if others else chosen[:0]
        return torch.cat([chosen, drawn])

    def _shuffled_groups(self, positions: Tensor, generator: torch.Generator) -> Tensor:
        """Shuffle a class's positions into ``(ceil(n / K), K)`` groups, the last topped up from the first."""
        shuffled = positions[torch.randperm(len(positions), generator=generator)]
        # the top-up comes from the first groups, so it never repeats an image of the last group (n >= K)
        shortfall = -len(shuffled) % self.samples_per_class
        return torch.cat([shuffled, shuffled[:shortfall]]).view(-1, self.samples_per_class)


class ShuffledBatchSampler(ShardedBatchSampler):
    """Yield batches of ``batch_size`` positions of a fresh random permutation each epoch, the incomplete last
    batch dropped (so every epoch has the same length): plain shuffled batches without regard to classes, as
    the G-DML paper trains its student and baselines. The plan depends only on ``(seed, epoch)``."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_replicas, rank)
        if not 1 <= batch_size <= num_items:
            raise DataError(
                f"batch_size={batch_size} but the training set holds {num_items} images; set batch_size "
                f"between 1 and {num_items}"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.num_batches = num_items // batch_size

    def epoch_plan(self) -> Tensor:
        """The current epoch's ``(num_batches, batch_size)`` positions."""
        order = torch.randperm(self.num_items, generator=epoch_generator(self.seed, self.epoch))
        return order[: self.num_batches * self.batch_size].view(self.num_batches, self.batch_size)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded by ``(seed, epoch)``, hashed into the 32 bits torch's CPU generator keeps."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=4).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def most_batches(groups_per_class: Sequence[int], classes_per_batch: int) -> int:
    """The most batches of ``classes_per_batch`` distinct classes that classes with ``groups_per_class``
    groups fill: the largest ``b`` with ``sum(min(g, b)) >= classes_per_batch * b``."""
    groups = torch.as_tensor(groups_per_class)
    batches = int(groups.sum()) // classes_per_batch
    while int(groups.clamp(max=batches).sum()) < classes_per_batch * batches:
        batches -= 1
    return batches


def _check_class_sizes(
    class_ids: Tensor, counts: Tensor, classes_per_batch: int, samples_per_class: int
) -> None:
    """Raise ``DataError`` when a class has fewer than K images or there are fewer than P classes."""
    ids, sizes = class_ids.tolist(), counts.tolist()
    small = [i for i, size in enumerate(sizes) if size < samples_per_class]
    if small:
        listed = ", ".join(f"{ids[i]} ({sizes[i]} images)" for i in small[:_MAX_LISTED_CLASSES])
        more = f" and {len(small) - _MAX_LISTED_CLASSES} more" if len(small) > _MAX_LISTED_CLASSES else ""
        raise DataError(
            f"samples_per_class={samples_per_class} but these classes have fewer images: {listed}{more}; "
            "lower samples_per_class or drop those classes"
        )
    if len(ids) < classes_per_batch:
        raise DataError(
            f"classes_per_batch={classes_per_batch} but the labels hold only {len(ids)} classes; "
            f"lower classes_per_batch to at most {len(ids)}"
        )
