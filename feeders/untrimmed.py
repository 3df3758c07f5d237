"""Untrimmed streams: per-frame labels, ground-truth instances and windows (docs/design.md).

A store of untrimmed streams holds each whole stream as one sequence with the per-frame array
``frame_labels`` (``(T,)`` int, 0 = background, 1..K the actions; class 0 of the manifest is
``background``). Ground-truth instances are *derived* from it: the maximal runs of one non-zero
label, ``(label, start, end)`` with ``end`` exclusive, in frames of the stored stream
(``instances_from_labels``). Two instances of one class with no background frame between them
therefore read as one instance (no reader here writes such streams).

- ``window_starts``: windows of L frames slid with a stride, the last one flush with the end;
- ``WindowDataset``: the windows of a split as samples ``(clip (C, L, V, M), labels (L,),
  index)``, each window normalised on its own (its first frame), padding labelled -1;
- ``write_windows`` / ``python -m feeders.untrimmed --src DIR --out DIR --window W --stride S``:
  a store whose sequences are the windows, for pretraining on untrimmed data (``pretrain.py``
  then crops within each window as on any trimmed set).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from feeders.dataset import _SequenceDataset, normalize_first_frame, normalize_view
from feeders.store import Record, StoreWriter, open_store

LABELS_KEY = "frame_labels"


def segments(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs of one value: ``(T,)`` ints -> [(label, start, end)] (end exclusive)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return []
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [labels.size]])
    return [(int(labels[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def instances_from_labels(labels: np.ndarray) -> np.ndarray:
    """Ground-truth instances of per-frame labels: ``(n, 3)`` int64 rows (label, start, end)."""
    rows = [seg for seg in segments(labels) if seg[0] > 0]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def stream_labels(store, i: int) -> np.ndarray:
    """Per-frame labels ``(T,)`` int64 of store sequence ``i``; a clear error without them."""
    if LABELS_KEY not in store.frame_array_names:
        raise ValueError(f"{store.root}: no per-frame labels ({LABELS_KEY}.npy); prepare an "
                         f"untrimmed set (feeders.prepare --format pku --task detection, "
                         f"--format utkinect, or feeders.synthetic --untrimmed)")
    return np.asarray(store.frame_array(LABELS_KEY, i), dtype=np.int64)


def summarize_untrimmed(store) -> dict:
    """Instances per class name and background share of each split (and of all streams)."""
    groups = {"all": np.arange(len(store)), **store.splits}
    out = {}
    for name, idx in groups.items():
        counts = np.zeros(store.num_classes, dtype=np.int64)
        background = frames = 0
        for i in idx:
            labels = stream_labels(store, int(i))
            for label, _, _ in instances_from_labels(labels):
                counts[label] += 1
            background += int((labels == 0).sum())
            frames += labels.size
        out[name] = {"instances": int(counts.sum()),
                     "per_class": {store.manifest["class_names"][c]: int(counts[c])
                                   for c in range(1, store.num_classes)},
                     "background_share": background / max(1, frames)}
    return out


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """First frames of the windows slid over a stream of ``length`` frames.

    Every ``stride`` frames from 0, plus a last window ending at the last frame, so every
    frame is covered; a stream shorter than the window has one window at 0 (padded).
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    if length <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - window + 1, stride, dtype=np.int64)
    if starts[-1] != length - window:
        starts = np.append(starts, length - window)
    return starts


def cut_window(seq: np.ndarray, start: int, window: int) -> tuple[np.ndarray, int]:
    """``seq[start:start + window]`` of ``(T, ...)``, padded by repeating the last frame.

    Returns (window ``(window, ...)``, number of real frames)."""
    part = seq[start:start + window]
    real = len(part)
    if real < window:
        part = np.concatenate([part, np.repeat(part[-1:], window - real, axis=0)])
    return part, real


class WindowDataset(_SequenceDataset):
    """Windows of the streams of a split: items ``(clip (C, L, V, M) float32, labels (L,)
    int64, index)``; labels are -1 on padding frames (streams shorter than L).

    ``windows`` is the ``(W, 2)`` table of (store sequence, start frame), in split order then
    time order. Each window is normalised on its own (``normalize`` as in ``EvalDataset``, from
    the window's first frame), as the encoder saw its pretraining clips.
    """

    def __init__(self, store, split: str | None, clip_len: int, stride: int,
                 normalize: str = "first_frame", spatial_channels: int | None = None):
        super().__init__(store, split, clip_len, normalize, None, spatial_channels)
        self.window_normalize, self.normalize = normalize, "none"   # raw streams, per window
        self.stride = stride
        rows = [(int(s), int(start)) for s in self.sequence_indices
                for start in window_starts(int(self.store.lengths[s]), clip_len, stride)]
        self.windows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        seq_index, start = (int(v) for v in self.windows[i])
        seq = self.read_sequence(seq_index)
        clip, real = cut_window(seq, start, self.clip_len)
        clip = np.array(clip)
        if self.window_normalize == "first_frame":
            normalize_first_frame(clip, self.store.layout.center, self.spatial_channels)
        elif self.window_normalize == "view":
            normalize_view(clip, self.store.layout.center, self._view_joints)
        labels, _ = cut_window(stream_labels(self.store, seq_index), start, self.clip_len)
        labels = labels.copy()
        labels[real:] = -1
        return (torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 2, 1))),
                torch.from_numpy(labels), i)


def write_windows(src, out, window: int, stride: int) -> Path:
    """Write the windows of every stream of ``src`` as the sequences of a new store ``out``.

    Window ``w`` of stream ``name`` is named ``name@start``, keeps the stream's subject / view
    and per-frame labels, and its label is its most frequent action (0 when it has none); each
    split of ``src`` becomes the split of its streams' windows. Windows shorter than ``window``
    only occur for short streams (kept whole).
    """
    store = open_store(src)
    m = store.manifest
    member = {name: np.isin(np.arange(len(store)), idx) for name, idx in store.splits.items()}
    splits = {name: [] for name in store.splits}
    with StoreWriter(out, store.layout, store.num_classes, m["class_names"],
                     channels=store.channels, bodies=store.bodies, dtype=m["dtype"],
                     source_format=f"{m['source_format']}-windows") as writer:
        for s in range(len(store)):
            seq, labels = store.sequence(s), stream_labels(store, s)
            for start in window_starts(len(seq), window, stride):
                part = labels[start:start + window]
                actions = part[part > 0]
                for name in splits:
                    if member[name][s]:
                        splits[name].append(len(writer))
                writer.add(Record(f"{store.names[s]}@{start}",
                                  int(np.bincount(actions).argmax()) if actions.size else 0,
                                  np.asarray(seq[start:start + window], dtype=np.float32),
                                  subject=int(store.subjects[s]), view=int(store.views[s]),
                                  frame_arrays={LABELS_KEY: part.astype(np.int16)}))
        return writer.close(splits)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m feeders.untrimmed",
        description="Cut the untrimmed streams of a dataset directory into windows, written "
                    "as a new dataset directory (the samples for pretraining on untrimmed data).")
    parser.add_argument("--src", type=Path, required=True, help="dataset with frame_labels")
    parser.add_argument("--out", type=Path, required=True, help="output dataset directory")
    parser.add_argument("--window", type=int, default=128, help="frames per window")
    parser.add_argument("--stride", type=int, default=64, help="frames between window starts")
    args = parser.parse_args(argv)
    if args.window < 1 or args.stride < 1:
        parser.error("--window and --stride must be >= 1")
    try:
        path = write_windows(args.src, args.out, args.window, args.stride)
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {len(open_store(path))} windows to {path}")


if __name__ == "__main__":
    main()
