"""A temporal convolution head for frozen-encoder detection (``action_detection.py --head tcn``).

The per-frame linear head of the SSL protocol sees one frame's feature at a time; where two
actions follow each other with few idle frames it cannot place the boundary, and noisy
per-frame scores break an action into fragments. The action-segmentation literature puts a
temporal convolution network on frozen per-frame features instead: this is one stage of MS-TCN
(Farha & Gall, CVPR 2019), on the encoder's dense features of a whole stream:

    standardise (training mean / std) -> Conv1d(D -> H, 1)
    -> ``layers`` dilated residual layers: x + Dropout(Conv1d(H -> H, 1)(ReLU(Conv1d(H -> H, 3,
       dilation 2**i)(x))))   (receptive field 2**(layers + 1) - 1 frames)
    -> Conv1d(H -> K + 1, 1)

trained on whole streams (one stream a step, seeded order) with Adam, the loss cross-entropy
plus ``smooth_weight`` x the truncated mean squared error between the log-probabilities of
neighbouring frames (MS-TCN's T-MSE, tau 4, gradient not propagated through the previous frame).
The paper's values: H 64, 10 layers, dropout 0.5, Adam lr 5e-4, weight 0.15.

The stream features are the window features averaged over the windows' overlaps
(``evaluation.detection.stitch``), so the head sees every frame once with its whole stream as
context. The encoder stays frozen: this is still an evaluation of its features, with a head
that can use time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.checks import NonFiniteError
from progress import progress_bar

TCN_DEFAULTS = {"epochs": 50, "lr": 5e-4, "weight_decay": 0.0}


class DilatedResidual(nn.Module):
    """x + Dropout(Conv1x1(ReLU(Conv3(x, dilation)))) on ``(N, H, T)``."""

    def __init__(self, channels: int, dilation: int, dropout: float):
        super().__init__()
        self.dilated = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.pointwise = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.pointwise(F.relu(self.dilated(x))))


class TemporalConvHead(nn.Module):
    """One MS-TCN stage on per-frame features: ``(N, T, D)`` -> logits ``(N, T, K + 1)``.

    ``mean`` / ``std`` ``(D,)`` standardise the input (the training frames' statistics)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 64, layers: int = 10,
                 dropout: float = 0.5, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):   # the initialisation comes from ``seed``
            torch.manual_seed(seed)
            self.inp = nn.Conv1d(in_dim, hidden, 1)
            self.layers = nn.ModuleList(DilatedResidual(hidden, 2 ** i, dropout)
                                        for i in range(layers))
            self.out = nn.Conv1d(hidden, num_classes, 1)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float() - self.mean) / self.std).transpose(1, 2)   # (N, D, T)
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(x).transpose(1, 2)


def smoothing_loss(logits: torch.Tensor, mask: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """MS-TCN's truncated MSE over neighbouring frames: mean over valid frame pairs and classes
    of min((log p_t - log p_{t-1})^2, tau^2), the previous frame detached.
    logits ``(N, T, C)``, mask ``(N, T)`` bool (both frames of a pair must be valid)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    diff = (logp[:, 1:] - logp[:, :-1].detach()) ** 2
    pair = (mask[:, 1:] & mask[:, :-1]).unsqueeze(-1).float()
    clamped = diff.clamp(max=tau * tau) * pair
    return clamped.sum() / (pair.sum() * logits.shape[-1]).clamp(min=1.0)


def train_temporal_head(streams: list[torch.Tensor], labels: list[torch.Tensor],
                        num_classes: int, *, epochs: int, lr: float, weight_decay: float = 0.0,
                        hidden: int = 64, layers: int = 10, dropout: float = 0.5,
                        smooth_weight: float = 0.15, seed: int = 0, device="cpu",
                        log=None) -> TemporalConvHead:
    """Train a ``TemporalConvHead`` on whole streams: ``streams`` [(T_i, D)] features,
    ``labels`` [(T_i,)] int64 (0 background, 1..K; -1 frames are left out of the loss).
    One stream per step in a seeded order; Adam. A non-finite epoch loss raises NonFiniteError.
    Returns the head in eval mode."""
    if not streams:
        raise ValueError("the temporal head needs at least one training stream")
    frames = torch.cat([s.float() for s in streams])
    head = TemporalConvHead(frames.shape[1], num_classes, hidden, layers, dropout, seed)
    head.mean.copy_(frames.mean(0))
    head.std.copy_(frames.std(0).clamp(min=1e-6))
    head.to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    order_gen = torch.Generator().manual_seed(seed)
    cuda = torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=[torch.device(device)] if cuda else []):
        torch.manual_seed(seed)   # dropout's draws: from ``seed``, whatever ran before
        _train(head, opt, order_gen, streams, labels, epochs, lr, smooth_weight, device, log)
    return head.eval()


def _train(head, opt, order_gen, streams, labels, epochs, lr, smooth_weight, device, log):
    """``epochs`` passes over the streams, one stream a step in ``order_gen``'s order; the loss
    is cross-entropy (-1 frames left out) + ``smooth_weight`` x ``smoothing_loss``."""
    for epoch in progress_bar(range(epochs), desc="temporal head", unit="epoch", leave=False):
        head.train()
        total = 0.0
        for i in torch.randperm(len(streams), generator=order_gen).tolist():
            x = streams[i].to(device).float()[None]
            y = labels[i].to(device)[None]
            logits = head(x)
            mask = y >= 0
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
            if smooth_weight:
                loss = loss + smooth_weight * smoothing_loss(logits, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        if not math.isfinite(total):
            raise NonFiniteError(f"temporal head: the training loss went non-finite in epoch "
                                 f"{epoch + 1} (lr {lr:g}); lower --lr")
        if log is not None:
            log(epoch + 1, {"epoch": epoch + 1, "loss": total / len(streams)})


@torch.no_grad()
def stream_probabilities(head: TemporalConvHead, streams: dict[int, torch.Tensor]) -> dict:
    """Softmax per-frame probabilities ``(T, K + 1)`` float32 numpy of each stream's features
    ``(T, D)`` (keys kept)."""
    head.eval()
    device = head.mean.device
    return {k: torch.softmax(head(v.to(device).float()[None])[0], dim=-1).cpu().numpy()
            for k, v in streams.items()}
