"""The encoder registry: every encoder registers its builder where it is defined.

    @register_encoder("dste", PRESETS)
    def build_dste(preset, *, layout, clip_len, channels, bodies, **overrides) -> nn.Module: ...

`models/__init__.py` imports each encoder module once (that import runs the decorator); after
that `build_encoder(name, preset, ...)`, `list_encoders()` and `list_presets(name)` know it, and so
do every `--backbone` choice, the shell scripts (`python -m models --list-encoders`), the error
messages and the tests. This module imports nothing from the encoders (no import cycles).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from feeders.layouts import Layout, get_layout

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_PRESETS: dict[str, tuple[str, ...]] = {}


def register_encoder(name: str, presets: dict[str, dict] | tuple[str, ...]):
    """Decorator registering `builder(preset, *, layout, clip_len, channels, bodies, **overrides)`
    under `name` with the preset names `presets` (a dict's keys, in order). Returns the builder
    unchanged. ValueError for a name registered twice."""
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"encoder {name!r} is registered twice ({_BUILDERS[name].__module__} "
                             f"and {builder.__module__})")
        _BUILDERS[name] = builder
        _PRESETS[name] = tuple(presets)
        return builder
    return decorate


def unregister_encoder(name: str) -> None:
    """Remove encoder `name` (tests that register a temporary encoder clean up with this)."""
    _check_name(name)
    del _BUILDERS[name], _PRESETS[name]


def list_encoders() -> list[str]:
    """Registered encoder names, in registration order."""
    return list(_BUILDERS)


def list_presets(name: str | None = None) -> list[str]:
    """Preset names of encoder `name`; without a name, every registered preset name (in first-seen
    order: the `--preset` choices). ValueError for an unknown name."""
    if name is None:
        return list(dict.fromkeys(p for presets in _PRESETS.values() for p in presets))
    _check_name(name)
    return list(_PRESETS[name])


def encoder_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder of `name`; ValueError listing the valid names otherwise."""
    _check_name(name)
    return _BUILDERS[name]


def build_encoder(
    name: str,
    preset: str = "small",
    *,
    layout: Layout | str,
    clip_len: int,
    channels: int,
    bodies: int,
    **overrides,
) -> nn.Module:
    """Build encoder `name` with `preset` for clips (N, channels, clip_len, V, bodies).

    layout: a Layout or a layout name (V = its number of joints). ValueError listing the valid
    choices for an unknown name or preset.
    """
    _check_name(name)
    if preset not in _PRESETS[name]:
        raise ValueError(f"unknown preset {preset!r} for encoder {name!r}; valid presets: {', '.join(_PRESETS[name])}")
    return _BUILDERS[name](
        preset, layout=get_layout(layout), clip_len=clip_len, channels=channels, bodies=bodies, **overrides
    )


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; valid encoders: {', '.join(_BUILDERS)}")
