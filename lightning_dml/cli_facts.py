"""Facts the data module knows, written into the model's configuration so that no config types them twice.

jsonargparse's ``link_arguments`` would be the natural tool, but with a model chosen by ``class_path`` its
targets differ per class (a backbone's ``in_channels``, the GEMINI teacher's ``num_streams``, a proxy
loss's ``num_classes``): a link whose target the chosen class lacks is skipped by jsonargparse, yet
LightningCLI still writes its value into the model's saved hyper-parameters (``_InstantiatorFn``), which
then no longer rebuild the model (measured with lightning 2.6.6, jsonargparse 4.53). Hence this table,
applied by the CLI between the data module's instantiation and the model's.

One fact goes the other way, from the built model to the data: the normalisation its backbone was trained
with (:func:`fill_normalisation`).
"""

from __future__ import annotations

import importlib
import inspect
import operator
from typing import TYPE_CHECKING, Any

from jsonargparse import Namespace

from lightning_dml.errors import ConfigError

if TYPE_CHECKING:
    from lightning_dml.data.datamodule import RetrievalDataModule
    from lightning_dml.methods import RetrievalModule

#: Model parameters (below ``model.init_args``) set from a data module attribute (dotted), wherever the
#: chosen classes take them. ``num_train_classes`` reads the training labels (the data module's ``setup``).
DATA_FACTS: dict[str, tuple[str, ...]] = {
    "num_channels": ("backbone.init_args.in_channels", "in_channels"),
    "preprocessing.image_size": ("image_size",),
    "num_train_classes": ("num_streams", "loss.init_args.num_classes"),
}

#: Loss parameters set from the model's own parameters (a proxy loss's embedding size is the head's).
MODEL_FACTS: dict[str, tuple[str, ...]] = {"embedding_size": ("loss.init_args.embedding_size",)}


def fill_facts(model: Namespace, datamodule: Any) -> None:
    """Set every parameter of :data:`DATA_FACTS` and :data:`MODEL_FACTS` that the model config has to the
    data module's (or the model's) value; a value the config sets to something else raises a ConfigError.

    A parameter whose default is ``None`` is left as configured: ``None`` is then a choice of its own (a
    margin loss's ``num_classes: None`` learns one β for all classes)."""
    init_args = model.init_args
    for fact, keys in [*DATA_FACTS.items(), *MODEL_FACTS.items()]:
        defaults = {key: parameter_default(model, key) for key in keys if key in init_args}
        filled = {key: default for key, default in defaults.items() if default is not None}
        if not filled:
            continue
        value = init_args[fact] if fact in MODEL_FACTS else operator.attrgetter(fact)(datamodule)
        source = "the model's" if fact in MODEL_FACTS else f"the data module's ({type(datamodule).__name__})"
        for key, default in filled.items():
            given = init_args[key]
            if given not in (None, value, default):
                raise ConfigError(
                    f"model.init_args.{key} is {given}, but it is set from {source} {fact}, {value}; "
                    "leave it out of the config"
                )
            init_args[key] = value


def fill_normalisation(data: Namespace, model: RetrievalModule, datamodule: RetrievalDataModule) -> None:
    """Normalise the images as the model's backbone expects: the ``mean`` and ``std`` of its
    ``pretrained_cfg`` go to the data module (:meth:`~RetrievalDataModule.normalise_with`) and into the data
    config ``data`` (so that the saved config records them); a value the config sets to something else
    raises a ConfigError. Nothing changes without a ``pretrained_cfg``, with ``raw_pixels``, or when the
    data's channel count is not the length of the backbone's mean."""
    pretrained_cfg = model.pretrained_cfg
    if pretrained_cfg is None or datamodule.preprocessing.raw_pixels:
        return
    # A backbone rebuilt for another channel count (in_channels: 1 for grey images) keeps its RGB statistics,
    # which do not describe its input: the dataset's own normalisation stays.
    if len(pretrained_cfg["mean"]) != datamodule.num_channels:
        return
    transforms = data.init_args.transforms
    values = {name: tuple(pretrained_cfg[name]) for name in ("mean", "std")}
    for name, value in values.items():
        given = transforms[name]
        if given is not None and tuple(given) != value:
            raise ConfigError(
                f"data.init_args.transforms.{name} is {list(given)}, but it is set from the backbone's "
                f"pretrained_cfg {name}, {list(value)}; leave it out of the config"
            )
        transforms[name] = list(value)
    datamodule.normalise_with(**values)


def parameter_default(model: Namespace, key: str) -> Any:
    """The default of the ``__init__`` parameter that ``key`` (dotted, below ``model.init_args``) names, in
    the class chosen at that level (``inspect.Parameter.empty`` when it is required)."""
    *path, name = key.split(".")
    owner = model
    for part in path:
        if part != "init_args":
            owner = owner.init_args[part]
    module_name, _, class_name = owner.class_path.rpartition(".")
    owner_class = getattr(importlib.import_module(module_name), class_name)
    return inspect.signature(owner_class).parameters[name].default
