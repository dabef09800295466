"""Backbones: plain ``nn.Module``s mapping images (B, C, H, W) to pooled features (B, out_features).

Each is chosen in YAML by ``class_path``; every ``__init__`` argument is type-hinted for jsonargparse.
"""

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_dml.errors import ConfigError

_OFFLINE_FIX = (
    "set pretrained: false, or pre-populate the Hugging Face / torch hub cache (HF_HOME, TORCH_HOME) "
    "on a machine with internet"
)


def _download_error(library: str, name: str, err: Exception, fix: str) -> ConfigError:
    """One-line error for pretrained weights that could not be downloaded."""
    return ConfigError(
        f"Pretrained weights for {library} model {name!r} could not be downloaded "
        f"({type(err).__name__}); {fix}."
    )


def _load_timm_checkpoint(model: nn.Module, checkpoint_path: str, name: str, in_channels: int) -> None:
    """Load a timm-format state dict into ``model``: classifier weights are ignored, the first conv is
    adapted to ``in_channels``, and every learnable weight of the model must be in the file.

    Hand-written rather than timm's ``pretrained_cfg_overlay=dict(file=...)``: with ``num_classes=0`` timm
    loads non-strictly and only logs missing keys, so a checkpoint of another architecture would leave the
    model silently at random initialisation.
    """
    import timm  # deferred for start-up time

    mismatch = f"checkpoint_path {checkpoint_path} does not fit timm model {name!r}"
    fix = f"give a state_dict saved from timm.create_model({name!r})"
    state = timm.models.load_state_dict(checkpoint_path)  # unwraps EMA / "state_dict" nesting, weights_only
    first_convs = model.pretrained_cfg.get("first_conv") or ()
    for conv in [first_convs] if isinstance(first_convs, str) else first_convs:
        weight = state.get(f"{conv}.weight")
        if weight is not None and weight.shape[1] != in_channels:
            state[f"{conv}.weight"] = timm.models.adapt_input_conv(
                in_channels, weight, base_chans=weight.shape[1]
            )
    try:
        missing = set(model.load_state_dict(state, strict=False).missing_keys)
    except RuntimeError as err:  # shape mismatch; its second line names the first offending weight
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[min(1, len(lines) - 1)]
        raise ConfigError(f"{mismatch} ({detail}); {fix}.") from err
    missing_weights = [key for key, _ in model.named_parameters() if key in missing]
    if missing_weights:
        raise ConfigError(
            f"{mismatch} ({len(missing_weights)} weights missing, e.g. {missing_weights[0]}); {fix}."
        )


class TimmBackbone(nn.Module):
    """A timm model without its classifier: images -> globally pooled features (B, ``out_features``).

    ``pretrained_cfg`` is timm's dict for the model (``mean``, ``std``, ``input_size``, ...), used for input
    normalisation. ``checkpoint_path`` loads local timm-format weights (``.safetensors`` or ``.pth``, as on
    the Hugging Face hub) instead of downloading them, whatever ``pretrained`` says. ``model_kwargs`` go to
    ``timm.create_model`` (for example ``drop_path_rate`` or ``img_size``).
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        in_channels: int = 3,
        checkpoint_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import timm  # deferred for start-up time

        super().__init__()
        if not timm.is_model(name):
            raise ConfigError(f"Unknown timm model {name!r}; pick a name listed by timm.list_models().")
        if checkpoint_path is not None and not Path(checkpoint_path).is_file():
            raise ConfigError(f"checkpoint_path {checkpoint_path} is not a file; give an existing file.")
        download = pretrained and checkpoint_path is None
        try:
            self.model = timm.create_model(
                name, pretrained=download, num_classes=0, in_chans=in_channels, **(model_kwargs or {})
            )
        except OSError as err:
            fix = f"{_OFFLINE_FIX}, or give checkpoint_path: /path/to/{name}.safetensors"
            raise _download_error("timm", name, err, fix) from err
        if checkpoint_path is not None:
            _load_timm_checkpoint(self.model, checkpoint_path, name, in_channels)
        self.out_features: int = self.model.num_features
        self.pretrained_cfg: dict[str, Any] = dict(self.model.pretrained_cfg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, out_features) of images (B, C, H, W)."""
        return self.model(images)


def _remove_classifier(model: nn.Module, name: str) -> int:
    """Replace the model's last ``nn.Linear`` classifier by ``Identity``; return its ``in_features``."""
    for attribute in ("fc", "classifier", "heads", "head"):
        classifier = getattr(model, attribute, None)
        if isinstance(classifier, nn.Linear):
            setattr(model, attribute, nn.Identity())
            return classifier.in_features
        if isinstance(classifier, nn.Module):
            linears = [(path, m) for path, m in classifier.named_modules() if isinstance(m, nn.Linear)]
            if linears:
                path, last = linears[-1]
                classifier.set_submodule(path, nn.Identity())
                return last.in_features
    raise ConfigError(
        f"torchvision model {name!r} has no nn.Linear classifier to remove; "
        "pick another architecture or use TimmBackbone."
    )


def _remove_aux_heads(model: nn.Module) -> None:
    """Drop googlenet's / inception's auxiliary classifiers so ``forward`` returns one tensor."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for aux in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, aux):
                setattr(model, aux, None)


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first 3-channel ``Conv2d`` for one taking ``in_channels``.

    The new filters are the old filters' average over input channels, scaled by 3 / in_channels, so an
    image whose channels are all equal gives the same response as the same image in RGB.
    """
    path, conv = next(
        (p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3
    )
    new_conv = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        mean_filter = conv.weight.mean(dim=1, keepdim=True)
        new_conv.weight.copy_(mean_filter.expand_as(new_conv.weight) * (3 / in_channels))
        if conv.bias is not None:
            new_conv.bias.copy_(conv.bias)
    model.set_submodule(path, new_conv)


class TorchvisionBackbone(nn.Module):
    """A torchvision classification model without its classifier: images -> features (B, ``out_features``).

    ``weights`` names torchvision weights (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ...) or is ``None`` for random
    initialisation. googlenet / inception_v3 lose their auxiliary heads. With ``in_channels != 3`` the first
    convolution is rebuilt (pretrained filters averaged over channels). ``weights`` (the torchvision enum, or
    ``None``) keeps the weights' meta; ``pretrained_cfg`` gives ``mean``, ``std`` and ``input_size`` from the
    chosen (else the default) weights' transforms, in timm's format.
    """

    def __init__(self, name: str = "resnet18", weights: str | None = None, in_channels: int = 3) -> None:
        super().__init__()
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(
                f"Unknown torchvision classification model {name!r}; pick a name listed by "
                "torchvision.models.list_models(module=torchvision.models)."
            )
        weights_class = torchvision.models.get_model_weights(name)
        try:
            self.weights = None if weights is None else weights_class.verify(weights)
        except (ValueError, KeyError) as err:
            choices = ", ".join(["DEFAULT", *(w.name for w in weights_class)])
            raise ConfigError(
                f"Unknown weights {weights!r} for torchvision model {name!r}; use one of: {choices}."
            ) from err
        # The paper initialisation, asked for explicitly to silence torchvision's FutureWarning.
        kwargs = (
            {"init_weights": True} if self.weights is None and name in ("googlenet", "inception_v3") else {}
        )
        try:
            self.model = torchvision.models.get_model(name, weights=self.weights, **kwargs)
        except OSError as err:
            raise _download_error("torchvision", name, err, f"{_OFFLINE_FIX}, or set weights: null") from err
        _remove_aux_heads(self.model)
        self.out_features: int = _remove_classifier(self.model, name)
        if in_channels != 3:
            _replace_first_conv(self.model, in_channels)
            # googlenet / inception re-normalise the 3 RGB channels one by one; impossible for other counts.
            if getattr(self.model, "transform_input", False):
                self.model.transform_input = False
        transforms = (self.weights or weights_class.DEFAULT).transforms()
        self.pretrained_cfg: dict[str, Any] = {
            "mean": tuple(transforms.mean),
            "std": tuple(transforms.std),
            "input_size": (3, transforms.crop_size[0], transforms.crop_size[-1]),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, out_features) of images (B, C, H, W)."""
        return self.model(images)


def halve_if_larger_than_two(maps: torch.Tensor) -> torch.Tensor:
    """A 2×2 max-pool of the maps (B, C, H, W) while both sides exceed 2 px, else the maps unchanged."""
    return F.max_pool2d(maps, 2) if min(maps.shape[-2:]) > 2 else maps


# A leaf of torch.fx graphs (its test is on the input's size), so feature extraction can trace SmallCNN.
torch.fx.wrap("halve_if_larger_than_two")


class SmallCNN(nn.Module):
    """A small conv net for 8–32 px images: blocks of conv3×3 → BatchNorm → ReLU, each followed by a 2×2
    max-pool while the map is larger than 2 px, then global average pooling to ``widths[-1]`` features.

    With ``grid``, the last block's map (before its max-pool) is averaged to a ``grid × grid`` grid and
    flattened instead (``widths[-1] · grid²`` features): the head then sees where features are, as the
    grid readout does (issue 16's finding that the grid keeps what transfers to unseen classes).
    """

    def __init__(
        self, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128), grid: int | None = None
    ) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ConfigError(f"SmallCNN widths must be positive channel counts, got {list(widths)}.")
        channels = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )
            for c_in, c_out in itertools.pairwise(channels)
        )
        self.grid = grid
        self.out_features: int = widths[-1] * (grid or 1) ** 2

    def last_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last block's map (B, widths[-1], h, w) of images (B, C, H, W), before its max-pool."""
        x = images
        for block in self.blocks[:-1]:
            x = halve_if_larger_than_two(block(x))
        return self.blocks[-1](x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map (B, widths[-1], h, w) of images (B, C, H, W), before global pooling."""
        return halve_if_larger_than_two(self.last_map(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, out_features) of images (B, C, H, W): global average, or the grid."""
        if self.grid is None:
            return self.forward_features(images).mean(dim=(-2, -1))
        return F.adaptive_avg_pool2d(self.last_map(images), self.grid).flatten(1)
