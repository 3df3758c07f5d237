"""The pretraining-method contract and its registry (docs/design.md, "methods").

A method is one `nn.Module` subclass of `Method`, registered where it is defined:

    @register_method("usdrl")
    class USDRLMethod(Method):
        num_views = 4
        @classmethod
        def add_arguments(cls, parser): ...            # its flags, in its own group
        @classmethod
        def from_args(cls, encoder, args): ...         # encoder + heads + loss from the flags
        def make_inputs(self, views, generator, args, parents): ...   # its views
        def forward(self, inputs): ...                 # -> embeddings
        # self.loss: an nn.Module, embeddings -> (total, terms); it gathers across processes

pretrain.py reads `--method NAME` first, lets the method add its flags, builds the encoder of
`--backbone` / `--preset` for `--stream` (models.unified.encoder_for_stream), and then calls
only the methods above: `pretrain.py` knows no method by name.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import torch
from torch import nn

from feeders.augment import augment_views, random_rotation

_METHODS: dict[str, type["Method"]] = {}


class Method(nn.Module):
    """A pretraining method: the encoder (attribute named `encoder_key`), its heads and its loss.

    Class attributes: `name` (set by `register_method`), `num_views` (clips per sequence that
    the dataset crops, each `(C, L, V, M)`), `encoder_key` (the attribute, hence the state-dict
    prefix, of the encoder: evaluation loads `<encoder_key>.*` of a checkpoint).
    """

    name: str = ""
    num_views: int = 4
    encoder_key: str = "encoder"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the method's flags (an argument group named after it); may set defaults."""

    @classmethod
    def from_args(cls, encoder: nn.Module, args: argparse.Namespace) -> "Method":
        """The method around `encoder` with the parsed flags; ValueError naming a bad flag."""
        raise NotImplementedError

    def make_inputs(self, views: torch.Tensor, generator: torch.Generator,
                    args: argparse.Namespace, parents: Sequence[int]) -> Any:
        """views (B, num_views, C, L, V, M) on the device (cropped, not yet augmented) ->
        what `forward` takes. All random draws from `generator`."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> Any:
        """inputs (from make_inputs) -> embeddings, the input of `self.loss`."""
        raise NotImplementedError


def register_method(name: str):
    """Class decorator: register a `Method` subclass as `--method name`. ValueError when the
    name is taken or the class is not a Method."""
    def decorate(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ValueError(f"register_method({name!r}): {cls!r} is not a Method subclass")
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__module__} "
                             f"and {cls.__module__})")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return decorate


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(_METHODS)


def get_method(name: str) -> type[Method]:
    """The Method class registered as `name`; ValueError listing the valid names otherwise."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(_METHODS)}")
    return _METHODS[name]


def augmented_views(views: torch.Tensor, generator: torch.Generator,
                    args: argparse.Namespace) -> torch.Tensor:
    """The spatial augmentations shared by the methods, view-major.

    views (B, K, C, L, V, M) -> (K*B, C, L, V, M), rows k*B .. k*B+B-1 being view k: METHOD.md
    section 1's augmentations when `args.augment` (feeders.augment.augment_views), then a
    random rotation per clip when `args.rotate` > 0, all drawn from `generator` in that order.
    """
    if args.augment:
        views = augment_views(views, generator, args.spatial_channels)
    b, k = views.shape[:2]
    x = views.transpose(0, 1).reshape(k * b, *views.shape[2:])
    if args.rotate:
        x = random_rotation(x, args.rotate, generator, args.spatial_channels)
    return x
