"""MS-G3D encoder (Liu et al., "Disentangling and Unifying Graph Convolutions for Skeleton-Based
Action Recognition", CVPR 2020).

Three spatial-temporal graph convolutional (STGC) stages. Each stage sums two pathways and
applies a ReLU, then a multi-scale temporal convolution (MS-TCN):
- the factorised pathway: an MS-GCN (disentangled multi-scale graph convolution over the k-hop
  adjacencies, k = 0..num_gcn_scales-1) followed by two MS-TCNs (the last without activation);
- the G3D pathway: for each cross-spacetime window size (3 and 5), temporal windows are unfolded
  into one graph of `window*V` nodes, convolved with a disentangled multi-scale adjacency of the
  tiled space-time graph (num_g3d_scales scales), and the window is collapsed by a learned
  linear map; the window outputs are summed.
Every adjacency carries a learnable residual mask `A_res` (initialised U(-1e-6, 1e-6)).
The classifier of the paper is left out: the encoder returns `models.base.EncoderOutput`.

Presets (`build_msg3d`):
- ``paper``: stage widths 96/192/384, temporal stride 2 at stages 2 and 3, num_gcn_scales =
  graph diameter + 1 (13 on ntu25), num_g3d_scales 6, windows 3 and 5 (dilation 1), MS-TCN
  with dilations 1..4 (6 branches);
- ``base``: identical to ``paper`` (pyskl's MSG3D reproduces the paper network);
- ``small``: widths 48/96/192, otherwise ``paper``;
- ``tiny``: widths 8/16/32, 3 GCN scales, 2 G3D scales, MS-TCN dilations 1, 2; for tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from feeders.layouts import Layout, get_layout
from models.base import EncoderOutput, one_dim_parameter_names
from models.gcn_blocks import (InputNorm, MultiScaleTemporalConv, check_input,
                               disentangled_scales, graph_diameter, init_gcn_weights,
                               pool_gcn_features, spacetime_adjacency)
from models.registry import register_encoder

_PAPER = dict(stage_channels=(96, 192, 384), stage_strides=(1, 2, 2), num_gcn_scales=None,
              num_g3d_scales=6, windows=(3, 5), window_dilations=(1, 1),
              tcn_dilations=(1, 2, 3, 4))

PRESETS: dict[str, dict] = {
    "paper": _PAPER,
    "base": _PAPER,
    "small": {**_PAPER, "stage_channels": (48, 96, 192)},
    "tiny": {**_PAPER, "stage_channels": (8, 16, 32), "num_gcn_scales": 3, "num_g3d_scales": 2,
             "tcn_dilations": (1, 2)},
}


class MultiScaleGraphConv(nn.Module):
    """Aggregate over S adjacency scales, concatenate, mix with a 1x1 conv + BN + ReLU.

    scales: `(S, U, U)` normalised adjacencies (a learnable residual mask of the same shape is
    added). `(N, C_in, T, U)` -> `(N, C_out, T, U)`. Used by MS-GCN (U = V) and inside G3D
    (U = window * V).
    """

    def __init__(self, in_channels: int, out_channels: int, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("A", scales)
        self.A_res = nn.Parameter(torch.zeros_like(scales))
        self.mlp = nn.Sequential(
            nn.Conv2d(in_channels * scales.shape[0], out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adj = (self.A + self.A_res).to(x.dtype)                 # (S, U, U), [s, v, u]: u -> v
        n, c, t, u = x.shape
        agg = torch.einsum("svu,nctu->nsctv", adj, x)           # (N, S, C, T, U)
        return self.mlp(agg.reshape(n, -1, t, u))


def unfold_windows(x: torch.Tensor, window: int, stride: int, dilation: int) -> torch.Tensor:
    """Temporal sliding windows laid side by side on the joint axis.

    `(N, C, T, V)` -> `(N, C, T', window*V)` with T' = ceil(T / stride) for odd windows;
    node index `w*V + v` is joint v at the w-th frame of the window (zero padded at the ends).
    """
    span = (window - 1) * dilation + 1
    pad = (span - 1) // 2
    x = F.pad(x, (0, 0, pad, pad))
    x = x.unfold(2, span, stride)[..., ::dilation]             # (N, C, T', V, window)
    n, c, t, v, w = x.shape
    return x.permute(0, 1, 2, 4, 3).reshape(n, c, t, w * v)


class G3DWindow(nn.Module):
    """One G3D pathway with a fixed window: unfold, space-time MS-GCN, collapse the window.

    `(N, C_in, T, V)` -> `(N, C_out, ceil(T / stride), V)`. The graph convolution keeps
    `embed` channels (the paper: C_out in the first stage, C_in afterwards); the collapse
    (a Conv3d with kernel (1, window, 1) in the paper, here the equivalent 1x1 conv over the
    `embed*window` channels) maps to C_out, followed by BN.
    """

    def __init__(self, in_channels: int, out_channels: int, embed: int, adjacency,
                 num_scales: int, window: int, stride: int, dilation: int):
        super().__init__()
        if window % 2 != 1:
            raise ValueError(f"MS-G3D: window sizes must be odd, got {window}")
        self.window, self.stride, self.dilation = window, stride, dilation
        scales = disentangled_scales(spacetime_adjacency(adjacency, window), num_scales)
        self.gcn = MultiScaleGraphConv(in_channels, embed, scales)
        self.collapse = nn.Sequential(nn.Conv2d(embed * window, out_channels, kernel_size=1),
                                      nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.shape[3]
        y = self.gcn(unfold_windows(x, self.window, self.stride, self.dilation))
        n, c, t, _ = y.shape                                        # (N, E, T', window*V)
        y = y.view(n, c, t, self.window, v).permute(0, 1, 3, 2, 4)  # (N, E, window, T', V)
        return self.collapse(y.reshape(n, c * self.window, t, v))


class STGCStage(nn.Module):
    """One MS-G3D stage: ReLU(factorised pathway + sum of G3D windows), then an MS-TCN.

    `(N, C_in, T, V)` -> `(N, C_out, ceil(T / stride), V)`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, first: bool,
                 adjacency, gcn_scales: torch.Tensor, num_g3d_scales: int, windows,
                 window_dilations, tcn_dilations):
        super().__init__()
        embed = out_channels if first else in_channels
        self.g3d = nn.ModuleList(
            G3DWindow(in_channels, out_channels, embed, adjacency, num_g3d_scales, w, stride, d)
            for w, d in zip(windows, window_dilations))
        self.factorized = nn.Sequential(
            MultiScaleGraphConv(in_channels, embed, gcn_scales),
            MultiScaleTemporalConv(embed, out_channels, stride=stride, dilations=tcn_dilations),
            MultiScaleTemporalConv(out_channels, out_channels, dilations=tcn_dilations,
                                   activation="none"),
        )
        self.tcn = MultiScaleTemporalConv(out_channels, out_channels, dilations=tcn_dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.factorized(x)
        for window in self.g3d:
            out = out + window(x)
        return self.tcn(F.relu(out))


class MSG3D(nn.Module):
    """MS-G3D encoder: `(N, C, T, V, M)` -> `EncoderOutput` with `C' = stage_channels[-1]`.

    num_gcn_scales: scales of the MS-GCN adjacency; None = graph diameter + 1 (every hop
    distance of the skeleton gets its own scale; 13 on ntu25 as in the paper).
    seed: seeds the initialisation (`init_gcn_weights`, then the residual masks).
    """

    def __init__(self, layout: Layout | str, channels: int, bodies: int,
                 stage_channels=(96, 192, 384), stage_strides=(1, 2, 2), num_gcn_scales=None,
                 num_g3d_scales: int = 6, windows=(3, 5), window_dilations=(1, 1),
                 tcn_dilations=(1, 2, 3, 4), seed: int = 0):
        super().__init__()
        layout = get_layout(layout)
        if len(stage_channels) != len(stage_strides) or not stage_channels:
            raise ValueError(f"MS-G3D: stage_channels ({len(stage_channels)}) and stage_strides "
                             f"({len(stage_strides)}) must be non-empty and of equal length")
        if len(windows) != len(window_dilations) or not windows:
            raise ValueError(f"MS-G3D: windows ({len(windows)}) and window_dilations "
                             f"({len(window_dilations)}) must be non-empty and of equal length")
        if channels < 1 or bodies < 1:
            raise ValueError(f"MS-G3D: channels and bodies must be >= 1, got {channels}, {bodies}")
        adjacency = torch.from_numpy(layout.adjacency())
        if num_gcn_scales is None:
            num_gcn_scales = graph_diameter(adjacency) + 1
        self.num_gcn_scales = num_gcn_scales
        self.channels, self.joints, self.bodies = channels, layout.num_joints, bodies
        gcn_scales = disentangled_scales(adjacency, num_gcn_scales)
        self.input_norm = InputNorm(channels, layout.num_joints, bodies)
        widths = (channels, *stage_channels)
        self.stages = nn.ModuleList(
            STGCStage(widths[i], widths[i + 1], stage_strides[i], first=i == 0,
                      adjacency=adjacency, gcn_scales=gcn_scales, num_g3d_scales=num_g3d_scales,
                      windows=windows, window_dilations=window_dilations,
                      tcn_dilations=tcn_dilations)
            for i in range(len(stage_channels)))
        self.temporal_dim = self.spatial_dim = stage_channels[-1]
        self.feature_dim = 2 * stage_channels[-1]
        self.stage_channels, self.stage_strides = tuple(stage_channels), tuple(stage_strides)
        generator = torch.Generator().manual_seed(seed)
        init_gcn_weights(self, generator)
        for m in self.modules():
            if isinstance(m, MultiScaleGraphConv):
                nn.init.uniform_(m.A_res, -1e-6, 1e-6, generator=generator)

    @property
    def num_layers(self) -> int:
        """Layer-decay depth: the number of stages."""
        return len(self.stages)

    def layer_id(self, name: str) -> int:
        """Layer id of parameter `name` (as in named_parameters()): 0 for the input norm, i + 1 for
        stage i."""
        parts = name.split(".")
        return int(parts[1]) + 1 if parts[0] == "stages" else 0

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay: biases and BatchNorm weights."""
        return one_dim_parameter_names(self)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage, `[(N*M, C_i, T_i, V)]`: the sources of a feature pyramid
        (models/tpn.py)."""
        check_input(x, self.channels, self.joints, self.bodies, "MS-G3D")
        f = self.input_norm(x)                                   # (N*M, C, T, V)
        outs = []
        for stage in self.stages:
            f = stage(f)                                         # (N*M, C', T', V)
            outs.append(f)
        return outs

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        return pool_gcn_features(self.stage_features(x)[-1], self.bodies)


@register_encoder("msg3d", PRESETS)
def build_msg3d(preset: str, *, layout: Layout | str, clip_len: int, channels: int,
                bodies: int, **overrides) -> MSG3D:
    """Build an MS-G3D from a preset (`PRESETS`), overriding any `MSG3D` keyword.

    MS-G3D works on any number of frames; `clip_len` is only checked to be positive.
    Overrides: stage_channels, stage_strides, num_gcn_scales, num_g3d_scales, windows,
    window_dilations, tcn_dilations, seed.
    """
    if preset not in PRESETS:
        raise ValueError(f"MS-G3D: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    if clip_len < 1:
        raise ValueError(f"MS-G3D: clip_len must be >= 1, got {clip_len}")
    allowed = {"stage_channels", "stage_strides", "num_gcn_scales", "num_g3d_scales", "windows",
               "window_dilations", "tcn_dilations", "seed"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"MS-G3D: unknown overrides {sorted(unknown)}; expected some of "
                         f"{sorted(allowed)}")
    return MSG3D(layout, channels, bodies, **{**PRESETS[preset], **overrides})
