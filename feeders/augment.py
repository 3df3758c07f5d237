"""Pretraining augmentations (docs/METHOD.md section 1).

Two parts:

- numpy, per sample, in the dataset: ``temporal_crop_resize`` (random crop of the valid
  frames, resampled to the clip length) and ``resize_whole`` (evaluation: all valid frames
  resampled, no randomness). Both turn a stored sequence ``(T, M, V, C)`` into a clip
  ``(C, L, V, M)``.
- torch, batched, on the training device: ``augment_views`` applies the spatial
  augmentations to every view of a batch ``(B, K, C, L, V, M)`` in one go.

Temporal resampling is linear interpolation in time with the sampling grid of
``torch.nn.functional.interpolate(..., align_corners=False)`` (the grid of the public
releases): output frame ``i`` of ``L`` sits at input position ``(i + 0.5) * n / L - 0.5``,
clamped to ``[0, n - 1]``. A 1-frame input is therefore repeated ``L`` times.

Spatial augmentations, our reading of docs/METHOD.md section 1, drawn independently per view:

- with probability 1/2: shear. All coordinates of the view are multiplied by an ``S x S``
  matrix with unit diagonal and off-diagonal entries ~ U(-1, 1) (``S`` = 3 for xyz, 2 for 2D).
- otherwise (the other 1/2), one of two joint-level corruptions with probability 1/2 each
  (so 1/4 overall each): a random set of ``round(0.6 * V)`` joints (15 of 25 for NTU) is
  chosen, the same joints in all frames and all bodies, and
  (a) masking: their coordinates are set to zero, or
  (b) random linear map: their coordinates are multiplied by an ``S x S`` matrix with all
  entries ~ U(-1, 1). The other joints are left exactly as they were.

Every view gets exactly one of the three transforms. Coordinates are treated as column vectors:
``x_new = A @ x`` for each joint, frame and body. Channels past the first ``S`` (a confidence
score) are never changed.
"""

from typing import NamedTuple, Sequence

import numpy as np
import torch

from feeders.streams import resolve_spatial_channels

SHEAR, MASK, LINEAR = 0, 1, 2
BRANCH_NAMES = ("shear", "mask", "linear")
MASKED_FRACTION = 0.6


# ----------------------------------------------------------------------------- temporal (numpy)


def _check_sequence(seq: np.ndarray, clip_len: int) -> None:
    if seq.ndim != 4:
        raise ValueError(f"expected a sequence of shape (T, M, V, C), got shape {seq.shape}")
    if seq.shape[0] < 1:
        raise ValueError("cannot resample an empty sequence (T = 0 frames)")
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")


def resample_frames(seq: np.ndarray, clip_len: int) -> np.ndarray:
    """Linear interpolation of ``seq (T, M, V, C)`` to ``clip_len`` frames -> ``(C, L, V, M)`` float32."""
    _check_sequence(seq, clip_len)
    n = seq.shape[0]
    pos = (np.arange(clip_len) + 0.5) * (n / clip_len) - 0.5
    pos = np.clip(pos, 0.0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(np.float32)[:, None, None, None]
    out = seq[lo].astype(np.float32) * (1.0 - w) + seq[hi].astype(np.float32) * w  # (L, M, V, C)
    return np.ascontiguousarray(out.transpose(3, 0, 2, 1))


def temporal_crop_resize(
    seq: np.ndarray, clip_len: int, rng: np.random.Generator, min_ratio: float = 0.1,
    min_crop: int | None = None,
) -> np.ndarray:
    """Random crop-and-resize of ``seq (T, M, V, C)`` -> ``(C, L, V, M)`` float32.

    ``s ~ U(min_ratio, 1)``; crop length ``min(max(floor(T * s), min_crop), T)`` with
    ``min_crop`` = ``L`` by default (docs/METHOD.md: a crop is never shorter than the clip, so a
    sequence of at most ``L`` frames is never cropped); start uniform over the valid positions;
    the crop is resampled to ``L = clip_len`` frames.
    """
    _check_sequence(seq, clip_len)
    if not 0.0 < min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in (0, 1], got {min_ratio}")
    min_crop = clip_len if min_crop is None else min_crop
    if min_crop < 1:
        raise ValueError(f"min_crop must be >= 1 frame, got {min_crop}")
    n = seq.shape[0]
    ratio = rng.uniform(min_ratio, 1.0)
    crop = min(max(int(np.floor(n * ratio)), min_crop), n)
    start = int(rng.integers(0, n - crop + 1))
    return resample_frames(seq[start:start + crop], clip_len)


def resize_whole(seq: np.ndarray, clip_len: int) -> np.ndarray:
    """All frames of ``seq (T, M, V, C)`` resampled to ``clip_len`` -> ``(C, L, V, M)`` float32."""
    return resample_frames(seq, clip_len)


CLIP_FRACTION = 0.8  # multi-clip testing: each crop covers this fraction of the sequence


def crop_windows(length: int, num_clips: int, fraction: float = CLIP_FRACTION
                 ) -> list[tuple[int, int]]:
    """Multi-clip testing: ``num_clips`` deterministic windows ``(start, stop)`` of a sequence of
    ``length`` frames, each ``max(1, round(fraction * length))`` frames long, starts evenly
    spaced from 0 to ``length - window`` (rounded). One clip: the whole sequence."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"clip fraction must be in (0, 1], got {fraction}")
    if num_clips == 1:
        return [(0, length)]
    window = min(length, max(1, int(round(fraction * length))))
    starts = np.round(np.linspace(0, length - window, num_clips)).astype(np.int64)
    return [(int(s), int(s) + window) for s in starts]


def resize_clips(seq: np.ndarray, clip_len: int, num_clips: int,
                 fraction: float = CLIP_FRACTION) -> np.ndarray:
    """``crop_windows`` of ``seq (T, M, V, C)``, each resampled -> ``(K, C, L, V, M)`` float32."""
    _check_sequence(seq, clip_len)
    return np.stack([resample_frames(seq[a:b], clip_len)
                     for a, b in crop_windows(seq.shape[0], num_clips, fraction)])


# ----------------------------------------------------------------------------- spatial (torch)


class ViewTransforms(NamedTuple):
    """Per-view augmentation draws for ``n`` views of ``V`` joints and ``S`` coordinates.

    branch: ``(n,)`` int64, one of SHEAR, MASK, LINEAR.
    matrices: ``(n, V, S, S)``, the matrix applied to each joint of each view (identity for
    joints left alone, zero for masked joints).
    """

    branch: torch.Tensor
    matrices: torch.Tensor


def draw_view_transforms(
    num_views: int, num_joints: int, spatial_channels: int, generator: torch.Generator
) -> ViewTransforms:
    """Draw the transforms of ``num_views`` views on the CPU from ``generator``.

    The same draws are made whatever branch a view takes, so the generator advances by a fixed
    amount per call.
    """
    if generator.device.type != "cpu":
        raise ValueError(f"augment: the generator must be a CPU torch.Generator (draws are made on "
                         f"the CPU so every device gets the same numbers), got {generator.device}")
    n, v, s = num_views, num_joints, spatial_channels
    branch_u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    shear_off = torch.rand(n, s, s, generator=generator, dtype=torch.float64) * 2 - 1
    linear = torch.rand(n, s, s, generator=generator, dtype=torch.float64) * 2 - 1
    joint_keys = torch.rand(n, v, generator=generator, dtype=torch.float64)

    eye = torch.eye(s, dtype=torch.float64)
    shear = eye + shear_off * (1 - eye)
    num_chosen = int(round(MASKED_FRACTION * v))
    chosen = torch.zeros(n, v, dtype=torch.bool)
    chosen.scatter_(1, joint_keys.argsort(dim=1)[:, :num_chosen], True)

    is_shear = branch_u[:, 0] < 0.5
    is_mask = ~is_shear & (branch_u[:, 1] < 0.5)
    branch = torch.full((n,), LINEAR, dtype=torch.long)
    branch[is_mask] = MASK
    branch[is_shear] = SHEAR

    corrupt = torch.where(is_mask[:, None, None], torch.zeros_like(linear), linear)  # (n, S, S)
    per_joint = torch.where(chosen[:, :, None, None], corrupt[:, None], eye)  # (n, V, S, S)
    matrices = torch.where(is_shear[:, None, None, None], shear[:, None], per_joint)
    return ViewTransforms(branch, matrices)


def apply_view_transforms(x: torch.Tensor, matrices: torch.Tensor, spatial_channels: int) -> torch.Tensor:
    """Apply per-view, per-joint matrices ``(n, V, S, S)`` to ``x (n, C, L, V, M)``."""
    s = spatial_channels
    mats = matrices.to(device=x.device, dtype=x.dtype)
    coords = torch.einsum("nvij,njlvm->nilvm", mats, x[:, :s])
    return torch.cat([coords, x[:, s:]], dim=1)


def random_shear(x: torch.Tensor, amplitude: float, generator: torch.Generator,
                 spatial_channels: int | None = None) -> torch.Tensor:
    """Fine-tuning augmentation: each sample's coordinates times its own ``I + A``, ``A``'s
    off-diagonal entries ~ U(-amplitude, amplitude) (zero diagonal), as in AimCLR's shear.

    ``x``: ``(B, C, L, V, M)``; same shape, dtype and device. Draws: ``B`` matrices on the CPU
    from ``generator``. Channels past ``spatial_channels`` (a score) are left alone.
    """
    if x.dim() != 5:
        raise ValueError(f"random_shear expects x of shape (B, C, L, V, M), got shape {tuple(x.shape)}")
    b, c, _, v, _ = x.shape
    s = resolve_spatial_channels(c, spatial_channels)
    off = (torch.rand(b, s, s, generator=generator, dtype=torch.float64) * 2 - 1) * amplitude
    eye = torch.eye(s, dtype=torch.float64)
    shear = eye + off * (1 - eye)  # (B, S, S)
    return apply_view_transforms(x, shear[:, None].expand(b, v, s, s), s)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``angles (B, 3)`` in radians about x, y, z -> ``Rz @ Ry @ Rx`` of shape ``(B, 3, 3)``.

    Right-handed rotations of column vectors: ``Rx`` turns y towards z, ``Ry`` z towards x,
    ``Rz`` x towards y.
    """
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def stack(rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = stack([(one, zero, zero), (zero, c[:, 0], -s[:, 0]), (zero, s[:, 0], c[:, 0])])
    ry = stack([(c[:, 1], zero, s[:, 1]), (zero, one, zero), (-s[:, 1], zero, c[:, 1])])
    rz = stack([(c[:, 2], -s[:, 2], zero), (s[:, 2], c[:, 2], zero), (zero, zero, one)])
    return rz @ ry @ rx


ROTATION_AXES = "xyz"


def random_rotation(x: torch.Tensor, max_degrees: float, generator: torch.Generator,
                    spatial_channels: int | None = None, axes: str = ROTATION_AXES) -> torch.Tensor:
    """Fine-tuning augmentation: each sample's coordinates turned by its own random rotation.

    3D: angles about x, y and z each ~ U(-max_degrees, max_degrees), the matrix
    ``Rz @ Ry @ Rx`` (``rotation_matrices``), as pyskl's ``RandomRot``; ``axes`` (a subset of
    "xyz", e.g. "y": about the vertical axis only) keeps those angles and sets the others to 0;
    2D: one in-plane angle (the z one, whatever ``axes``).
    ``x``: ``(B, C, L, V, M)``; same shape, dtype and device. Draws: ``B x 3`` angles on the CPU
    from ``generator`` (also for 2D and fewer axes, so the generator advances alike). Channels
    past ``spatial_channels`` (a score) are left alone.
    """
    if x.dim() != 5:
        raise ValueError(f"random_rotation expects x of shape (B, C, L, V, M), got shape {tuple(x.shape)}")
    if not axes or set(axes) - set(ROTATION_AXES) or len(set(axes)) != len(axes):
        raise ValueError(f"rotation axes must be distinct letters of {ROTATION_AXES!r}, got {axes!r}")
    b, c, _, v, _ = x.shape
    s = resolve_spatial_channels(c, spatial_channels)
    angles = (torch.rand(b, 3, generator=generator, dtype=torch.float64) * 2 - 1) \
        * (max_degrees * torch.pi / 180.0)
    if s == 3:
        angles = angles * torch.tensor([float(a in axes) for a in ROTATION_AXES],
                                       dtype=torch.float64)
        mats = rotation_matrices(angles)
    else:  # 2D: rotate the image plane by the z angle
        mats = rotation_matrices(angles * torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))[:, :2, :2]
    return apply_view_transforms(x, mats[:, None].expand(b, v, s, s), s)


def mirror_clips(x: torch.Tensor, mirror: Sequence[int]) -> torch.Tensor:
    """Every clip of ``x (B, C, L, V, M)`` mirrored left-right: x negated, joint v taking the
    values of ``mirror[v]`` (a copy)."""
    mirrored = x[:, :, :, list(mirror)]  # advanced indexing: a copy
    mirrored[:, 0] = -mirrored[:, 0]
    return mirrored


def random_flip(x: torch.Tensor, probability: float, generator: torch.Generator,
                mirror: Sequence[int]) -> torch.Tensor:
    """Fine-tuning augmentation: with ``probability`` per sample, mirror the clip left-right:
    x coordinates negated and each joint swapped with its ``mirror`` counterpart (the layout's
    left/right pairs), so a right-handed action becomes a left-handed one.

    ``x``: ``(B, C, L, V, M)``; same shape, dtype and device. Draws: ``B`` uniforms on the CPU
    from ``generator``. Only channel 0 (x) changes sign; y, z and a score channel keep theirs.
    """
    if x.dim() != 5 or x.shape[3] != len(mirror):
        raise ValueError(f"random_flip expects x of shape (B, C, L, V, M) with V = "
                         f"{len(mirror)} (the mirror map), got shape {tuple(x.shape)}")
    flip = (torch.rand(x.shape[0], generator=generator, dtype=torch.float64) < probability)
    flip = flip.to(x.device)
    return torch.where(flip[:, None, None, None, None], mirror_clips(x, mirror), x)


# The ST-GCN study's augmentation (METHOD.md section 9; its ranges are not published, ours:)
STUDY_OPS = ("flip", "rotate", "translate", "scale")
STUDY_PROBABILITY = 0.5   # a clip is augmented at all with this probability
STUDY_ROTATE_DEGREES = 15.0  # angles about x, y, z ~ U(-15, 15) (2D: in-plane)
STUDY_TRANSLATE = 0.1     # offset per coordinate ~ U(-0.1, 0.1) (metres for Kinect data)
STUDY_SCALE = 0.1         # one factor ~ U(0.9, 1.1) for every coordinate


class StudyDraws(NamedTuple):
    """Per-clip draws of ``study_augment`` for ``B`` clips and ``S`` coordinates.

    ops: ``(B, 4)`` bool, which of STUDY_OPS the clip gets (none, or exactly two);
    angles: ``(B, 3)`` radians; offsets: ``(B, S)``; scales: ``(B,)``.
    """

    ops: torch.Tensor
    angles: torch.Tensor
    offsets: torch.Tensor
    scales: torch.Tensor


def draw_study(batch: int, spatial_channels: int, generator: torch.Generator) -> StudyDraws:
    """The draws of ``study_augment``, in this order from ``generator`` (CPU, float64): whether
    to augment ``(B,)``, four keys ``(B, 4)`` whose two smallest pick the ops, angles ``(B, 3)``,
    offsets ``(B, S)``, scales ``(B,)``; the same amount whatever is picked."""
    apply = torch.rand(batch, generator=generator, dtype=torch.float64) < STUDY_PROBABILITY
    keys = torch.rand(batch, len(STUDY_OPS), generator=generator, dtype=torch.float64)
    angles = (torch.rand(batch, 3, generator=generator, dtype=torch.float64) * 2 - 1) \
        * (STUDY_ROTATE_DEGREES * torch.pi / 180.0)
    offsets = (torch.rand(batch, spatial_channels, generator=generator, dtype=torch.float64)
               * 2 - 1) * STUDY_TRANSLATE
    scales = 1.0 + (torch.rand(batch, generator=generator, dtype=torch.float64) * 2 - 1) \
        * STUDY_SCALE
    two = torch.zeros(batch, len(STUDY_OPS), dtype=torch.bool)
    two.scatter_(1, keys.argsort(dim=1)[:, :2], True)
    return StudyDraws(two & apply[:, None], angles, offsets, scales)


def study_augment(x: torch.Tensor, generator: torch.Generator, mirror: Sequence[int],
                  spatial_channels: int | None = None) -> torch.Tensor:
    """The ST-GCN study's augmentation: with probability 1/2 a clip gets two of horizontal flip,
    rotation, translation and scaling (chosen uniformly among the 6 pairs), applied in the order
    of STUDY_OPS; otherwise it is left alone. Ranges: STUDY_ROTATE_DEGREES, STUDY_TRANSLATE,
    STUDY_SCALE. Absent joints (all coordinates zero: a missing body) stay zero.

    ``x``: ``(B, C, L, V, M)``; same shape, dtype and device. Draws: ``draw_study`` on the CPU
    from ``generator``. Channels past ``spatial_channels`` (a score) are left alone.
    """
    if x.dim() != 5 or x.shape[3] != len(mirror):
        raise ValueError(f"study_augment expects x of shape (B, C, L, V, M) with V = "
                         f"{len(mirror)} (the mirror map), got shape {tuple(x.shape)}")
    b, c, _, v, _ = x.shape
    s = resolve_spatial_channels(c, spatial_channels)
    d = draw_study(b, s, generator)
    ops = d.ops.to(x.device)[:, :, None, None, None, None]  # (B, 4, 1, 1, 1, 1)
    x = torch.where(ops[:, 0], mirror_clips(x, mirror), x)
    if s == 3:
        mats = rotation_matrices(d.angles)
    else:
        in_plane = d.angles * torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        mats = rotation_matrices(in_plane)[:, :2, :2]
    x = torch.where(ops[:, 1], apply_view_transforms(x, mats[:, None].expand(b, v, s, s), s), x)
    present = (x[:, :s] != 0).any(dim=1, keepdim=True)     # (B, 1, L, V, M), after the flip
    shift = d.offsets.to(x.device, x.dtype)[:, :, None, None, None] * present
    moved = torch.cat([x[:, :s] + shift, x[:, s:]], dim=1)
    x = torch.where(ops[:, 2], moved, x)
    scaled = torch.cat([x[:, :s] * d.scales.to(x.device, x.dtype)[:, None, None, None, None],
                        x[:, s:]], dim=1)
    return torch.where(ops[:, 3], scaled, x)


def augment_views(
    x: torch.Tensor, generator: torch.Generator, spatial_channels: int | None = None
) -> torch.Tensor:
    """Augment every view of ``x (B, K, C, L, V, M)`` independently; same shape, dtype, device.

    ``generator``: a CPU ``torch.Generator`` (seed it from run seed, epoch, step and rank).
    ``spatial_channels``: number of coordinate channels (default ``min(C, 3)``; pass 2 for
    2D+score data). See the module docstring for the transforms and their probabilities.
    """
    if not isinstance(spatial_channels, (int, type(None))):
        raise TypeError(f"spatial_channels must be an int or None, got {type(spatial_channels).__name__}")
    if x.dim() != 6:
        raise ValueError(f"augment_views expects x of shape (B, K, C, L, V, M), got shape {tuple(x.shape)}")
    b, k, c, length, v, m = x.shape
    s = resolve_spatial_channels(c, spatial_channels)
    draws = draw_view_transforms(b * k, v, s, generator)
    flat = x.reshape(b * k, c, length, v, m)
    return apply_view_transforms(flat, draws.matrices, s).reshape(x.shape)
