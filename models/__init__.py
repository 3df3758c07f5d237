"""Skeleton encoders, built by name and preset from the registry (models/registry.py).

    from models import build_encoder
    enc = build_encoder("dste", "paper", layout="ntu25", clip_len=64, channels=3, bodies=2)
    out = enc(x)  # x (N, C, L, V, M) -> EncoderOutput

Every builder has the signature `build_x(preset, *, layout, clip_len, channels, bodies,
**overrides)`, takes a resolved feeders.layouts.Layout, and is registered where it is defined
with `@register_encoder(name, PRESETS)`. Adding an encoder = its module plus one import line below.
Overrides replace any constructor argument (e.g. seed).
"""
from __future__ import annotations

from models.base import EncoderOutput
from models.checkpoint import load_pretrained
from models.registry import (build_encoder, encoder_builder, list_encoders, list_presets,
                             register_encoder)

# Importing an encoder module registers it; the order here is the order of list_encoders().
from models import dste, sttr, stgcn, msg3d  # noqa: E402,F401  (isort: skip)

__all__ = ["EncoderOutput", "build_encoder", "encoder_builder", "list_encoders", "list_presets",
           "load_pretrained", "register_encoder"]
