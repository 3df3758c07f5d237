"""The encoder registry: build any encoder by name and preset.

    from models import build_encoder
    enc = build_encoder("dste", "paper", layout="ntu25", clip_len=64, channels=3, bodies=2)
    out = enc(x)  # x (N, C, L, V, M) -> EncoderOutput

Every builder has the signature `build_x(preset, *, layout, clip_len, channels, bodies,
**overrides)`, takes a resolved feeders.layouts.Layout, and every encoder module has a PRESETS
dict (`paper`, `base`, `small`, `tiny`). Overrides replace any constructor argument (e.g. seed).
"""
from __future__ import annotations

from torch import nn

from feeders.layouts import Layout, get_layout
from models import dste, msg3d, stgcn, sttr
from models.base import EncoderOutput

ENCODERS = {
    "dste": dste.build_dste,
    "sttr": sttr.build_sttr,
    "stgcn": stgcn.build_stgcn,
    "msg3d": msg3d.build_msg3d,
}

_PRESETS = {
    "dste": tuple(dste.PRESETS),
    "sttr": tuple(sttr.PRESETS),
    "stgcn": tuple(stgcn.PRESETS),
    "msg3d": tuple(msg3d.PRESETS),
}

__all__ = ["ENCODERS", "EncoderOutput", "build_encoder", "list_encoders", "list_presets"]


def list_encoders() -> list[str]:
    """Registered encoder names."""
    return list(ENCODERS)


def list_presets(name: str) -> list[str]:
    """Preset names of encoder `name`; ValueError for an unknown name."""
    _check_name(name)
    return list(_PRESETS[name])


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
    return ENCODERS[name](
        preset, layout=get_layout(layout), clip_len=clip_len, channels=channels, bodies=bodies, **overrides
    )


def _check_name(name: str) -> None:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid encoders: {', '.join(ENCODERS)}")
