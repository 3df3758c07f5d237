"""Datasets over a dataset directory (``feeders.store``) and a deterministic loader.

- ``PretrainDataset``: ``(views (K, C, L, V, M) float32, index)``; every view is its own random
  temporal crop of the sequence, resampled to ``L`` frames (``feeders.augment``). The draws of
  view ``k`` of store sequence ``s`` at epoch ``e`` come from
  ``np.random.default_rng([seed, e, s, k])``: they depend neither on the worker that loads the
  item nor on the batch it lands in, and a run resumed at epoch ``e`` replays the same clips.
- ``EvalDataset``: ``(clip (C, L, V, M) float32, label, index)``; the whole sequence resampled
  to ``L`` frames, no randomness.

``index`` is the position of the item in the split (``indices[i]`` when a subset of the split
is given), so features and predictions can be mapped back to ``split_indices(split)``.

Normalisation (``normalize='first_frame'``, the default): the layout's ``center`` joint of
body 1 at the first frame where body 1 is present (any non-zero coordinate) is subtracted from
the coordinates of every joint of every body in every frame where that body is present; a
body that is absent in a frame (all zeros) stays zero. Only the spatial channels change (the
first ``spatial_channels``, default ``min(C, layout.dims)``; a confidence channel is kept). It is applied
to the whole sequence before cropping, so all views of a sequence share one origin.
``normalize='view'`` (3D layouts) then also turns every sequence about the vertical (y) axis
so that body 1 faces the camera at that first frame: the horizontal part of its left-minus-right
direction (left hip - right hip + left shoulder - right shoulder) points along +x. It removes
the camera's azimuth, which is what changes between the views of a cross-view benchmark.
``normalize='none'`` leaves the coordinates as stored.

Sequences are read with ``os.pread`` from ``frames.npy`` instead of through the store's
memmap: every page a memmap touches stays in the process's resident set until the kernel
needs it back, so one epoch over NTU-120 (several GB of frames) would grow each worker to
gigabytes; a plain read keeps a worker at one sequence of buffers (the data still sits in the
shared page cache).
"""

import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from feeders.augment import (CLIP_FRACTION, crop_windows, resize_clips, resize_whole,
                             temporal_crop_resize)
from feeders.store import FRAMES_FILE, Store, StoreError, open_store
from feeders.streams import resolve_spatial_channels

NORMALIZATIONS = ("first_frame", "view", "none")
VIEW_JOINTS = ("left_hip", "right_hip", "left_shoulder", "right_shoulder")


def normalize_first_frame(seq: np.ndarray, center: int, spatial_channels: int) -> np.ndarray:
    """Subtract body 1's ``center`` joint at its first present frame, in place. ``(T, M, V, C)``.

    Bodies absent in a frame (all spatial values zero) stay zero. A sequence in which body 1
    never appears is returned unchanged.
    """
    coords = seq[..., :spatial_channels]  # a view: (T, M, V, S)
    present = (coords != 0).any(axis=(2, 3))  # (T, M)
    first = np.flatnonzero(present[:, 0])
    if first.size == 0:
        return seq
    origin = coords[first[0], 0, center].copy()  # (S,)
    coords -= origin * present[:, :, None, None]
    return seq


def normalize_view(seq: np.ndarray, center: int, joints: tuple[int, int, int, int]) -> np.ndarray:
    """``normalize_first_frame``, then a rotation about the y axis, in place. ``(T, M, V, C)``, C >= 3.

    ``joints``: indices of the left hip, right hip, left shoulder and right shoulder. With
    ``d = (x[lh] - x[rh]) + (x[ls] - x[rs])`` of body 1 at its first present frame, the angle
    ``a = atan2(d_z, d_x)`` is turned away: ``x' = cos(a) x + sin(a) z``, ``z' = -sin(a) x +
    cos(a) z`` for every joint, body and frame, so that ``d`` points along +x. Absent bodies stay
    zero; a sequence without body 1, or whose ``d`` has no horizontal part, is only centred.
    """
    normalize_first_frame(seq, center, 3)
    coords = seq[..., :3]
    present = np.flatnonzero((coords[:, 0] != 0).any(axis=(1, 2)))
    if present.size == 0:
        return seq
    lh, rh, ls, rs = (coords[present[0], 0, j] for j in joints)
    d = (lh - rh) + (ls - rs)
    norm = float(np.hypot(d[0], d[2]))
    if norm < 1e-6:
        return seq
    cos, sin = d[0] / norm, d[2] / norm
    x, z = coords[..., 0].copy(), coords[..., 2].copy()
    coords[..., 0] = cos * x + sin * z
    coords[..., 2] = -sin * x + cos * z
    return seq


def _data_offset(path: Path, shape: tuple, dtype: np.dtype) -> int:
    """Byte offset of the array data in the ``.npy`` file ``path`` (checked against ``shape``)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            file_shape, _, file_dtype = np.lib.format.read_array_header_1_0(f)
        else:
            file_shape, _, file_dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if tuple(file_shape) != tuple(shape) or np.dtype(file_dtype) != dtype:
        raise StoreError(f"{path}: header says {file_dtype} {tuple(file_shape)}, the store "
                         f"expected {dtype} {tuple(shape)} (changed while open?)")
    return offset


class _SequenceDataset(Dataset):
    """Shared part: the store, the item list, reading and normalising one sequence."""

    def __init__(self, store, split: str | None, clip_len: int, normalize: str,
                 indices=None, spatial_channels: int | None = None):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        self._store = store if isinstance(store, Store) else open_store(store)
        self.root = Path(self._store.root)
        self.split = split
        self.clip_len = int(clip_len)
        self.normalize = normalize
        self.spatial_channels = resolve_spatial_channels(self._store.channels, spatial_channels,
                                                         self._store.layout.dims)
        layout = self._store.layout
        if normalize == "view":
            missing = [name for name in VIEW_JOINTS if name not in layout.joints]
            if layout.dims != 3 or self.spatial_channels < 3 or missing:
                raise ValueError(
                    f"{self.root}: normalize='view' turns 3D skeletons about the vertical axis and "
                    f"needs x, y, z and the joints {', '.join(VIEW_JOINTS)}; layout {layout.name} "
                    f"has {layout.dims}D coordinates ({self.spatial_channels} spatial channels used)"
                    + (f" and lacks {', '.join(missing)}" if missing else "")
                    + ": use 'first_frame'")
            self._view_joints = tuple(layout.joints.index(name) for name in VIEW_JOINTS)
        split_seqs = (np.arange(len(self._store), dtype=np.int64) if split is None
                      else self._store.split_indices(split))
        if indices is None:
            self.positions = np.arange(len(split_seqs), dtype=np.int64)
        else:
            self.positions = np.asarray(indices, dtype=np.int64).reshape(-1)
            bad = self.positions[(self.positions < 0) | (self.positions >= len(split_seqs))]
            if bad.size:
                raise ValueError(f"indices {bad[:5].tolist()} outside split {split!r} of "
                                 f"{len(split_seqs)} sequences ({self.root})")
        self.sequence_indices = split_seqs[self.positions]  # store index of each item
        self._file = None
        self._data_offset = 0

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def store(self) -> Store:
        if self._store is None:  # after unpickling in a worker process
            self._store = open_store(self.root)
        return self._store

    @property
    def labels(self) -> np.ndarray:
        """Labels of the items, ``(len(self),)`` int64."""
        return self.store.labels[self.sequence_indices]

    def __getstate__(self):
        # The store holds a memmap, and pickling a memmap copies all of its data: send only
        # the path and let the receiving process reopen it.
        state = self.__dict__.copy()
        state["_store"] = None
        state["_file"] = None
        return state

    def read_sequence(self, seq_index: int) -> np.ndarray:
        """Store sequence ``seq_index`` as a new float32 array ``(T, M, V, C)``, normalised."""
        store = self.store
        if self._file is None:
            path = self.root / FRAMES_FILE
            self._data_offset = _data_offset(path, store.frames.shape, store.frames.dtype)
            self._file = open(path, "rb")
        frame_shape = store.frames.shape[1:]
        frame_bytes = int(np.prod(frame_shape)) * store.frames.dtype.itemsize
        length = int(store.lengths[seq_index])
        start = self._data_offset + int(store.offsets[seq_index]) * frame_bytes
        buf = os.pread(self._file.fileno(), length * frame_bytes, start)
        if len(buf) != length * frame_bytes:
            raise StoreError(f"{self.root / FRAMES_FILE}: sequence {seq_index} is truncated "
                             f"({len(buf)} of {length * frame_bytes} bytes)")
        seq = np.frombuffer(buf, dtype=store.frames.dtype).reshape(length, *frame_shape)
        seq = seq.astype(np.float32)  # a writable copy
        if self.normalize == "first_frame":
            normalize_first_frame(seq, store.layout.center, self.spatial_channels)
        elif self.normalize == "view":
            normalize_view(seq, store.layout.center, self._view_joints)
        return seq


class PretrainDataset(_SequenceDataset):
    """Items ``(views (K, C, L, V, M) float32 tensor, index)`` for self-supervised pretraining.

    ``store``: a ``Store`` or a dataset directory; ``split``: a split name (None: all
    sequences); ``clip_len``: L; ``seed``: the run seed (>= 0); ``num_views``: K;
    ``indices``: optional positions within the split (a subset); ``min_crop``: the shortest
    temporal crop in frames (None: L, see ``temporal_crop_resize``). Call ``set_epoch`` before
    building each epoch's loader (``make_loader`` does).
    """

    def __init__(self, store, split: str | None, clip_len: int, seed: int, num_views: int = 4,
                 normalize: str = "first_frame", indices=None,
                 spatial_channels: int | None = None, min_crop: int | None = None):
        super().__init__(store, split, clip_len, normalize, indices, spatial_channels)
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (it seeds numpy SeedSequence), got {seed}")
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if min_crop is not None and min_crop < 1:
            raise ValueError(f"min_crop must be >= 1 frame, got {min_crop}")
        self.min_crop = None if min_crop is None else int(min_crop)
        self.seed = int(seed)
        self.num_views = int(num_views)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __getitem__(self, i: int):
        seq_index = int(self.sequence_indices[i])
        seq = self.read_sequence(seq_index)
        views = [temporal_crop_resize(seq, self.clip_len,
                                      np.random.default_rng([self.seed, self.epoch, seq_index, k]),
                                      min_crop=self.min_crop)
                 for k in range(self.num_views)]
        return torch.from_numpy(np.stack(views)), int(self.positions[i])


class EvalDataset(_SequenceDataset):
    """Items ``(clip (C, L, V, M) float32 tensor, label, index)``: whole sequences, no randomness.

    Arguments as ``PretrainDataset`` (without seed and views). ``num_clips`` K > 1 (multi-clip
    testing): the clip is ``(K, C, L, V, M)``, K evenly spaced windows of ``clip_fraction`` of
    the sequence (``feeders.augment.crop_windows``), each resampled to L.
    """

    def __init__(self, store, split: str | None, clip_len: int, normalize: str = "first_frame",
                 indices=None, spatial_channels: int | None = None, num_clips: int = 1,
                 clip_fraction: float = CLIP_FRACTION):
        super().__init__(store, split, clip_len, normalize, indices, spatial_channels)
        crop_windows(1, num_clips, clip_fraction)  # validate now
        self.num_clips, self.clip_fraction = int(num_clips), float(clip_fraction)

    def __getitem__(self, i: int):
        seq_index = int(self.sequence_indices[i])
        seq = self.read_sequence(seq_index)
        clip = (resize_whole(seq, self.clip_len) if self.num_clips == 1 else
                resize_clips(seq, self.clip_len, self.num_clips, self.clip_fraction))
        return torch.from_numpy(clip), int(self.store.labels[seq_index]), int(self.positions[i])


def worker_init_fn(worker_id: int) -> None:
    """Open the worker's copy of the dataset before its first item.

    It seeds nothing: every random draw of the datasets comes from a generator built from
    (seed, epoch, sequence, view), so global RNG state in workers is never used.
    """
    dataset = get_worker_info().dataset
    if isinstance(dataset, _SequenceDataset):
        _ = dataset.store  # reopens the store when the dataset arrived pickled


def make_sampler(dataset, shuffle: bool, seed: int, epoch: int, drop_last: bool,
                 num_replicas: int = 1, rank: int = 0) -> DistributedSampler:
    """A ``DistributedSampler``: a permutation seeded by (seed, epoch), one shard per rank.

    With ``drop_last=False`` the shards are padded by repeating items so all ranks get
    ``ceil(N / num_replicas)`` items (the DistributedSampler convention).
    """
    sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                 seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    return sampler


def loader_options(workers: int, device: torch.device | str) -> dict:
    """DataLoader keyword arguments for ``workers`` worker processes feeding ``device``:
    pinned memory for CUDA, ``worker_init_fn``, and on the CPU workers started by a forkserver
    rather than forked from the training process. A forked worker shares the trainer's heap
    copy-on-write, so while it lives every heap page a training step writes is first copied
    by the kernel: a CPU pretraining with one forked worker spent 39 of its 98 s in the
    kernel, against 2.5 s with a forkserver's (`python benchmarks/loader_workers.py`,
    docs/experiments.md). On CUDA the trainer's activations are not on its heap: fork is kept.
    """
    device = torch.device(device)
    options = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options["worker_init_fn"] = worker_init_fn
        if device.type == "cpu" and "forkserver" in multiprocessing.get_all_start_methods():
            options["multiprocessing_context"] = "forkserver"
    return options


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int, epoch: int = 0,
                workers: int = 0, drop_last: bool = False, distributed: bool = False,
                device: torch.device | str = "cpu") -> DataLoader:
    """A DataLoader for one epoch whose items do not depend on the number of workers.

    ``batch_size`` is per process. ``distributed=True`` shards by the initialised
    ``torch.distributed`` rank and world size. The dataset's epoch is set too (workers are
    not persistent, so each epoch's workers see it). ``device`` is the one the batches feed
    (``loader_options``). The loader gets its own seeded ``torch.Generator``, so building it
    consumes no global RNG state.
    """
    if distributed:
        if not torch.distributed.is_initialized():
            raise ValueError("make_loader(distributed=True) needs an initialised torch.distributed")
        replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    else:
        replicas, rank = 1, 0
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = make_sampler(dataset, shuffle, seed, epoch, drop_last, replicas, rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed),
                      **loader_options(workers, device))
