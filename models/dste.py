"""DSTE, the Dense Spatio-Temporal Encoder of USDRL (docs/METHOD.md sections 2-3).

Tokens, embeddings, positional tables and pooling are shared with STTR (models.base.
TwoStreamTransformer); here each stream is a stack of DSTE layers, a layer being
0.5 * CA(x) + 0.5 * DSA(x) with both branches sharing one attention module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from feeders.layouts import Layout, get_layout
from models.base import MLP, Attention, DropPath, Stream, TwoStreamTransformer, preset_kwargs

SHIFT_GAP = 4

PRESETS = {
    "paper": dict(hidden=1024, depth=2, num_heads=1, drop_path=0.1),
    "base": dict(hidden=512, depth=2, num_heads=1, drop_path=0.1),
    "small": dict(hidden=256, depth=2, num_heads=1, drop_path=0.1),
    "tiny": dict(hidden=32, depth=2, num_heads=1, drop_path=0.1),
}


class ConvAttention(nn.Module):
    """CA: u = x + ReLU(pointwise(x)); h = x + DropPath(Attn(LN1(u))); out = DropPath(MLP(LN2(h))).

    There is deliberately no residual around the MLP. The attention module is passed in (shared
    with the layer's DSA branch).
    """

    def __init__(self, dim: int, drop_path: float):
        super().__init__()
        self.pointwise = nn.Linear(dim, dim)  # a kernel-1 convolution over tokens
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, 2 * dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn: Attention) -> torch.Tensor:
        """x: (B, S, H) -> (B, S, H)."""
        u = x + F.relu(self.pointwise(x))
        h = self.drop_path.residual(x, attn(self.norm1(u)))
        return self.drop_path(self.mlp(self.norm2(h)))


class TokenMixer(nn.Module):
    """Token-mixing MLP along the sequence axis: Linear(S, S) -> ReLU -> Linear(S, S) per channel."""

    def __init__(self, seq_len: int):
        super().__init__()
        self.fc1 = nn.Linear(seq_len, seq_len)
        self.fc2 = nn.Linear(seq_len, seq_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, S, H) -> (B, S, H)."""
        return self.fc2(F.relu(self.fc1(x.transpose(1, 2)))).transpose(1, 2)


def shift_reset(f: torch.Tensor, x: torch.Tensor, gap: int = SHIFT_GAP) -> torch.Tensor:
    """Reset every gap-th token (indices 0, gap, 2*gap, ...) of f to its value in x.

    f, x: (B, S, H) -> (B, S, H).
    """
    reset = (torch.arange(f.shape[1], device=f.device) % gap == 0)[:, None]
    return torch.where(reset, x, f)


class DenseShiftAttention(nn.Module):
    """DSA: f = shift_reset(x + TokenMixer(x), x); one pre-norm block on f and on x; their mean.

    The pre-norm block is x + DropPath(Attn(LN1(x))) then x + DropPath(MLP(LN2(x))), with the same
    weights for both inputs (which are run as one batch of 2B sequences).
    """

    def __init__(self, dim: int, seq_len: int, drop_path: float):
        super().__init__()
        self.mixer = TokenMixer(seq_len)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, 2 * dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn: Attention) -> torch.Tensor:
        """x: (B, S, H) -> (B, S, H)."""
        f = shift_reset(x + self.mixer(x), x)
        y = torch.cat([f, x])  # (2B, S, H)
        y = self.drop_path.residual(y, attn(self.norm1(y)))
        y = self.drop_path.residual(y, self.mlp(self.norm2(y)))
        f_out, x_out = y.chunk(2)
        return 0.5 * (f_out + x_out)


class DSTELayer(nn.Module):
    """0.5 * CA(x) + 0.5 * DSA(x) with one shared attention module. (B, S, H) -> (B, S, H)."""

    def __init__(self, dim: int, seq_len: int, num_heads: int, drop_path: float):
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.ca = ConvAttention(dim, drop_path)
        self.dsa = DenseShiftAttention(dim, seq_len, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.ca(x, self.attn) + self.dsa(x, self.attn)) * 0.5  # two kernels, not three


class DSTE(TwoStreamTransformer):
    """Dense Spatio-Temporal Encoder: both streams are `depth` DSTE layers.

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
        t_stream = Stream([DSTELayer(hidden, clip_len, num_heads, drop_path) for _ in range(depth)])
        s_stream = Stream([DSTELayer(hidden, bodies * joints, num_heads, drop_path) for _ in range(depth)])
        super().__init__(clip_len, joints, bodies, channels, hidden, t_stream, s_stream, seed)


def build_dste(
    preset: str, *, layout: Layout | str, clip_len: int, channels: int, bodies: int, **overrides
) -> DSTE:
    """DSTE from a preset in PRESETS; overrides: any preset key (hidden, depth, ...) or seed."""
    kwargs = preset_kwargs("dste", PRESETS, preset, overrides)
    joints = get_layout(layout).num_joints
    return DSTE(clip_len=clip_len, joints=joints, bodies=bodies, channels=channels, **kwargs)
