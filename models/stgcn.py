"""ST-GCN encoder (Yan et al., "Spatial Temporal Graph Convolutional Networks for Skeleton-Based
Action Recognition", AAAI 2018).

Input BatchNorm over the `M*V*C` coordinates, then a stack of st-gcn blocks, each a spatial
graph convolution over the K partition matrices of the layout (`Layout.partitions(strategy)`,
optionally scaled by a learnable edge-importance mask) followed by a temporal unit
(BN, ReLU, kx1 temporal conv, BN, dropout), a residual shortcut and a ReLU. The classifier of
the paper is left out: the encoder returns pooled and dense features (`models.base.EncoderOutput`).

`residual="preact"` (the KTH reimplementation study, METHOD.md section 9) uses the full
pre-activation unit of He et al. 2016 ("Identity Mappings in Deep Residual Networks") instead:
`x + tcn(dropout(ReLU(BN(gcn(ReLU(BN(x)))))))`, BN -> ReLU -> weights twice plus the shortcut,
nothing after the sum; the first block (no shortcut, raw coordinates in) is not pre-activated,
and a final BN -> ReLU follows the last block (as ResNet v2). `STUDY_FLAGS` /
`add_study_arguments` / `study_overrides` bring partition, edge importance, dropout and residual
unit to the command lines (recorded as `encoder_overrides` in the run config).

Presets (`build_stgcn`):
- ``paper``: 10 blocks, 64,64,64,64,128,128,128,256,256,256 channels, temporal stride 2 at the
  first 128- and the first 256-channel block, temporal kernel 9, dropout 0.5 (the paper's NTU
  configuration; no dropout and no residual on the first block), spatial partitions, edge
  importance on;
- ``base``: the same network with dropout 0 (pyskl's ST-GCN setting);
- ``small``: ``paper`` with every width halved;
- ``tiny``: 3 blocks of 8/16/16 channels (stride 2 at the second), for tests.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from feeders.layouts import Layout, get_layout
from models.base import EncoderOutput, one_dim_parameter_names
from models.gcn_blocks import (InputNorm, PartitionGraphConv, check_input, init_gcn_weights,
                               pool_gcn_features, residual_path)
from models.registry import register_encoder

_PAPER_CHANNELS = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)
_PAPER_STRIDES = (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)

PRESETS: dict[str, dict] = {
    "paper": dict(block_channels=_PAPER_CHANNELS, block_strides=_PAPER_STRIDES,
                  temporal_kernel=9, dropout=0.5),
    "base": dict(block_channels=_PAPER_CHANNELS, block_strides=_PAPER_STRIDES,
                 temporal_kernel=9, dropout=0.0),
    "small": dict(block_channels=tuple(c // 2 for c in _PAPER_CHANNELS),
                  block_strides=_PAPER_STRIDES, temporal_kernel=9, dropout=0.5),
    "tiny": dict(block_channels=(8, 16, 16), block_strides=(1, 2, 1), temporal_kernel=9,
                 dropout=0.0),
}


RESIDUALS = ("original", "preact")


class STGCNBlock(nn.Module):
    """One st-gcn block: graph conv -> temporal unit, plus residual, then ReLU.

    `(N, C_in, T, V)` -> `(N, C_out, ceil(T / stride), V)`.
    """

    def __init__(self, in_channels: int, out_channels: int, partitions: torch.Tensor,
                 stride: int, temporal_kernel: int, dropout: float, residual: bool,
                 edge_importance: bool):
        super().__init__()
        if temporal_kernel % 2 != 1:
            raise ValueError(f"ST-GCN: temporal_kernel must be odd, got {temporal_kernel}")
        self.gcn = PartitionGraphConv(in_channels, out_channels, partitions, edge_importance)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=(temporal_kernel, 1),
                      stride=(stride, 1), padding=((temporal_kernel - 1) // 2, 0)),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout, inplace=True),
        )
        self.residual = residual_path(in_channels, out_channels, stride, residual)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tcn(self.gcn(x))
        if self.residual is not None:
            out = out + self.residual(x)
        return self.relu(out)


class PreActSTGCNBlock(nn.Module):
    """Full pre-activation st-gcn unit: `shortcut(x) + tcn(drop(ReLU(BN(gcn(ReLU(BN(x)))))))`.

    `pre_activate=False` (the first block, fed raw coordinates) drops the first BN -> ReLU.
    The shortcut is `residual_path` (identity, or 1x1 conv + BN when the shape changes; None
    without a residual). No activation after the sum.
    `(N, C_in, T, V)` -> `(N, C_out, ceil(T / stride), V)`.
    """

    def __init__(self, in_channels: int, out_channels: int, partitions: torch.Tensor,
                 stride: int, temporal_kernel: int, dropout: float, residual: bool,
                 edge_importance: bool, pre_activate: bool = True):
        super().__init__()
        if temporal_kernel % 2 != 1:
            raise ValueError(f"ST-GCN: temporal_kernel must be odd, got {temporal_kernel}")
        self.pre = (nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU()) if pre_activate
                    else nn.Identity())
        self.gcn = PartitionGraphConv(in_channels, out_channels, partitions, edge_importance)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, kernel_size=(temporal_kernel, 1),
                      stride=(stride, 1), padding=((temporal_kernel - 1) // 2, 0)),
        )
        self.residual = residual_path(in_channels, out_channels, stride, residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tcn(self.gcn(self.pre(x)))
        if self.residual is not None:
            out = out + self.residual(x)
        return out


class STGCN(nn.Module):
    """ST-GCN encoder: `(N, C, T, V, M)` -> `EncoderOutput` with `C' = block_channels[-1]`.

    partition: ``uniform`` / ``distance`` / ``spatial`` / ``symmetric`` (with `max_hop`), see
    `feeders.layouts.Layout.partitions`. residual: ``original`` (post-activation blocks) or
    ``preact`` (`PreActSTGCNBlock`, then a final BN -> ReLU). seed: seeds the initialisation
    (`init_gcn_weights`); edge-importance masks start at ones.
    """

    def __init__(self, layout: Layout | str, channels: int, bodies: int,
                 block_channels=_PAPER_CHANNELS, block_strides=_PAPER_STRIDES,
                 temporal_kernel: int = 9, dropout: float = 0.5, partition: str = "spatial",
                 max_hop: int = 1, edge_importance: bool = True, residual: str = "original",
                 seed: int = 0):
        super().__init__()
        layout = get_layout(layout)
        if len(block_channels) != len(block_strides) or not block_channels:
            raise ValueError(f"ST-GCN: block_channels ({len(block_channels)}) and block_strides "
                             f"({len(block_strides)}) must be non-empty and of equal length")
        if channels < 1 or bodies < 1:
            raise ValueError(f"ST-GCN: channels and bodies must be >= 1, got {channels}, {bodies}")
        if residual not in RESIDUALS:
            raise ValueError(f"ST-GCN: residual must be one of {RESIDUALS}, got {residual!r}")
        self.channels, self.joints, self.bodies = channels, layout.num_joints, bodies
        self.stage_strides = tuple(block_strides)
        partitions = torch.from_numpy(layout.partitions(partition, max_hop))
        self.input_norm = InputNorm(channels, layout.num_joints, bodies)
        widths = (channels, *block_channels)
        common = dict(partitions=partitions, temporal_kernel=temporal_kernel,
                      edge_importance=edge_importance)
        if residual == "original":
            blocks = [STGCNBlock(widths[i], widths[i + 1], stride=block_strides[i],
                                 dropout=0.0 if i == 0 else dropout, residual=i > 0, **common)
                      for i in range(len(block_channels))]
        else:
            blocks = [PreActSTGCNBlock(widths[i], widths[i + 1], stride=block_strides[i],
                                       dropout=0.0 if i == 0 else dropout, residual=i > 0,
                                       pre_activate=i > 0, **common)
                      for i in range(len(block_channels))]
        self.blocks = nn.ModuleList(blocks)
        self.stage_channels = tuple(block_channels)
        # ResNet v2: the sum of the last pre-activation unit is normalised and activated once
        self.final_norm = (nn.Sequential(nn.BatchNorm2d(block_channels[-1]), nn.ReLU())
                           if residual == "preact" else None)
        self.temporal_dim = self.spatial_dim = block_channels[-1]
        self.feature_dim = 2 * block_channels[-1]
        init_gcn_weights(self, torch.Generator().manual_seed(seed))

    @property
    def num_layers(self) -> int:
        """Layer-decay depth: the number of blocks."""
        return len(self.blocks)

    def layer_id(self, name: str) -> int:
        """Layer id of parameter `name` (as in named_parameters()): 0 for the input norm, i + 1 for
        block i, the last block's id for the final norm (preact)."""
        parts = name.split(".")
        if parts[0] == "final_norm":
            return len(self.blocks)
        return int(parts[1]) + 1 if parts[0] == "blocks" else 0

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay: biases and BatchNorm weights."""
        return one_dim_parameter_names(self)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block, `[(N*M, C_i, T_i, V)]` (the last one after the final norm
        of ``preact``): the sources of a feature pyramid (models/tpn.py)."""
        check_input(x, self.channels, self.joints, self.bodies, "ST-GCN")
        f = self.input_norm(x)                                   # (N*M, C, T, V)
        outs = []
        for block in self.blocks:
            f = block(f)                                         # (N*M, C', T', V)
            outs.append(f)
        if self.final_norm is not None:
            outs[-1] = self.final_norm(outs[-1])
        return outs

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        return pool_gcn_features(self.stage_features(x)[-1], self.bodies)


@register_encoder("stgcn", PRESETS)
def build_stgcn(preset: str, *, layout: Layout | str, clip_len: int, channels: int,
                bodies: int, **overrides) -> STGCN:
    """Build an ST-GCN from a preset (`PRESETS`), overriding any `STGCN` keyword.

    ST-GCN works on any number of frames; `clip_len` is only checked to be positive.
    Overrides: block_channels, block_strides, temporal_kernel, dropout, partition, max_hop,
    edge_importance, residual, seed.
    """
    if preset not in PRESETS:
        raise ValueError(f"ST-GCN: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    if clip_len < 1:
        raise ValueError(f"ST-GCN: clip_len must be >= 1, got {clip_len}")
    allowed = {"block_channels", "block_strides", "temporal_kernel", "dropout", "partition",
               "max_hop", "edge_importance", "residual", "seed"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"ST-GCN: unknown overrides {sorted(unknown)}; expected some of "
                         f"{sorted(allowed)}")
    return STGCN(layout, channels, bodies, **{**PRESETS[preset], **overrides})


# --------------------------------------------------------------------------- the study's flags
# STGCN's keyword defaults for the study's settings (a preset may override dropout)
_DEFAULTS = {"partition": "spatial", "edge_importance": True, "residual": "original",
             "dropout": 0.5}
# flag attribute -> STGCN keyword; every flag defaults to None (the preset's / checkpoint's value)
STUDY_FLAGS = {"partition": "partition", "edge_importance": "edge_importance",
               "gcn_dropout": "dropout", "residual": "residual"}


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The ST-GCN study's encoder flags (METHOD.md section 9), for every entry point that builds
    an ST-GCN. Unset flags keep the preset's (or the --pretrained checkpoint's) value."""
    from feeders.layouts import STRATEGIES

    g = parser.add_argument_group("ST-GCN study (--backbone stgcn only)")
    g.add_argument("--partition", choices=STRATEGIES, default=None,
                   help="partition strategy of the graph convolution (feeders/layouts.py); "
                        "None: spatial")
    g.add_argument("--edge-importance", action=argparse.BooleanOptionalAction, default=None,
                   help="learnable edge-importance masks on the partitions; None: on")
    g.add_argument("--gcn-dropout", type=float, default=None, metavar="P",
                   help="dropout in each block but the first; None: the preset's (paper 0.5)")
    g.add_argument("--residual", choices=RESIDUALS, default=None,
                   help="residual unit: original (post-activation) or preact (full "
                        "pre-activation, BN -> ReLU -> weights twice plus the identity); "
                        "None: original")


def study_overrides(args: argparse.Namespace, backbone: str) -> dict:
    """The STGCN keywords of the study flags that were given; ValueError naming the flag when one
    is given for another backbone or out of range."""
    given = {kw: getattr(args, flag) for flag, kw in STUDY_FLAGS.items()
             if getattr(args, flag, None) is not None}
    if given and backbone != "stgcn":
        flags = ", ".join("--" + f.replace("_", "-") for f, kw in STUDY_FLAGS.items()
                          if kw in given)
        raise ValueError(f"{flags}: ST-GCN study flags apply to --backbone stgcn only, not "
                         f"{backbone}")
    if "dropout" in given and not 0.0 <= given["dropout"] < 1.0:
        raise ValueError(f"--gcn-dropout must be in [0, 1), got {given['dropout']}")
    return given


def study_setting(preset: str, overrides: dict, keyword: str):
    """The value of a study keyword of an ST-GCN built from `preset` with `overrides`."""
    return {**_DEFAULTS, **PRESETS[preset], **overrides}[keyword]
