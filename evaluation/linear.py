"""Linear probe: one Linear(feature_dim -> classes) on frozen features (METHOD section 5).

The head is initialised N(0, 0.01) (bias 0) and trained with SGD (momentum 0.9, weight decay 0)
for ``epochs`` with the lr multiplied by 0.1 at each milestone (160 epochs, x0.1 at 120 and
140 in the paper). Batches are drawn by ``batch_features(indices) -> (B, D)``: with cached
features that is a tensor index (the whole training set lives in memory), with
``evaluation.features.ReEncoder`` it re-runs the frozen encoder on the dataset samples, as the original release
did. Both paths see the same initialisation and the same batch order for the same seed, so
they train the same head up to floating-point noise in the features.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from evaluation.checks import NonFiniteError
from evaluation.subset import stratified_split
from progress import progress_bar


def make_head(feature_dim: int, num_classes: int, seed: int) -> nn.Linear:
    """Linear(feature_dim -> num_classes), weights ~ N(0, 0.01) from ``seed``, bias 0."""
    head = nn.Linear(feature_dim, num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    return head


def standardization(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), std (D,)) of ``features (N, D)`` per dimension, the std at least 1e-6 (a
    constant feature is left at 0 once centred)."""
    features = features.float()
    return features.mean(dim=0), features.std(dim=0, unbiased=False).clamp_min(1e-6)


@torch.no_grad()
def fold_standardization(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """``head`` trained on (x - mean) / std rewritten as a Linear of x itself:
    W' = W / std, b' = b - W' mean, so the result is a plain head of the raw features."""
    head.weight.div_(std.to(head.weight)[None, :])
    head.bias.sub_(head.weight @ mean.to(head.weight))
    return head


def step_lr(base_lr: float, epoch: int, milestones: tuple[int, ...]) -> float:
    """lr at 0-based ``epoch``: base_lr * 0.1 ** (number of milestones <= epoch)."""
    return base_lr * 0.1 ** sum(epoch >= m for m in milestones)


@torch.no_grad()
def predict(head: nn.Module, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits (N, classes) of ``features (N, D)``."""
    head.eval()
    out = [head(features[i:i + batch_size]) for i in range(0, features.shape[0], batch_size)]
    return torch.cat(out).float()


def average_clips(logits: torch.Tensor) -> torch.Tensor:
    """Multi-clip testing: logits (S, K, C) of K crops -> (S, C), the log of the mean of the K
    softmax scores (so evaluation.fusion's softmax gives back the averaged scores). (S, C)
    logits (one clip) are returned unchanged."""
    if logits.dim() == 2:
        return logits
    return torch.log(torch.softmax(logits.float(), dim=-1).mean(dim=1))


def accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Top-k accuracy in % of logits (N, C) against labels (N,)."""
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hit.float().mean().item()


def train_linear(batch_features: Callable[[torch.Tensor], torch.Tensor],
                 labels: torch.Tensor, feature_dim: int, num_classes: int, *,
                 epochs: int = 160, lr: float = 0.006, batch_size: int = 512,
                 milestones: tuple[int, ...] = (120, 140), momentum: float = 0.9,
                 weight_decay: float = 0.0, seed: int = 0, standardize: bool = False,
                 val: tuple[torch.Tensor, torch.Tensor] | None = None,
                 log: Callable[[int, dict], None] | None = None) -> dict:
    """Train a linear head on the samples ``0..N-1`` with ``labels (N,)``.

    ``batch_features(idx (B,) int64) -> (B, D) float`` supplies features for those positions.
    ``val`` = (features (Nv, D), labels (Nv,)) enables per-epoch selection of the best head on
    validation top-1. ``standardize``: the head is trained on features standardised per
    dimension with the training samples' mean and std (``standardization``; the batch norm
    without affine parameters of MAE's linear probe) and returned folded back into a head of
    the raw features (``fold_standardization``), so one lr suits features of any scale. A
    non-finite epoch loss raises NonFiniteError (a diverged head is never evaluated). Returns
    dict: ``head`` (last epoch), ``best_head`` and ``best_epoch`` (only with ``val``),
    ``history`` (list of per-epoch dicts: epoch, lr, loss, val_top1).
    """
    device = labels.device
    if standardize:
        mean, std = standardization(batch_features(torch.arange(labels.shape[0], device=device)))
        raw_features = batch_features

        def batch_features(idx: torch.Tensor) -> torch.Tensor:
            return (raw_features(idx).float() - mean) / std
        if val is not None:
            val = ((val[0].to(device).float() - mean) / std, val[1])
    head = make_head(feature_dim, num_classes, seed).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    order_gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    history, best = [], {"top1": -1.0, "head": None, "epoch": None}
    for epoch in progress_bar(range(epochs), desc="linear probe", unit="epoch", leave=False):
        for group in opt.param_groups:
            group["lr"] = step_lr(lr, epoch, milestones)
        head.train()
        order = torch.randperm(labels.shape[0], generator=order_gen).to(device)
        total, seen = 0.0, 0
        for start in range(0, order.shape[0], batch_size):
            idx = order[start:start + batch_size]
            loss = loss_fn(head(batch_features(idx).float()), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * idx.shape[0]
            seen += idx.shape[0]
        if not math.isfinite(total):
            raise NonFiniteError(f"linear probe: the training loss went non-finite in epoch "
                                 f"{epoch + 1} (lr {opt.param_groups[0]['lr']:g}); lower --lr")
        record = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "loss": total / seen}
        if val is not None:
            record["val_top1"] = accuracy(predict(head, val[0].to(device)), val[1].to(device))
            if record["val_top1"] > best["top1"]:
                best = {"top1": record["val_top1"], "head": copy.deepcopy(head),
                        "epoch": epoch + 1}
        history.append(record)
        if log is not None:
            log(epoch + 1, record)
    if standardize:
        head = fold_standardization(head, mean, std)
        if best["head"] is not None:
            best["head"] = fold_standardization(best["head"], mean, std)
    return {"head": head, "best_head": best["head"], "best_epoch": best["epoch"],
            "history": history}


def select_lr(features: torch.Tensor, labels: torch.Tensor, num_classes: int, grid, *,
              folds: int = 5, seed: int = 0, **train_kw) -> tuple[float, list[dict]]:
    """The lr of ``grid`` with the best mean held-out top-1 over ``folds`` stratified splits of
    the training samples (``features (N, D)``, ``labels (N,)``), a fifth held out each time
    (evaluation.subset.stratified_split, seeds seed..seed+folds-1); ties go to the first in
    ``grid``. ``train_kw``: the other ``train_linear`` arguments (epochs, batch_size, ...).
    Returns (lr, [{"lr", "held_out_top1"}, ...] in grid order), or (None, []) when no class has
    the two samples it takes to hold one out. Only training samples are seen, so the choice is
    made without the test split."""
    splits = [tuple(torch.as_tensor(p, device=labels.device)
                    for p in stratified_split(labels.cpu().numpy(), 0.2, seed + k))
              for k in range(folds)]
    if not len(splits[0][1]):
        return None, []
    table = []
    for lr in grid:
        scores = []
        for fit, held in splits:
            fit_features = features[fit]
            out = train_linear(lambda idx: fit_features[idx], labels[fit], features.shape[1],
                               num_classes, lr=lr, seed=seed, **train_kw)
            scores.append(accuracy(predict(out["head"], features[held]), labels[held]))
        table.append({"lr": float(lr), "held_out_top1": sum(scores) / len(scores)})
    best = max(table, key=lambda row: row["held_out_top1"])   # max keeps the first of ties
    return best["lr"], table
