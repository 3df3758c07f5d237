"""`--method usdrl`: USDRL's multi-grained feature decorrelation (METHOD.md sections 1-4).

Four views of each sequence, each augmented and converted to `--stream`; the encoder runs once
on all 4B clips; temporal, spatial and instance projectors (models/usdrl.py, `USDRL`); the
loss `USDRLLoss` gathers the embeddings of all processes (with gradients) and computes
`models.usdrl.usdrl_loss` on the global batch, in fp32.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import engine
from feeders.streams import FUSED, to_stream
from methods.base import Method, augmented_views, register_method
from models.usdrl import USDRL, LossWeights, usdrl_loss


class USDRLLoss(nn.Module):
    """z: domain -> embeddings `(4, B_local, D)` -> (total, terms) on the gathered batch.

    The embeddings of every process are concatenated along the batch (`engine.gather_with_grad`:
    gradients flow back to each process's slice), then `usdrl_loss`. The terms start with the
    collapse indicators `std_<domain>` (the mean per-dimension std over the global batch;
    non-finite when the encoder or a projector produced NaN or inf, so they are named first),
    then usdrl_loss's terms in its order.
    """

    def __init__(self, weights: LossWeights | None = None):
        super().__init__()
        self.weights = weights or LossWeights()

    def forward(self, z: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = {d: engine.gather_with_grad(v, dim=1) for d, v in z.items()}  # (4, global B, D)
        terms = {f"std_{d}": v.detach().float().std(dim=1).mean() for d, v in z.items()}
        total, loss_terms = usdrl_loss(z, self.weights)
        terms.update(loss_terms)
        return total, terms


@register_method("usdrl")
class USDRLMethod(USDRL, Method):
    """USDRL (encoder + t/s/i projectors, models/usdrl.py) with its views and its loss.

    The state dict is USDRL's: `encoder.*`, `t_proj.*`, `s_proj.*`, `i_proj.*`.
    """

    num_views = 4

    def __init__(self, encoder: nn.Module, proj_mult: int = 2, weights: LossWeights | None = None):
        super().__init__(encoder, proj_mult)
        self.loss = USDRLLoss(weights)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("usdrl loss (METHOD.md section 4)")
        d = LossWeights()
        g.add_argument("--w-inv", type=float, default=d.inv, help="invariance weight")
        g.add_argument("--w-varcov", type=float, default=d.varcov, help="variance-covariance weight")
        g.add_argument("--w-xcorr", type=float, default=d.xcorr, help="cross-correlation weight")
        g.add_argument("--w-std", type=float, default=d.std, help="variance hinge inside varcov")
        g.add_argument("--w-offdiag", type=float, default=d.offdiag, help="off-diagonal weight in xcorr")
        g.add_argument("--w-i", type=float, default=d.i, help="instance domain weight")
        g.add_argument("--w-t", type=float, default=d.t, help="temporal domain weight")
        g.add_argument("--w-s", type=float, default=d.s, help="spatial domain weight")
        g.add_argument("--w-eps", type=float, default=d.eps, help="xcorr standardisation epsilon")
        g.add_argument("--proj-mult", type=int, default=2, help="projector width multiplier")

    @classmethod
    def from_args(cls, encoder: nn.Module, args: argparse.Namespace) -> "USDRLMethod":
        if args.proj_mult < 1:
            raise ValueError(f"--proj-mult must be >= 1, got {args.proj_mult}")
        if args.stream == FUSED:
            raise ValueError(f"--method usdrl trains one stream per model; --stream {FUSED} "
                             f"(joint, motion and bone in one model) is --method umurl's input")
        return cls(encoder, args.proj_mult, LossWeights.from_args(args))

    def make_inputs(self, views, generator, args, parents) -> torch.Tensor:
        """views (B, 4, C, L, V, M) -> (4B, C, L, V, M) view-major, augmented, in --stream."""
        x = augmented_views(views, generator, args)
        return to_stream(x, args.stream, parents, args.spatial_channels)

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """views (4N, C, L, V, M) -> {"t", "s", "i"}: (4, N, D) embeddings (USDRL.forward)."""
        return super().forward(views, num_views=self.num_views)
