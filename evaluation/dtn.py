"""DTN-style multi-scale temporal branches and cross-modal mutual distillation for fine-tuning
(DTN: Zhou et al., "Decoupling and Recoupling Spatiotemporal Representation for RGB-D-based
Motion Recognition", CVPR 2022; METHOD.md section 9), ported to skeletons.

Multi-scale branches (`--branches 16,32,48`): the training clip (C, L, V, M) of a sequence is
resampled in time to each branch length (`resample_time`: the grid of feeders.augment), each
resampled clip goes through the encoder (one shared encoder by default, or a copy per branch,
initialised alike) and its own linear head. The fused prediction is the mean of the branch
logits. Loss (`branch_loss`):

    1 * CE(fused) + 0.5 * sum_b CE(branch b) + sum_b distill(fused -> branch b) / B

where distill is DINO's self-distillation cross-entropy -softmax(fused / t_teacher) . log_softmax(
branch / t_student) with the teacher (the fused prediction) detached, t_student = 0.1 and
t_teacher on a cosine schedule from 0.04 at the start of training to 0.07 at its end
(`teacher_temperature`). Our reading of DTN's "distillation between branches": the branches
learn from their own ensemble. At test time the fused prediction is reported.

Mutual distillation (`--mutual-stream b`): the encoder is copied into a second stream (e.g. bone
input while the run's --stream is joint); each stream has its head and its cross-entropy, and
each distils from the other (detached) at temperature `MUTUAL_TEMPERATURE` (Hinton's KD loss
scaled by T^2), the skeleton analogue of DTN's RGB-depth interactive learning. The reported
prediction is the mean of the two streams' softmax scores (as log-probabilities).

Not ported: DTN's RGB-D video pipeline (frame decoding, 224-pixel crops), its per-branch
transformers over frame features (the skeleton encoder is the branch network) and its
recoupling module (DSTE's two streams are already decoupled).
"""
from __future__ import annotations

import argparse
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.linear import make_head
from feeders.streams import to_stream

BRANCH_WEIGHT = 0.5          # each branch's cross-entropy; the fused prediction has weight 1
TEACHER_TEMPERATURES = (0.04, 0.07)
STUDENT_TEMPERATURE = 0.1
MUTUAL_TEMPERATURE = 2.0


def parse_branches(text: str) -> tuple[int, ...]:
    """``"16,32,48"`` -> (16, 32, 48); argparse.ArgumentTypeError (a ValueError) otherwise."""
    try:
        lengths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--branches expects frame counts separated by "
                                         f"commas (e.g. 16,32,48), "
                         f"got {text!r}") from None
    if len(lengths) < 2 or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"--branches needs at least two lengths >= 1 frame, "
                                         f"got {text!r}")
    return lengths


def resample_time(x: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resampling of clips ``x (N, C, L, V, M)`` to ``length`` frames (the grid of
    feeders.augment.resample_frames: frame i at (i + 0.5) * L / length - 0.5, clamped)."""
    n, c, t, v, m = x.shape
    if t == length:
        return x
    pos = ((torch.arange(length, dtype=torch.float64) + 0.5) * (t / length) - 0.5).clamp(0, t - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=t - 1)
    w = (pos - lo).to(x.dtype).to(x.device)[None, None, :, None, None]
    return x[:, :, lo.to(x.device)] * (1 - w) + x[:, :, hi.to(x.device)] * w


def teacher_temperature(progress: float, start: float = TEACHER_TEMPERATURES[0],
                        end: float = TEACHER_TEMPERATURES[1]) -> float:
    """Cosine schedule: ``start`` at progress 0, ``end`` at progress 1 (clamped to [0, 1])."""
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))


def soft_cross_entropy(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                       t_teacher: float, t_student: float) -> torch.Tensor:
    """Mean over the batch of -sum softmax(teacher / t_teacher) * log_softmax(student / t_student);
    the teacher is detached. (N, C), (N, C) -> scalar."""
    target = F.softmax(teacher_logits.detach().float() / t_teacher, dim=1)
    return -(target * F.log_softmax(student_logits.float() / t_student, dim=1)).sum(1).mean()


def branch_loss(branch_logits: torch.Tensor, labels: torch.Tensor, progress: float,
                label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
    """branch_logits (N, B, C), labels (N,) -> (total, terms); see the module docstring."""
    fused = branch_logits.mean(dim=1)
    ce = partial_ce(label_smoothing)
    terms = {"fused_ce": ce(fused, labels)}
    t_teacher = teacher_temperature(progress)
    nb = branch_logits.shape[1]
    branch_ce = sum(ce(branch_logits[:, b], labels) for b in range(nb))
    distill = sum(soft_cross_entropy(fused, branch_logits[:, b], t_teacher, STUDENT_TEMPERATURE)
                  for b in range(nb)) / nb
    terms.update(branch_ce=branch_ce, distill=distill, t_teacher=torch.tensor(t_teacher))
    return terms["fused_ce"] + BRANCH_WEIGHT * branch_ce + distill, terms


def mutual_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor,
                label_smoothing: float = 0.0, temperature: float = MUTUAL_TEMPERATURE
                ) -> tuple[torch.Tensor, dict]:
    """CE of each stream + each stream's KL towards the other's (detached) scores, times T^2."""
    ce = partial_ce(label_smoothing)

    def kl(teacher, student):
        p = F.softmax(teacher.detach().float() / temperature, dim=1)
        return F.kl_div(F.log_softmax(student.float() / temperature, dim=1), p,
                        reduction="batchmean") * temperature ** 2

    terms = {"ce_a": ce(logits_a, labels), "ce_b": ce(logits_b, labels),
             "kl_a": kl(logits_b, logits_a), "kl_b": kl(logits_a, logits_b)}
    return sum(terms.values()), terms


def partial_ce(label_smoothing: float):
    return lambda logits, labels: F.cross_entropy(logits.float(), labels,
                                                  label_smoothing=label_smoothing)


class BranchClassifier(nn.Module):
    """Multi-scale branches: clips (N, C, L, V, M) -> branch logits (N, B, classes).

    ``shared``: one encoder for all branches (default) or a copy per branch. Each branch has its
    own head (seeded ``seed + b``). ``encoder`` must take any number of frames (GCN encoders)."""

    def __init__(self, encoder: nn.Module, num_classes: int, lengths, seed: int,
                 shared: bool = True):
        super().__init__()
        if not hasattr(encoder, "stage_features"):
            raise ValueError(f"--branches feeds clips of several lengths, which needs an encoder "
                             f"that takes any number of frames (stgcn, msg3d), not "
                             f"{type(encoder).__name__} (its positional table has --clip-len rows)")
        self.lengths = tuple(lengths)
        self.encoders = nn.ModuleList([encoder] if shared else
                                      [copy.deepcopy(encoder) for _ in self.lengths])
        self.heads = nn.ModuleList(make_head(encoder.feature_dim, num_classes, seed + b)
                                   for b in range(len(self.lengths)))

    @property
    def encoder(self) -> nn.Module:
        return self.encoders[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for b, length in enumerate(self.lengths):
            encoder = self.encoders[b if len(self.encoders) > 1 else 0]
            out.append(self.heads[b](encoder(resample_time(x, length)).global_feat))
        return torch.stack(out, dim=1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The fused prediction (N, classes): the mean of the branch logits."""
        return self(x).mean(dim=1)


class MutualClassifier(nn.Module):
    """Two streams of one encoder: raw clips (N, C, L, V, M) -> logits (N, 2, classes), stream
    ``streams[0]`` through ``encoder`` and ``streams[1]`` through a copy of it."""

    takes_raw = True  # the streams are computed inside, from the raw (joint) clip

    def __init__(self, encoder: nn.Module, num_classes: int, streams: tuple[str, str], parents,
                 spatial_channels: int | None, seed: int):
        super().__init__()
        self.streams, self.parents, self.spatial_channels = streams, parents, spatial_channels
        self.encoders = nn.ModuleList([encoder, copy.deepcopy(encoder)])
        self.heads = nn.ModuleList(make_head(encoder.feature_dim, num_classes, seed + b)
                                   for b in range(2))

    @property
    def encoder(self) -> nn.Module:
        return self.encoders[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(enc(to_stream(x, stream, self.parents,
                                               self.spatial_channels)).global_feat)
                            for enc, head, stream in zip(self.encoders, self.heads, self.streams)],
                           dim=1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """log of the mean of the two streams' softmax scores (N, classes)."""
        return torch.log(F.softmax(self(x).float(), dim=2).mean(dim=1))
