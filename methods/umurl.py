"""`--method umurl`: unified multi-modal representation learning (UmURL, METHOD.md section 8).

One encoder for joint, motion and bone (models/unified.py, `UnifiedEncoder`: a modality
embedder each, early fusion, one shared two-stream encoder of `--backbone`, dste or sttr).

Views: the dataset crops four views of each sequence and each is augmented (METHOD.md
section 1, as USDRL's); view 0 is fed as joints, view 1 as bones, view 2 as motion (uni-modal
views, each through its own embedder) and view 3 as all three fused (the multi-modal view, the
`jmb` path every evaluation uses). The encoder runs once on the 4B token sets.

Heads: one projector per modality m (Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear,
2H -> m*H -> m*H -> 2*m*H with m = --proj-mult, 2048 -> 2048 -> 4096 in the paper), applied to
the uni-modal feature (z_m) and to the multi-modal one (z_um), each a separate BatchNorm pass.

Loss (`UmURLLoss`, on the batch gathered over processes, fp32):
`w_inv * (sum_m MSE(z_m, z_um) + sum_m MSE(z_m, C)) + w_varcov * sum of the variance-covariance
term of METHOD.md section 4 over the six embeddings`, C = mean of the three z_m.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import engine
from feeders.streams import FUSED, FUSED_PARTS, to_stream
from methods.base import Method, augmented_views, register_method
from models.unified import UnifiedEncoder
from models.usdrl import _varcov as varcov_penalty  # METHOD.md section 4, Gram form
from models.usdrl import projector

# view k of the dataset -> the input it is fed as (a modality, or FUSED for all three)
VIEW_INPUTS = ("j", "b", "m", FUSED)


class UmURLLoss(nn.Module):
    """z: modality m -> `(2, B_local, D)` (row 0: z_m of the uni-modal view, row 1: z_um, the
    multi-modal feature through m's projector) -> (total, terms) on the gathered batch.

    terms, in this order: the collapse indicators `std_<m>` (mean per-dimension std of z_m over
    the batch), `intra` = sum_m MSE(z_m, z_um), `inter` = sum_m MSE(z_m, C), `varcov` = the
    variance-covariance term summed over the six embeddings, `total`. MSE is the mean over
    B x D. Computed in fp32 with autocast off (float64 stays float64).
    """

    def __init__(self, inv: float = 5.0, varcov: float = 1.0, std: float = 5.0):
        super().__init__()
        self.inv, self.varcov, self.std = inv, varcov, std

    def forward(self, z: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for m, zm in z.items():
            if zm.dim() != 3 or zm.shape[0] != 2 or zm.shape[1] < 2:
                raise ValueError(f"UmURLLoss: z[{m!r}] must be (2, B >= 2, D), got {tuple(zm.shape)}")
        z = {m: engine.gather_with_grad(v, dim=1) for m, v in z.items()}  # (2, global B, D)
        with torch.autocast(device_type=next(iter(z.values())).device.type, enabled=False):
            z = {m: v if v.dtype == torch.float64 else v.float() for m, v in z.items()}
            center = torch.stack([v[0] for v in z.values()]).mean(0)
            intra = sum(F.mse_loss(v[0], v[1]) for v in z.values())
            inter = sum(F.mse_loss(v[0], center) for v in z.values())
            every = torch.cat(list(z.values()))  # the six embeddings (6, B, D)
            varcov = varcov_penalty(every - every.mean(1, keepdim=True), self.std)
            total = self.inv * (intra + inter) + self.varcov * varcov
        terms = {f"std_{m}": v[0].detach().std(dim=0).mean() for m, v in z.items()}
        terms.update(intra=intra, inter=inter, varcov=varcov, total=total)
        return total, terms


@register_method("umurl")
class UmURL(Method):
    """Unified encoder + one projector per modality; `forward` -> {m: (2, N, D)}."""

    num_views = len(VIEW_INPUTS)

    def __init__(self, encoder: UnifiedEncoder, proj_mult: int = 2, loss: UmURLLoss | None = None):
        super().__init__()
        if not isinstance(encoder, UnifiedEncoder):
            raise ValueError(f"--method umurl needs the unified encoder of the {FUSED} stream "
                             f"(--stream {FUSED}), got {type(encoder).__name__}")
        self.encoder = encoder
        d = encoder.feature_dim
        self.proj = nn.ModuleDict({m: projector(d, proj_mult * d // 2, proj_mult * d)
                                   for m in FUSED_PARTS})
        self.loss = loss or UmURLLoss()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.set_defaults(stream=FUSED)
        g = parser.add_argument_group("umurl loss (METHOD.md section 8; needs --stream jmb, "
                                      "the default with this method)")
        g.add_argument("--w-inv", type=float, default=5.0,
                       help="weight of the intra- and inter-modal consistency MSEs")
        g.add_argument("--w-varcov", type=float, default=1.0, help="variance-covariance weight")
        g.add_argument("--w-std", type=float, default=5.0, help="variance hinge inside varcov")
        g.add_argument("--proj-mult", type=int, default=2,
                       help="projectors 2H -> m*H -> m*H -> 2*m*H for --proj-mult m")

    @classmethod
    def from_args(cls, encoder: nn.Module, args: argparse.Namespace) -> "UmURL":
        if args.proj_mult < 1:
            raise ValueError(f"--proj-mult must be >= 1, got {args.proj_mult}")
        if args.stream != FUSED:
            raise ValueError(f"--method umurl learns one model for joint, motion and bone: "
                             f"--stream must be {FUSED}, got {args.stream}")
        return cls(encoder, args.proj_mult, UmURLLoss(args.w_inv, args.w_varcov, args.w_std))

    def make_inputs(self, views, generator, args, parents) -> dict[str, torch.Tensor]:
        """views (B, 4, C, L, V, M) -> {"j", "b", "m": (B, C, L, V, M), "jmb": (B, 3C, L, V, M)}:
        the augmented views 0..3 converted to VIEW_INPUTS."""
        x = augmented_views(views, generator, args).chunk(self.num_views)
        return {name: to_stream(v, name, parents, args.spatial_channels)
                for name, v in zip(VIEW_INPUTS, x)}

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """inputs (make_inputs) -> {m: (2, N, D)}: m's projector on the uni-modal feature of
        view m and on the fused feature of the multi-modal view."""
        tokens = [self.encoder.fuse(v) if name == FUSED else self.encoder.embed(v, name)
                  for name, v in inputs.items()]
        out = self.encoder.encode(torch.cat([t for t, _ in tokens]), torch.cat([s for _, s in tokens]))
        feats = dict(zip(inputs, out.global_feat.chunk(len(tokens))))
        return {m: torch.stack([self.proj[m](feats[m]), self.proj[m](feats[FUSED])])
                for m in FUSED_PARTS}
