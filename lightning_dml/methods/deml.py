"""``DeML``: hybrid-attention decoupled metric learning (Chen & Deng, CVPR 2019), faithful to the authors'
Caffe release by default, with a reconstruction of the paper's adversary network and every ablation one
argument away."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_dml.losses import BinomialDevianceLoss
from lightning_dml.losses.deml import (
    AdversaryKind,
    DeMLAdversary,
    activation_penalty,
    dann_schedule,
    unit_row_norm_penalty,
)
from lightning_dml.methods.base import RetrievalModule, gathered_across_ranks, lr_groups, with_bias_groups
from lightning_dml.models.deml import DeMLNetwork, DeMLOutput


class DeML(RetrievalModule):
    """I streams × J learners trained with a per-learner metric loss, an adversary constraint and the
    release's auxiliary penalties.

    Loss: the metric loss (default binomial deviance, alpha 2, beta 0.5, negative cost 35) of every learner's
    normalised embedding, averaged over a stream's learners and summed over streams; plus the adversary
    (``hinge``: the release's constraint; ``grl``: our reconstruction of the adversary network the paper
    describes, which the release does not contain, reversal strength on the DANN schedule of training
    progress; ``none``); plus, with ``auxiliary``, the release's activation penalty
    (``activation_weight``) and unit-row-norm penalty (``row_norm_weight``) on each stream's embedding layer.
    The test embedding is the concatenation of the normalised learner embeddings, stream-then-learner order.
    ``streams=1, learners=1`` with both attentions, the adversary and ``auxiliary`` off is the U512 baseline
    on the same backbone (the release's recipe: ``configs/deml/u512_cub.yaml``, negative cost 25).

    Args:
        backbone: a splittable backbone (see :func:`lightning_dml.models.deml.split_backbone`).
        streams, learners, embedding_size, object_attention, channel_attention, attention_hidden,
            attention_steps, attention_sigma, stationary_attention: see
            :class:`lightning_dml.models.deml.DeMLNetwork`.
        loss: metric loss with pytorch-metric-learning's calling convention (``None``: DeML's binomial
            deviance).
        adversary: ``hinge``, ``grl`` or ``none``.
        adversary_weight: weight per learner pair (release: 0.2).
        adversary_hidden: hidden width of the ``grl`` adversary network.
        auxiliary: add the release's two penalties.
        activation_weight: weight of the activation penalty (release: 0.014, divided by d_l inside).
        row_norm_weight: weight of the unit-row-norm penalty (release: 0.5, divided by d_l inside).
        backbone_lr: learning rate of the pretrained layers (trunks and upper layers; ``None``: the
            optimizer's); the new layers (attentions, embeddings, adversary) use the optimizer's.
        bias_lr_mult: every bias (convolution biases, BatchNorm shifts) trains at this multiple of its layer's
            learning rate and without weight decay (release: ``lr_mult: 2, decay_mult: 0`` on every bias).
        gather_across_ranks: under DDP, compute the metric loss on every rank's embeddings, as
            :class:`~lightning_dml.methods.MetricLearning` does; the other terms are per image and need no
            gathering (DDP's gradient average makes them the mean over all ranks' images).
        **kwargs: optimizer, scheduler and memory-format options of :class:`RetrievalModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        streams: int = 3,
        learners: int = 3,
        embedding_size: int = 56,
        object_attention: bool = True,
        channel_attention: bool = True,
        attention_hidden: int = 64,
        attention_steps: int = 10,
        attention_sigma: float | None = None,
        stationary_attention: bool = False,
        loss: nn.Module | None = None,
        adversary: AdversaryKind = "hinge",
        adversary_weight: float = 0.2,
        adversary_hidden: int = 128,
        auxiliary: bool = True,
        activation_weight: float = 0.014,
        row_norm_weight: float = 0.5,
        backbone_lr: float | None = None,
        bias_lr_mult: float = 2.0,
        gather_across_ranks: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.network = DeMLNetwork(
            backbone,
            streams=streams,
            learners=learners,
            embedding_size=embedding_size,
            object_attention=object_attention,
            channel_attention=channel_attention,
            attention_hidden=attention_hidden,
            attention_steps=attention_steps,
            attention_sigma=attention_sigma,
            stationary_attention=stationary_attention,
        )
        self.loss = (
            loss if loss is not None else BinomialDevianceLoss(alpha=2.0, beta=0.5, negative_cost=35.0)
        )
        self.adversary = DeMLAdversary(adversary, embedding_size, adversary_weight, adversary_hidden)
        self.auxiliary = auxiliary
        self.activation_weight = activation_weight
        self.row_norm_weight = row_norm_weight
        self.backbone_lr = backbone_lr
        self.bias_lr_mult = bias_lr_mult
        self.gather_across_ranks = gather_across_ranks

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The concatenated normalised learner embeddings (B, I·J·d), stream-then-learner order."""
        return self.network(images).concatenated()

    def attention(self, images: torch.Tensor) -> DeMLOutput:
        """The network's output with every stream's attention map and crop box (for display)."""
        return self.network(images, with_attention=True)

    def progress(self) -> float:
        """Training progress in [0, 1]: optimizer steps taken over the steps planned (0 without a trainer)."""
        trainer = self._trainer
        if trainer is None:
            return 0.0
        return min(1.0, self.global_step / max(1, trainer.estimated_stepping_batches))

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Metric loss + adversary + auxiliary penalties; each term is logged under ``train/``."""
        labels = batch["label"]
        output = self.network(batch["image"])
        normalized = output.normalized()
        loss_fn, _ = gathered_across_ranks(self.loss, enabled=self.gather_across_ranks)
        metric = sum(
            torch.stack([loss_fn(learner, labels) for learner in stream]).mean() for stream in normalized
        )
        strength = dann_schedule(self.progress())
        adversary = self.adversary(normalized, strength)
        terms = {"metric_loss": metric, "adversary": adversary}
        if self.auxiliary:
            layers = [stream.embeddings for stream in self.network.streams]
            terms["activation_penalty"] = self.activation_weight * sum(
                activation_penalty(stream_layers[0].weight, pooled[0])
                for stream_layers, pooled in zip(layers, output.pooled, strict=True)
            )
            terms["row_norm_penalty"] = self.row_norm_weight * sum(
                unit_row_norm_penalty(layer.weight) for stream_layers in layers for layer in stream_layers
            )
        batch_size = len(labels)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        if self.adversary.kind == "grl":
            self.log("train/reversal_strength", strength, batch_size=batch_size)
        return sum(terms.values())

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Pretrained layers (trunks, upper layers) at ``backbone_lr``, new layers at the optimizer's rate;
        each group's biases in a group of their own at ``bias_lr_mult`` × that rate, without weight decay."""
        pretrained = [
            p
            for stream in self.network.streams
            for part in (stream.trunk, stream.upper)
            for p in part.parameters()
        ]
        pretrained_ids = {id(p) for p in pretrained}
        new = [p for p in self.parameters() if id(p) not in pretrained_ids]
        biases = [p for name, p in self.named_parameters() if name.endswith(".bias")]
        return with_bias_groups(
            lr_groups((pretrained, self.backbone_lr), (new, None)), biases, self.bias_lr_mult
        )
