"""UmURL's unified multi-modal encoder (METHOD.md section 8) around a two-stream transformer.

`UnifiedEncoder(base)` keeps `base`'s temporal and spatial streams and positional tables as the
one shared, modality-agnostic encoder and gives each modality of `FUSED_PARTS` (joint, motion,
bone) its own token embedding (METHOD.md section 2): `base`'s embeddings serve the joints, the
motion and bone ones are new. Two paths:

- fused (`forward`, the `jmb` stream): x `(N, 3C, L, V, M)` = joint, motion and bone clips
  concatenated along the channels -> the three modality embeddings, averaged -> a bias-free
  Linear H -> H (temporal and spatial tokens each: early fusion) -> the shared streams ->
  max-pool per stream -> EncoderOutput. One model, one forward pass for J+M+B: what every
  evaluation uses.
- uni-modal (`forward_modality(x (N, C, L, V, M), modality)`): that modality's embedding,
  no fusion Linear, the shared streams. Pretraining (methods/umurl.py) uses both.

`encoder_for_stream(base, stream, seed)` is the one rule tying the two together: the `jmb`
input gets a UnifiedEncoder, every other stream the plain encoder (pretrain.py and the
evaluations both call it, so the same weights load everywhere).
"""
from __future__ import annotations

import torch
from torch import nn

from feeders.streams import FUSED, FUSED_PARTS
from models.base import (EncoderOutput, TokenEmbedding, TwoStreamTransformer, check_clip,
                         init_transformer_weights, one_dim_parameter_names, spatial_tokens,
                         temporal_tokens, two_stream_layer_id)


class UnifiedEncoder(nn.Module):
    """Modality-specific embedders, early fusion and one shared two-stream encoder.

    forward(x (N, 3C, L, V, M)) -> EncoderOutput (fused path); forward_modality(x (N, C, L, V,
    M), modality) -> EncoderOutput (uni-modal path). Parameters: `t_embed.<m>`, `s_embed.<m>`
    for m in joint / motion / bone, `t_fuse`, `s_fuse`, and `base`'s `t_stream`, `s_stream`,
    `s_pos`. The new embedders and fusion layers are initialised from `seed + 1` (`base` took
    `seed`).
    """

    def __init__(self, base: TwoStreamTransformer, seed: int = 0):
        if not isinstance(base, TwoStreamTransformer):
            raise ValueError(f"the jmb stream (a unified encoder) needs a two-stream token "
                             f"encoder (dste, sttr) with separate token embeddings; got "
                             f"{type(base).__name__}")
        super().__init__()
        self.clip_len, self.joints, self.bodies = base.clip_len, base.joints, base.bodies
        self.channels = base.channels  # per modality; the fused input has 3x as many
        self.temporal_dim, self.spatial_dim = base.temporal_dim, base.spatial_dim
        self.feature_dim = base.feature_dim
        hidden = base.temporal_dim
        t_in, s_in = base.t_embed.fc1.in_features, base.s_embed.fc1.in_features
        new = {m: (TokenEmbedding(t_in, hidden), TokenEmbedding(s_in, hidden))
               for m in FUSED_PARTS if m != "j"}
        self.t_embed = nn.ModuleDict({m: base.t_embed if m == "j" else new[m][0] for m in FUSED_PARTS})
        self.s_embed = nn.ModuleDict({m: base.s_embed if m == "j" else new[m][1] for m in FUSED_PARTS})
        self.t_fuse = nn.Linear(hidden, hidden, bias=False)
        self.s_fuse = nn.Linear(hidden, hidden, bias=False)
        self.t_stream, self.s_stream, self.s_pos = base.t_stream, base.s_stream, base.s_pos
        self.register_buffer("t_pos", base.t_pos, persistent=False)
        fresh = [module for pair in new.values() for module in pair] + [self.t_fuse, self.s_fuse]
        init_transformer_weights(nn.ModuleList(fresh), seed + 1)

    @property
    def num_layers(self) -> int:
        """Layer-decay depth: the shared streams' depth (models/param_groups.py)."""
        return len(self.t_stream.layers)

    def layer_id(self, name: str) -> int:
        """0 for the embedders, fusion layers and positional table, i + 1 for layer i of either
        shared stream."""
        return two_stream_layer_id(name)

    def no_weight_decay(self) -> set[str]:
        """Biases, LayerNorm weights and the positional table."""
        return one_dim_parameter_names(self) | {"s_pos"}

    def embed(self, x: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, L, V, M) of one modality -> tokens (N, L, H) and (N, M*V, H)."""
        if modality not in self.t_embed:
            raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(FUSED_PARTS)}")
        check_clip(x, self.channels, self.clip_len, self.joints, self.bodies)
        return self.t_embed[modality](temporal_tokens(x)), self.s_embed[modality](spatial_tokens(x))

    def fuse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, 3C, L, V, M) (the jmb stream) -> fused tokens (N, L, H) and (N, M*V, H)."""
        check_clip(x, len(FUSED_PARTS) * self.channels, self.clip_len, self.joints, self.bodies)
        tokens = [self.embed(part, m) for part, m in zip(x.chunk(len(FUSED_PARTS), dim=1), FUSED_PARTS)]
        t = torch.stack([t for t, _ in tokens]).mean(0)
        s = torch.stack([s for _, s in tokens]).mean(0)
        return self.t_fuse(t), self.s_fuse(s)

    def encode(self, t: torch.Tensor, s: torch.Tensor) -> EncoderOutput:
        """The shared encoder: tokens (N, L, H), (N, M*V, H) -> streams -> max-pool -> output."""
        frames = self.t_stream(t, self.t_pos)
        joints = self.s_stream(s, self.s_pos)
        temporal, spatial = frames.amax(dim=1), joints.amax(dim=1)
        return EncoderOutput(torch.cat([temporal, spatial], dim=1), temporal, spatial, frames, joints)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """x (N, 3C, L, V, M): the fused path."""
        return self.encode(*self.fuse(x))

    def forward_modality(self, x: torch.Tensor, modality: str) -> EncoderOutput:
        """x (N, C, L, V, M) of `modality` (j, m or b): the uni-modal path."""
        return self.encode(*self.embed(x, modality))


def encoder_for_stream(base: nn.Module, stream: str, seed: int = 0) -> nn.Module:
    """`UnifiedEncoder(base, seed)` for the fused `jmb` stream, else `base` unchanged."""
    return UnifiedEncoder(base, seed) if stream == FUSED else base
