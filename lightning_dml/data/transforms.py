"""Image transforms: one recipe per data module, from the dataset's defaults and the config's ``transforms``.

Every transform is ``ToImage`` → geometry → float → normalisation. Geometry works on uint8 images; the float
steps (:meth:`Preprocessing.scaling`) may instead run batched after transfer, on uint8 batches the loader
workers made (:meth:`Preprocessing.scale_batch`; ``RetrievalDataModule.scales_after_transfer``). The
geometry depends on whether the recipe crops: small in-memory images (digits, MNIST, CIFAR) are not cropped
and, for training, take the dataset's own augmentation; image files are resized and cropped to
``image_size`` (a random crop and a horizontal flip for training, the centre crop for evaluation).
``raw_pixels`` replaces scaling and normalisation by float pixel values in 0–255 (the GEMINI teacher's
input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Crop = Literal["random_resized", "random"]


@dataclass(frozen=True)
class Preprocessing:
    """A data module's image transforms with every value decided (see :meth:`transform`).

    Args:
        image_size: side of the square crops (with ``crop``); otherwise the images' own size.
        mean: normalisation mean, one value per channel (or one for all).
        std: normalisation standard deviation, one value per channel (or one for all).
        resize: size images are resized to before cropping (the shorter side if one number, ``(h, w)`` if
            two); ``None``: training crops from the original image, evaluation resizes the shorter side to
            ``image_size``. Used only with ``crop``.
        crop: the training crop to ``image_size``: ``random_resized`` (a random area fraction in
            ``crop_scale``, resized) or ``random`` (a plain window); ``None``: images are not cropped.
        crop_scale: area fraction range of the ``random_resized`` crop.
        augmentation: the dataset's training augmentation of uncropped images, applied to the uint8 image.
        augment: augment training images; ``False``: they get the evaluation transform.
        raw_pixels: float pixel values in 0–255, neither scaled nor normalised, instead of normalised ones.
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | tuple[int, int] | None = None
    crop: Crop | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    augmentation: tuple[Callable, ...] = ()
    augment: bool = True
    raw_pixels: bool = False

    def transform(self, train: bool, scale: bool = True) -> v2.Compose:
        """Return the training (``train``) or evaluation transform: ``ToImage`` → geometry → float.

        Geometry without ``crop``: the dataset's ``augmentation`` when training and ``augment``, else none.
        With ``crop``, training (and ``augment``): resize (if ``resize``), the random crop, a horizontal flip;
        evaluation: resize (to ``resize``, else the shorter side to ``image_size``), the centre crop.
        ``scale=False`` stops before the float steps: the image stays uint8, for :meth:`scaling` to finish.
        """
        augmenting = train and self.augment
        if self.crop is None:
            geometry = list(self.augmentation) if augmenting else []
        elif augmenting:
            crop = (
                v2.RandomResizedCrop(self.image_size, scale=self.crop_scale)
                if self.crop == "random_resized"
                else v2.RandomCrop(self.image_size)
            )
            resize = [] if self.resize is None else [v2.Resize(self.resize)]
            geometry = [*resize, crop, v2.RandomHorizontalFlip()]
        else:
            resize = self.image_size if self.resize is None else self.resize
            geometry = [v2.Resize(resize), v2.CenterCrop(self.image_size)]
        scaling = self.scaling().transforms if scale else []
        return v2.Compose([v2.ToImage(), *geometry, *scaling])

    def scaling(self) -> v2.Compose:
        """Return the float steps of :meth:`transform` (uint8 → float32, then normalisation unless
        ``raw_pixels``); they work alike on one ``(C, H, W)`` image and on a ``(B, C, H, W)`` batch."""
        if self.raw_pixels:
            return v2.Compose([v2.ToDtype(torch.float32, scale=False)])
        # in place: ToDtype has just made the float copy of the uint8 image; one allocation fewer saves a
        # third of the time of a batch of 224 px images, the same values
        normalise = v2.Normalize(list(self.mean), list(self.std), inplace=True)
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), normalise])

    def scale_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Return :meth:`scaling` of a ``(B, C, H, W)`` uint8 batch, the same values: one batched operation
        on a GPU; on the CPU image by image into one float batch (of the same memory format), so that each
        image's passes stay in the cache (2–4 × faster than passes over a whole batch of 224 px images)."""
        if images.device.type != "cpu":
            return self.scaling()(images)
        batch = torch.empty_like(images, dtype=torch.float32)
        for image, scaled in zip(images, batch, strict=True):
            scaled.copy_(image)  # torchvision's ToDtype: the float conversion, then the scale
            if not self.raw_pixels:
                scaled.mul_(1.0 / 255)
                v2.functional.normalize(scaled, list(self.mean), list(self.std), inplace=True)
        return batch

    def display_normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Return the ``(mean, std)`` that map the transformed images back to [0, 1] (``x * std + mean``)."""
        if self.raw_pixels:
            return (0.0,), (1 / 255,)
        return self.mean, self.std

    def describe(self) -> str:
        """Return the recipe in one line: resizing and cropping (if any), then the pixel scale."""
        geometry = (
            f"resize {self.resize or 'none'}, crop {self.image_size} ({self.crop}), "
            if self.crop is not None
            else f"{self.image_size} px, "
        )
        pixels = "raw 0–255 pixels" if self.raw_pixels else f"mean {self.mean}, std {self.std}"
        return f"{geometry}{pixels}{'' if self.augment else ', no augmentation'}"


def raw_pixel_transform(preprocessing: Preprocessing) -> v2.Compose:
    """Return the evaluation transform of ``preprocessing`` with raw 0–255 pixels (the GEMINI teacher's
    input, whatever the data module feeds its own model)."""
    return replace(preprocessing, raw_pixels=True).transform(train=False)


@dataclass(frozen=True)
class Transforms:
    """The ``transforms`` of a data module: changes to the dataset's :class:`Preprocessing` defaults.

    Each value left ``None`` is the dataset's (its ``default_preprocessing``); see :class:`Preprocessing` for
    what the values mean.

    Args:
        image_size: side of the square crops.
        resize: size images are resized to before cropping (one number: the shorter side; two: ``[h, w]``).
        crop: the training crop: ``random_resized`` or ``random``; setting it crops datasets that do not.
        crop_scale: area fraction range of the ``random_resized`` crop.
        mean: normalisation mean; leave it out when the backbone has a ``pretrained_cfg``: the CLI then sets
            it to ``pretrained_cfg["mean"]`` (and refuses another value).
        std: normalisation standard deviation; like ``mean``, from ``pretrained_cfg["std"]``.
        augment: augment training images (the dataset's augmentation, or the random crop and flip).
        raw_pixels: feed float pixel values in 0–255, without scaling or normalisation (the GEMINI teacher's
            input scale).
    """

    image_size: int | None = None
    resize: int | tuple[int, int] | None = None
    crop: Crop | None = None
    crop_scale: tuple[float, float] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = True
    raw_pixels: bool = False

    def resolve(self, defaults: Preprocessing) -> Preprocessing:
        """Return ``defaults`` with this object's values in place of the dataset's."""
        names = ("image_size", "resize", "crop", "crop_scale", "mean", "std")
        given = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        changes = {
            name: tuple(v) if isinstance(v, list) else v for name, v in given.items()
        }  # lists from Python
        return replace(defaults, **changes, augment=self.augment, raw_pixels=self.raw_pixels)


#: ImageNet-style image files: random resized crops to 224 px, ImageNet normalisation.
IMAGE_FILES = Preprocessing(image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop="random_resized")
