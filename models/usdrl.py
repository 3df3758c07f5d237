"""USDRL pretraining head and objective (docs/METHOD.md section 4).

`USDRL(encoder)` adds three projectors to an encoder:

- `t_proj`: Dt -> m*Dt -> m*Dt -> m*Dt on the pooled temporal feature,
- `s_proj`: Ds -> m*Ds -> m*Ds -> m*Ds on the pooled spatial feature,
- `i_proj`: (Dt+Ds) -> m*D' -> m*D' -> 2*m*D' on their concatenation, D' = (Dt+Ds)/2,

with m = `proj_mult` (2 in the paper: 1024 -> 2048 x 3 and 2048 -> 2048 -> 2048 -> 4096).

`usdrl_loss(z)` is the multi-grained decorrelation objective. Every penalty on a D x D
covariance or cross-correlation matrix is computed exactly from B x B Gram matrices, using
||A^T B||_F^2 = sum((A A^T) * (B B^T)) and diag(A^T B) = column sums of A * B, so the cost is
O(B^2 D) instead of O(B D^2). The loss always runs in fp32 with autocast disabled.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

DOMAINS = ("t", "s", "i")


def projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear, `(N, in_dim) -> (N, out_dim)`.

    The two Linear layers in front of a BatchNorm have no bias (BN would cancel it).
    """
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class USDRL(nn.Module):
    """Encoder + temporal / spatial / instance projectors.

    `forward(views (K*N, C, T, V, M), num_views=K)` runs the encoder once on all stacked views
    (view-major: rows k*N .. k*N+N-1 are view k) and each projector once per view, so projector
    BatchNorm statistics are per view (as if every view were a separate forward pass).
    Returns `{"t": (K, N, Pt), "s": (K, N, Ps), "i": (K, N, Pi)}` embeddings.
    """

    def __init__(self, encoder: nn.Module, proj_mult: int = 2):
        super().__init__()
        self.encoder = encoder
        dt, ds = encoder.temporal_dim, encoder.spatial_dim
        di = dt + ds
        self.t_proj = projector(dt, proj_mult * dt, proj_mult * dt)
        self.s_proj = projector(ds, proj_mult * ds, proj_mult * ds)
        self.i_proj = projector(di, proj_mult * di // 2, proj_mult * di)

    def forward(self, views: torch.Tensor, num_views: int = 4) -> dict[str, torch.Tensor]:
        if views.shape[0] % num_views:
            raise ValueError(f"USDRL.forward: batch of {views.shape[0]} stacked views is not "
                             f"divisible by num_views={num_views}")
        out = self.encoder(views)
        feats = {"t": out.temporal, "s": out.spatial,
                 "i": torch.cat([out.temporal, out.spatial], dim=1)}
        heads = {"t": self.t_proj, "s": self.s_proj, "i": self.i_proj}
        return {d: torch.stack([heads[d](f) for f in feats[d].chunk(num_views)])
                for d in DOMAINS}


@dataclass
class LossWeights:
    """Weights of `usdrl_loss` (defaults = the paper)."""
    inv: float = 5.0        # invariance term
    varcov: float = 1.0     # variance + covariance term
    xcorr: float = 1e-3     # cross-correlation term (0 in the journal version)
    std: float = 5.0        # variance hinge inside varcov
    offdiag: float = 0.005  # off-diagonal weight inside xcorr
    i: float = 1.0          # instance domain
    t: float = 0.5          # temporal domain
    s: float = 0.5          # spatial domain
    eps: float = 1e-5       # standardisation epsilon of xcorr: (z - mean) / sqrt(var + eps)

    @classmethod
    def from_args(cls, args) -> "LossWeights":
        """Pick the `w_<field>` attributes of an argparse namespace (see pretrain.py)."""
        return cls(**{f.name: getattr(args, f"w_{f.name}") for f in fields(cls)})


def _invariance(z: torch.Tensor) -> torch.Tensor:
    """z `(4, B, D)`: sum_{v<3} MSE(z_v, z_3) + sum_{v<3} MSE(z_v, mean(z_0, z_1, z_2))."""
    target = z[:3].mean(0, keepdim=True)
    return (F.mse_loss(z[:3], z[3:].expand_as(z[:3]), reduction="none").mean((1, 2)).sum()
            + F.mse_loss(z[:3], target.expand_as(z[:3]), reduction="none").mean((1, 2)).sum())


def _varcov(zc: torch.Tensor, std_w: float) -> torch.Tensor:
    """Centred views zc `(K, B, D)`: sum over views of
    std_w * mean_j relu(1 - sqrt(Var_j + 1e-4)) + (1/D) sum_{j != k} Cov_jk^2 (unbiased)."""
    k, b, d = zc.shape
    var = zc.square().sum(1) / (b - 1)                                   # (K, D)
    std_term = F.relu(1 - torch.sqrt(var + 1e-4)).mean(1)                # (K,)
    gram = zc @ zc.transpose(1, 2)                                       # (K, B, B)
    cov_fro2 = gram.square().sum((1, 2)) / (b - 1) ** 2                  # ||Cov||_F^2
    offdiag = (cov_fro2 - var.square().sum(1)) / d
    return (std_w * std_term + offdiag).sum()


def _xcorr(zc: torch.Tensor, offdiag_w: float, eps: float) -> torch.Tensor:
    """Centred views zc `(K, B, D)`: sum over view pairs a < b of
    sum_j (C_jj - 1)^2 + offdiag_w * sum_{j != k} C_jk^2 with C = Za^T Zb / B on columns
    standardised over the batch (biased variance, eps inside the square root)."""
    k, b, d = zc.shape
    zn = zc / torch.sqrt(zc.square().mean(1, keepdim=True) + eps)
    gram = zn @ zn.transpose(1, 2)                                       # (K, B, B)
    total = zc.new_zeros(())
    for va, vb in combinations(range(k), 2):
        diag = (zn[va] * zn[vb]).sum(0) / b                              # C_jj, (D,)
        fro2 = (gram[va] * gram[vb]).sum() / b ** 2                      # ||C||_F^2
        total = total + (diag - 1).square().sum() + offdiag_w * (fro2 - diag.square().sum())
    return total


def usdrl_loss(z: dict[str, torch.Tensor], w: LossWeights | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-grained decorrelation loss.

    z: domain name ("t", "s", "i") -> embeddings `(4, B, D)` (half types are cast to fp32;
    float64 stays float64).
    Returns (total, terms) where terms holds `<term>_<domain>` for term in inv/varcov/xcorr
    and each domain, the domain-weighted `inv`, `varcov`, `xcorr`, and `total`.
    """
    w = w or LossWeights()
    terms: dict[str, torch.Tensor] = {}
    with torch.autocast(device_type=next(iter(z.values())).device.type, enabled=False):
        for d, zd in z.items():
            if zd.dim() != 3 or zd.shape[0] != 4 or zd.shape[1] < 2:
                raise ValueError(f"usdrl_loss: z[{d!r}] must be (4 views, B >= 2, D), "
                                 f"got {tuple(zd.shape)}")
            zd = zd if zd.dtype == torch.float64 else zd.float()
            zc = zd - zd.mean(1, keepdim=True)
            terms[f"inv_{d}"] = _invariance(zd)
            terms[f"varcov_{d}"] = _varcov(zc, w.std)
            terms[f"xcorr_{d}"] = _xcorr(zc, w.offdiag, w.eps)
        for name in ("inv", "varcov", "xcorr"):
            terms[name] = sum(getattr(w, d) * terms[f"{name}_{d}"] for d in z)
        total = w.inv * terms["inv"] + w.varcov * terms["varcov"] + w.xcorr * terms["xcorr"]
    terms["total"] = total
    return total, terms
