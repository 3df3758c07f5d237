"""Input streams (modalities) computed from a joint clip (docs/METHOD.md section 1).

All functions take and return a batch ``x`` of shape ``(N, C, T, V, M)``:
N clips, C channels, T frames, V joints, M bodies.

Streams:

- ``j``  joints: the coordinates themselves (identity).
- ``m``  motion: ``x[t+1] - x[t]``; the last frame is zero.
- ``b``  bones: ``x[v] - x[parent(v)]``; a root (its own parent) has a zero bone.
- ``jm`` joint motion: the same as ``m`` (pyskl's name, kept for its 4-stream fusion).
- ``bm`` bone motion: the motion of the bone stream.

Channels: only the first ``spatial_channels`` channels are coordinates and get
differenced. Any further channel (the detector confidence of 2D+score data, e.g. Kinetics
OpenPose ``(x, y, score)``) is passed through unchanged in every stream: a bone keeps the
score of its child joint and a motion keeps the score of its frame ``t``. The score then
still tells the model how reliable the joint is, and its scale stays in [0, 1].
``spatial_channels=None`` means ``min(C, 3)``; the datasets resolve it from the layout's
``dims`` (2 for pose-estimator layouts), and callers pass ``dataset.spatial_channels`` on.
"""

from typing import Sequence

import torch

STREAMS = ("j", "m", "b", "jm", "bm")


def resolve_spatial_channels(channels: int, spatial_channels: int | None, dims: int = 3) -> int:
    """Number of coordinate channels: ``spatial_channels`` or, if None, ``min(channels, dims)``
    (``dims``: the layout's coordinate dimensions)."""
    if spatial_channels is None:
        return min(channels, dims)
    if not 1 <= spatial_channels <= channels:
        raise ValueError(
            f"spatial_channels must be between 1 and the {channels} channels of the input, "
            f"got {spatial_channels}"
        )
    return spatial_channels


def motion(x: torch.Tensor, spatial_channels: int | None = None) -> torch.Tensor:
    """Temporal difference ``x[:, :, t+1] - x[:, :, t]``, last frame zero. ``(N, C, T, V, M)``."""
    s = resolve_spatial_channels(x.shape[1], spatial_channels)
    out = x.clone()
    out[:, :s, :-1] = x[:, :s, 1:] - x[:, :s, :-1]
    out[:, :s, -1] = 0
    return out


def bones(x: torch.Tensor, parents: Sequence[int], spatial_channels: int | None = None) -> torch.Tensor:
    """Bone vectors ``x[..., v, :] - x[..., parents[v], :]``. ``(N, C, T, V, M)``.

    ``parents`` holds one 0-based parent index per joint; a root is its own parent.
    """
    num_joints = x.shape[3]
    if len(parents) != num_joints:
        raise ValueError(f"parents has {len(parents)} entries but the input has {num_joints} joints (dim 3)")
    if any(not 0 <= p < num_joints for p in parents):
        raise ValueError(f"parents must be 0-based joint indices in [0, {num_joints}), got {list(parents)}")
    s = resolve_spatial_channels(x.shape[1], spatial_channels)
    parent_index = torch.as_tensor(list(parents), dtype=torch.long, device=x.device)
    out = x.clone()
    coords = x[:, :s]
    out[:, :s] = coords - coords.index_select(3, parent_index)
    return out


def to_stream(
    x: torch.Tensor, stream: str, parents: Sequence[int], spatial_channels: int | None = None
) -> torch.Tensor:
    """Convert a joint clip ``(N, C, T, V, M)`` to ``stream`` (one of ``STREAMS``); same shape."""
    if x.dim() != 5:
        raise ValueError(f"to_stream expects x of shape (N, C, T, V, M), got shape {tuple(x.shape)}")
    if stream == "j":
        return x
    if stream in ("m", "jm"):
        return motion(x, spatial_channels)
    if stream == "b":
        return bones(x, parents, spatial_channels)
    if stream == "bm":
        return motion(bones(x, parents, spatial_channels), spatial_channels)
    raise ValueError(f"unknown stream {stream!r}; valid streams are {', '.join(STREAMS)}")
