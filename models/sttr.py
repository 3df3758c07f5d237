"""STTR, the plain spatio-temporal transformer baseline of docs/METHOD.md section 3.

Same tokens, embeddings and positional encodings as DSTE (models/dste.py), but each stream is a
stack of standard post-norm transformer layers (single-head attention, FFN width H).
"""
from __future__ import annotations

import torch
from torch import nn

from feeders.layouts import Layout, get_layout
from models.base import MLP, Attention, DropPath, Stream, TwoStreamTransformer, preset_kwargs

PRESETS = {
    "paper": dict(hidden=1024, depth=2, num_heads=1, drop_path=0.1),
    "base": dict(hidden=512, depth=2, num_heads=1, drop_path=0.1),
    "small": dict(hidden=256, depth=2, num_heads=1, drop_path=0.1),
    "tiny": dict(hidden=32, depth=2, num_heads=1, drop_path=0.1),
}


class PostNormLayer(nn.Module):
    """x = LN1(x + DropPath(Attn(x))); x = LN2(x + DropPath(FFN(x))), FFN H -> H -> H with ReLU."""

    def __init__(self, dim: int, num_heads: int, drop_path: float):
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = MLP(dim, dim, activation=nn.ReLU)
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, S, H) -> (B, S, H)."""
        x = self.norm1(x + self.drop_path(self.attn(x)))
        return self.norm2(x + self.drop_path(self.ffn(x)))


class STTR(TwoStreamTransformer):
    """Spatio-temporal transformer baseline: both streams are `depth` post-norm layers.

    forward(x (N, C, L, V, M)) -> EncoderOutput (see TwoStreamTransformer).
    """

    def __init__(
        self,
        clip_len: int,
        joints: int,
        bodies: int,
        channels: int,
        hidden: int = 1024,
        depth: int = 2,
        num_heads: int = 1,
        drop_path: float = 0.1,
        seed: int = 0,
    ):
        t_stream = Stream([PostNormLayer(hidden, num_heads, drop_path) for _ in range(depth)])
        s_stream = Stream([PostNormLayer(hidden, num_heads, drop_path) for _ in range(depth)])
        super().__init__(clip_len, joints, bodies, channels, hidden, t_stream, s_stream, seed)


def build_sttr(
    preset: str, *, layout: Layout | str, clip_len: int, channels: int, bodies: int, **overrides
) -> STTR:
    """STTR from a preset in PRESETS; overrides: any preset key (hidden, depth, ...) or seed."""
    kwargs = preset_kwargs("sttr", PRESETS, preset, overrides)
    joints = get_layout(layout).num_joints
    return STTR(clip_len=clip_len, joints=joints, bodies=bodies, channels=channels, **kwargs)
