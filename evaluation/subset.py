"""Seeded, per-class stratified subsets of a labelled split.

``stratified_subset`` draws the labelled fraction for semi-supervised runs; ``stratified_split``
carves a validation split out of training data for model selection. Both take, for each class c
with n_c samples, ``max(1, floor(fraction * n_c + 0.5))`` samples (capped at n_c), chosen by a
permutation from ``np.random.default_rng(seed)``; classes are visited in increasing label order
so the draw is reproducible for a given (labels, fraction, seed).
"""
from __future__ import annotations

import numpy as np


def _per_class_count(n: int, fraction: float) -> int:
    return min(n, max(1, int(np.floor(fraction * n + 0.5))))


def _check(labels: np.ndarray, fraction: float, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{what} must be in (0, 1], got {fraction}")
    return labels


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions (sorted int64) of a stratified ``fraction`` of ``labels (N,)``, >= 1 per class."""
    labels = _check(labels, fraction, "label fraction")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(members)[:_per_class_count(members.size, fraction)])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split positions of ``labels (N,)`` into (train, val), stratified per class.

    A class with a single sample stays entirely in train; otherwise val gets
    ``max(1, round(val_fraction * n_c))`` but never all of the class."""
    labels = _check(labels, val_fraction, "validation fraction")
    if val_fraction >= 1.0:
        raise ValueError(f"validation fraction must be < 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = 0 if members.size < 2 else min(members.size - 1,
                                                _per_class_count(members.size, val_fraction))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return (np.sort(np.concatenate(train)).astype(np.int64),
            np.sort(np.concatenate(val)).astype(np.int64))
