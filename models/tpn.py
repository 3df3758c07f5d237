"""A temporal pyramid neck for the GCN encoders (TPN: Yang et al., "Temporal Pyramid Network for
Action Recognition", CVPR 2020; METHOD.md section 9), ported to skeleton feature maps.

The sources are the encoder's stages at several temporal resolutions (`encoder.stage_features`:
ST-GCN blocks, MS-G3D stages; `pyramid_levels` keeps the last stage of each resolution, e.g.
ST-GCN paper blocks 4, 7 and 10 at T, T/2 and T/4). Feature maps are `(N*M, C_i, T_i, V)`; the
joint axis plays the part of TPN's spatial axes (it is the same size at every level).

1. spatial semantic modulation: each level -> a common width D (1x1 conv + BN + ReLU); an
   auxiliary classifier on the deepest modulated level (mean over frames, joints and bodies,
   then Linear(D -> classes)), its loss weighted `AUX_WEIGHT` = 0.5 by the caller;
2. temporal rate modulation: per level a temporal conv (kernel 3) + BN + ReLU, then a temporal
   max-pool by the level's own rate (`rates`, default 1: the stages' own tempos);
3. information flow: `top-down` (each level plus the next deeper one upsampled in time),
   `bottom-up` (each level plus the next shallower one max-pooled to its length), or `cascade`
   (top-down, then bottom-up: TPN's best);
4. fusion: every level average-pooled in time to the deepest level's length, concatenated and
   projected to D (1x1 conv + BN + ReLU), then pooled as every GCN encoder is
   (`pool_gcn_features`).

`TPNEncoder(encoder, num_classes)` is a drop-in encoder (forward -> EncoderOutput, feature_dim,
the optimiser declarations of models/param_groups.py), with `forward_aux` for training. What is
not ported: TPN's spatial strides that align spatial sizes (joints need none) and its
backbone-specific (I3D / SlowOnly) level choices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import EncoderOutput, one_dim_parameter_names
from models.gcn_blocks import pool_gcn_features

AUX_WEIGHT = 0.5
FLOWS = ("cascade", "top-down", "bottom-up")


def pyramid_levels(strides) -> list[int]:
    """Indices of the last stage at each temporal resolution: strides (1, 2, 1) -> [0, 2]."""
    levels, total = [], 1
    cumulative = []
    for s in strides:
        total *= s
        cumulative.append(total)
    for i, c in enumerate(cumulative):
        if i + 1 == len(cumulative) or cumulative[i + 1] != c:
            levels.append(i)
    return levels


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=(kernel, 1), padding=(kernel // 2, 0)),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _resample_time(f: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """(N, C, T, V) -> (N, C, length, V): ``up`` nearest, ``max`` / ``avg`` adaptive pooling."""
    if f.shape[2] == length:
        return f
    if mode == "up":
        return F.interpolate(f, size=(length, f.shape[3]), mode="nearest")
    pool = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
    return pool(f, (length, f.shape[3]))


class TPNNeck(nn.Module):
    """levels `[(N*M, C_i, T_i, V)]`, shallow to deep -> (fused (N*M, D, T_deep', V),
    aux logits per frame of the deepest level (N, T_deep, classes)); `bodies` folds N*M back
    for the auxiliary head. The clip's auxiliary logits are their mean over time (the head is
    linear: the same as classifying the mean feature)."""

    def __init__(self, level_channels, width: int, num_classes: int, bodies: int,
                 rates=None, flow: str = "cascade"):
        super().__init__()
        if flow not in FLOWS:
            raise ValueError(f"TPN: flow must be one of {FLOWS}, got {flow!r}")
        rates = tuple(rates) if rates is not None else (1,) * len(level_channels)
        if len(rates) != len(level_channels) or min(rates) < 1:
            raise ValueError(f"TPN: need one rate >= 1 per level ({len(level_channels)}), "
                             f"got {rates}")
        self.rates, self.flow, self.bodies = rates, flow, bodies
        self.semantic = nn.ModuleList(_conv_bn_relu(c, width) for c in level_channels)
        self.aux_head = nn.Linear(width, num_classes)
        self.temporal = nn.ModuleList(_conv_bn_relu(width, width, 3) for _ in level_channels)
        self.fusion = _conv_bn_relu(width * len(level_channels), width)

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        feats = [m(f) for m, f in zip(self.semantic, levels)]                 # (N*M, D, T_i, V)
        deep = feats[-1]
        nm, d, t = deep.shape[:3]
        per_frame = deep.mean(dim=3).view(nm // self.bodies, self.bodies, d, t).mean(1)
        aux = self.aux_head(per_frame.transpose(1, 2))                     # (N, T_deep, classes)
        feats = [F.max_pool2d(m(f), (r, 1), ceil_mode=True) if r > 1 else m(f)
                 for m, f, r in zip(self.temporal, feats, self.rates)]
        if self.flow in ("top-down", "cascade"):
            for i in range(len(feats) - 2, -1, -1):
                feats[i] = feats[i] + _resample_time(feats[i + 1], feats[i].shape[2], "up")
        if self.flow in ("bottom-up", "cascade"):
            for i in range(1, len(feats)):
                feats[i] = feats[i] + _resample_time(feats[i - 1], feats[i].shape[2], "max")
        length = feats[-1].shape[2]
        fused = self.fusion(torch.cat([_resample_time(f, length, "avg") for f in feats], dim=1))
        return fused, aux


class TPNEncoder(nn.Module):
    """A GCN encoder with a TPN neck: `(N, C, T, V, M)` -> EncoderOutput of the fused pyramid
    (feature_dim 2 * width, width default: the deepest stage's channels).

    The encoder must expose `stage_features(x)`, `stage_channels`, `stage_strides` and `bodies`
    (ST-GCN, MS-G3D). Layer decay: the neck sits at the encoder's top id."""

    def __init__(self, encoder: nn.Module, num_classes: int, width: int | None = None,
                 rates=None, flow: str = "cascade", seed: int = 0):
        super().__init__()
        if not hasattr(encoder, "stage_features"):
            raise ValueError(f"--neck tpn needs a GCN encoder with stages at several temporal "
                             f"resolutions (stgcn, msg3d), not {type(encoder).__name__}")
        self.levels = pyramid_levels(encoder.stage_strides)
        width = width or encoder.stage_channels[-1]
        self.encoder = encoder
        self.bodies = encoder.bodies
        self.neck = TPNNeck([encoder.stage_channels[i] for i in self.levels], width, num_classes,
                            encoder.bodies, rates, flow)
        generator = torch.Generator().manual_seed(seed)
        for m in self.neck.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu",
                                        generator=generator)
                nn.init.zeros_(m.bias)
        self.temporal_dim = self.spatial_dim = width
        self.feature_dim = 2 * width

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def layer_id(self, name: str) -> int:
        if name.startswith("encoder."):
            return self.encoder.layer_id(name[len("encoder."):])
        return self.encoder.num_layers

    def no_weight_decay(self) -> set[str]:
        return ({f"encoder.{n}" for n in self.encoder.no_weight_decay()}
                | {f"neck.{n}" for n in one_dim_parameter_names(self.neck)})

    def forward_aux(self, x: torch.Tensor, dense: bool = False) -> tuple[EncoderOutput,
                                                                          torch.Tensor]:
        """x (N, C, T, V, M) -> (EncoderOutput, auxiliary logits (N, classes)); ``dense``: the
        auxiliary logits of every frame of the deepest level, (N, T_deep, classes)
        (detection)."""
        stages = self.encoder.stage_features(x)
        fused, aux = self.neck([stages[i] for i in self.levels])
        return pool_gcn_features(fused, self.bodies), aux if dense else aux.mean(dim=1)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        return self.forward_aux(x)[0]
