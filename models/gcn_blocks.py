"""Graph-convolution pieces shared by the ST-GCN and MS-G3D encoders.

Inside a GCN backbone a batch is laid out as `(N*M, C, T, V)`: every body of every sample is
an independent graph sequence (the bodies are only merged again at pooling time). Graph
aggregation is a matmul/einsum with a `(V, V)` matrix, so it autocasts cleanly to bf16.

Contents:
- graph matrices: `symmetric_normalize`, `disentangled_scales` (MS-G3D's k-hop adjacency),
  `spacetime_adjacency` (G3D's tiled cross-spacetime graph);
- layers: `PartitionGraphConv` (ST-GCN's spatial graph convolution over K partitions),
  `TemporalConv`, `MultiScaleTemporalConv` (MS-TCN), `residual_path`;
- encoder plumbing: `InputNorm`, `pool_gcn_features`, `init_gcn_weights`, `check_input`.
"""
from __future__ import annotations

import torch
from torch import nn

from models.base import EncoderOutput


# --------------------------------------------------------------------------- graph matrices

def symmetric_normalize(adj: torch.Tensor) -> torch.Tensor:
    """`D^-1/2 A D^-1/2` with D the row sums of `adj` `(V, V)`; rows summing to 0 stay 0."""
    deg = adj.sum(dim=-1)
    inv_sqrt = torch.where(deg > 0, deg.clamp(min=1e-12).rsqrt(), torch.zeros_like(deg))
    return inv_sqrt[:, None] * adj * inv_sqrt[None, :]


def disentangled_scales(adj, num_scales: int) -> torch.Tensor:
    """MS-G3D's disentangled multi-scale adjacency `(num_scales, V, V)` float32.

    adj: `(V, V)` symmetric 0/1 adjacency (any self loops are ignored).
    Scale 0 is the identity; scale k >= 1 links each node to the nodes exactly k hops away plus
    itself (a self loop). Each scale is then normalised `D^-1/2 A D^-1/2` (Liu et al., CVPR 2020,
    eq. 3). Scales beyond the graph diameter hold only the self loops.
    """
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    adj = torch.as_tensor(adj, dtype=torch.float64)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be square (V, V), got shape {tuple(adj.shape)}")
    eye = torch.eye(adj.shape[0], dtype=torch.float64)
    step = ((adj > 0).double() + eye).clamp(max=1)          # one hop or stay
    reach = eye                                             # reachable within k hops
    scales = [eye]
    for _ in range(1, num_scales):
        new_reach = (reach @ step).clamp(max=1)
        scales.append(new_reach - reach + eye)              # exactly k hops, plus self
        reach = new_reach
    return torch.stack([symmetric_normalize(s) for s in scales]).float()


def spacetime_adjacency(adj, window: int) -> torch.Tensor:
    """G3D's cross-spacetime graph `(window*V, window*V)` over a window of frames.

    Node `(w, v)` (index `w*V + v`) connects to `(w', u)` whenever u is v or a neighbour of v,
    for every pair of frames w, w' in the window: `tile(A + I, (window, window))`.
    """
    adj = torch.as_tensor(adj, dtype=torch.float32)
    with_self = ((adj > 0).float() + torch.eye(adj.shape[0])).clamp(max=1)
    return with_self.repeat(window, window)


def graph_diameter(adj) -> int:
    """Longest shortest-path hop count of a connected graph given by `adj` `(V, V)`."""
    adj = torch.as_tensor(adj, dtype=torch.float64)
    v = adj.shape[0]
    step = ((adj > 0).double() + torch.eye(v, dtype=torch.float64)).clamp(max=1)
    reach = torch.eye(v, dtype=torch.float64)
    for hops in range(v):
        if bool((reach > 0).all()):
            return hops
        reach = (reach @ step).clamp(max=1)
    raise ValueError("the skeleton graph is not connected")


# --------------------------------------------------------------------------- layers

class PartitionGraphConv(nn.Module):
    """ST-GCN spatial graph convolution: `y = sum_k (W_k x) A_k`.

    partitions: `(K, V, V)` matrices, entry `[k, j, i]` weighting joint j's message to joint i.
    With `edge_importance`, a learnable `(K, V, V)` mask (initialised to ones) multiplies them.
    Input `(N, C_in, T, V)` -> output `(N, C_out, T, V)`.
    """

    def __init__(self, in_channels: int, out_channels: int, partitions: torch.Tensor,
                 edge_importance: bool = True):
        super().__init__()
        partitions = torch.as_tensor(partitions, dtype=torch.float32)
        self.register_buffer("A", partitions)
        self.importance = nn.Parameter(torch.ones_like(partitions)) if edge_importance else None
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels * partitions.shape[0], kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adj = self.A if self.importance is None else self.A * self.importance
        y = self.conv(x)                                               # (N, K*C, T, V)
        n, _, t, v = y.shape
        y = y.view(n, adj.shape[0], self.out_channels, t, v)          # (N, K, C, T, V)
        return torch.einsum("nkctv,kvw->nctw", y, adj.to(y.dtype))


class TemporalConv(nn.Sequential):
    """Convolution along time (kernel `(k, 1)`, 'same' padding, optional stride/dilation) + BN.

    `(N, C_in, T, V)` -> `(N, C_out, ceil(T / stride), V)`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1):
        pad = (kernel_size - 1) * dilation // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=(kernel_size, 1),
                      stride=(stride, 1), padding=(pad, 0), dilation=(dilation, 1)),
            nn.BatchNorm2d(out_channels),
        )


def residual_path(in_channels: int, out_channels: int, stride: int,
                  enabled: bool = True) -> nn.Module | None:
    """The shortcut of a residual unit: None (no residual), identity, or 1x1 conv + BN."""
    if not enabled:
        return None
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    return TemporalConv(in_channels, out_channels, kernel_size=1, stride=stride)


class MultiScaleTemporalConv(nn.Module):
    """MS-TCN (Liu et al. 2020): parallel temporal branches concatenated along channels.

    One branch per dilation (1x1 conv + BN + ReLU, then a kernel-`kernel_size` dilated
    temporal conv + BN), a max-pool branch (1x1 conv + BN + ReLU, 3x1 max-pool, BN) and a
    strided 1x1 branch (conv + BN); each has `out_channels / (len(dilations) + 2)` channels.
    A residual shortcut is added and `activation` applied (`relu` or `none`).
    `(N, C_in, T, V)` -> `(N, C_out, ceil(T / stride), V)`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, dilations=(1, 2, 3, 4), residual: bool = True,
                 activation: str = "relu"):
        super().__init__()
        num_branches = len(dilations) + 2
        if out_channels % num_branches:
            raise ValueError(f"MS-TCN: out_channels ({out_channels}) must be divisible by the "
                             f"number of branches ({num_branches} = {len(dilations)} dilations + 2)")
        if activation not in ("relu", "none"):
            raise ValueError(f"MS-TCN: activation must be 'relu' or 'none', got {activation!r}")
        width = out_channels // num_branches

        def reduce():
            return [nn.Conv2d(in_channels, width, kernel_size=1), nn.BatchNorm2d(width)]

        branches = [nn.Sequential(*reduce(), nn.ReLU(inplace=True),
                                  TemporalConv(width, width, kernel_size, stride, dilation))
                    for dilation in dilations]
        branches.append(nn.Sequential(*reduce(), nn.ReLU(inplace=True),
                                      nn.MaxPool2d((3, 1), stride=(stride, 1), padding=(1, 0)),
                                      nn.BatchNorm2d(width)))
        branches.append(TemporalConv(in_channels, width, kernel_size=1, stride=stride))
        self.branches = nn.ModuleList(branches)
        self.residual = residual_path(in_channels, out_channels, stride, residual)
        self.act = nn.ReLU(inplace=True) if activation == "relu" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([branch(x) for branch in self.branches], dim=1)
        if self.residual is not None:
            out = out + self.residual(x)
        return self.act(out)


# --------------------------------------------------------------------------- encoder plumbing

class InputNorm(nn.Module):
    """BatchNorm1d over the `M*V*C` coordinates of a frame (ST-GCN's `data_bn`).

    `(N, C, T, V, M)` -> `(N*M, C, T, V)`, bodies folded into the batch.
    """

    def __init__(self, channels: int, joints: int, bodies: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(bodies * joints * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)    # (N, M*V*C, T)
        x = self.bn(x)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2)        # (N, M, C, T, V)
        return x.reshape(n * m, c, t, v)


def pool_gcn_features(f: torch.Tensor, bodies: int) -> EncoderOutput:
    """Pool backbone features `f` `(N*M, C', T', V)` into an `EncoderOutput`.

    frames `(N, T', C')`: mean over joints, then over bodies; joints `(N, M*V, C')`: mean over
    time, body-major (body 0's V joints first); temporal = max over frames, spatial = max over
    joint tokens, both `(N, C')`; global_feat = cat(temporal, spatial) `(N, 2C')`.
    """
    nm, c, t, v = f.shape
    f = f.view(nm // bodies, bodies, c, t, v)
    frames = f.mean(dim=4).mean(dim=1).transpose(1, 2)                   # (N, T', C')
    joints = f.mean(dim=3).permute(0, 1, 3, 2).reshape(nm // bodies, bodies * v, c)
    temporal = frames.amax(dim=1)
    spatial = joints.amax(dim=1)
    return EncoderOutput(global_feat=torch.cat([temporal, spatial], dim=1), temporal=temporal,
                         spatial=spatial, frames=frames, joints=joints)


def init_gcn_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Deterministic initialisation of every conv / BN in `module`, drawn from `generator`.

    Convolutions: Kaiming normal (fan_out), zero bias; batch norms: weight 1, bias 0.
    Graph parameters (edge importance, adjacency residual masks) are set by their owners.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu",
                                    generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input(x: torch.Tensor, channels: int, joints: int, bodies: int, name: str) -> None:
    """Raise a ValueError naming the encoder when `x` is not `(N, channels, T, joints, bodies)`."""
    if x.ndim != 5:
        raise ValueError(f"{name}: input must be (N, C, T, V, M), got {x.ndim} dims "
                         f"{tuple(x.shape)}")
    _, c, t, v, m = x.shape
    if (c, v, m) != (channels, joints, bodies):
        raise ValueError(f"{name}: input (N, C, T, V, M) = {tuple(x.shape)} does not match the "
                         f"encoder's C={channels}, V={joints}, M={bodies}")
    if t < 1:
        raise ValueError(f"{name}: input has no frames (T=0)")

