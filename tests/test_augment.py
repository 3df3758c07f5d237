import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feeders.augment import (
    LINEAR,
    MASK,
    SHEAR,
    apply_view_transforms,
    augment_views,
    draw_view_transforms,
    random_flip,
    random_rotation,
    random_shear,
    rotation_matrices,
    resample_frames,
    resize_whole,
    temporal_crop_resize,
)


def ramp_sequence(n, m=2, v=3, c=3):
    """(T, M, V, C) whose value is the frame index plus a per-(m, v, c) offset."""
    t = np.arange(n, dtype=np.float32)[:, None, None, None]
    offset = np.arange(m * v * c, dtype=np.float32).reshape(1, m, v, c) * 1000
    return t + offset


# ----------------------------------------------------------------------------- temporal


def test_resample_hand_values_down_and_up():
    seq = ramp_sequence(4, m=1, v=1, c=1)
    assert np.allclose(resample_frames(seq, 2)[0, :, 0, 0], [0.5, 2.5])
    up = resample_frames(seq, 8)[0, :, 0, 0]
    assert np.allclose(up, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


def test_resample_matches_torch_interpolate_and_layout():
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(37, 2, 5, 3)).astype(np.float32)  # (T, M, V, C)
    for length in (16, 37, 64):
        out = resample_frames(seq, length)
        assert out.shape == (3, length, 5, 2) and out.dtype == np.float32
        flat = torch.from_numpy(seq).permute(1, 2, 3, 0).reshape(1, -1, 37)  # (1, MVC, T)
        ref = F.interpolate(flat, size=length, mode="linear", align_corners=False)
        ref = ref.reshape(2, 5, 3, length).permute(2, 3, 1, 0).numpy()  # (C, L, V, M)
        assert np.allclose(out, ref, atol=1e-5)


def test_resize_whole_identity_and_axes():
    seq = ramp_sequence(5)
    out = resize_whole(seq, 5)
    assert np.array_equal(out, seq.transpose(3, 0, 2, 1))


def test_one_frame_sequence_is_repeated():
    seq = ramp_sequence(1)
    out = resize_whole(seq, 6)
    assert out.shape == (3, 6, 3, 2)
    assert np.array_equal(out, np.repeat(seq.transpose(3, 0, 2, 1), 6, axis=1))
    crop = temporal_crop_resize(seq, 6, np.random.default_rng(0))
    assert np.array_equal(crop, out)


def test_float16_input_gives_float32():
    seq = ramp_sequence(10).astype(np.float16)
    assert resize_whole(seq, 4).dtype == np.float32


def test_crop_lengths_and_starts_follow_the_rule():
    n, length = 200, 10
    seq = ramp_sequence(n, m=1, v=1, c=1)
    rng = np.random.default_rng(123)
    crops, starts = [], []
    for _ in range(300):
        out = temporal_crop_resize(seq, length, rng)[0, :, 0, 0].astype(np.float64)
        step = out[1] - out[0]  # = crop / L on the align_corners=False grid
        crop = step * length
        start = out[0] - (0.5 * step - 0.5)
        assert np.allclose(np.diff(out), step, atol=1e-3)
        assert abs(crop - round(crop)) < 1e-2 and abs(start - round(start)) < 1e-2
        crop, start = round(crop), round(start)
        assert 20 <= crop <= n  # floor(200 * 0.1) = 20 >= L
        assert 0 <= start and start + crop <= n
        crops.append(crop)
        starts.append(start)
    assert min(crops) < 40 and max(crops) > 180
    assert np.mean(crops) == pytest.approx(0.55 * n, rel=0.1)  # E[s] = 0.55
    assert len(set(starts)) > 50


def test_crop_never_shorter_than_clip_unless_sequence_is():
    rng = np.random.default_rng(5)
    seq = ramp_sequence(30, m=1, v=1, c=1)
    for _ in range(50):
        out = temporal_crop_resize(seq, 20, rng)[0, :, 0, 0]
        assert (out[-1] - out[0]) * 20 / 19 >= 20 - 1e-3  # crop >= L = 20 frames
    short = ramp_sequence(7)
    assert np.array_equal(temporal_crop_resize(short, 20, rng), resize_whole(short, 20))


def test_min_crop_lets_short_sequences_be_cropped():
    """min_crop below L: crop lengths reach down to min_crop (never below it), so a sequence
    of at most L frames gets temporal crops too; min_crop=L is the default rule."""
    seq = ramp_sequence(30, m=1, v=1, c=1)
    lengths = []
    for i in range(200):
        out = temporal_crop_resize(seq, 32, np.random.default_rng(i), min_crop=10)[0, :, 0, 0]
        # a crop of c <= 30 < L frames is upsampled: its first and last frames are the clip's ends
        lengths.append(round(float(out[-1] - out[0])) + 1)
        assert out[0] >= 0 and out[-1] <= 29
    assert min(lengths) == 10 and max(lengths) >= 28
    # the draws are the default rule's: crop = min(max(floor(30 s), 10), 30), s ~ U(0.1, 1)
    rng = np.random.default_rng(3)
    s = rng.uniform(0.1, 1.0)
    crop = min(max(int(np.floor(30 * s)), 10), 30)
    start = int(rng.integers(0, 30 - crop + 1))
    expected = resize_whole(seq[start:start + crop], 32)
    assert np.array_equal(temporal_crop_resize(seq, 32, np.random.default_rng(3), min_crop=10),
                          expected)
    for i in range(5):  # the default is min_crop = L
        a = temporal_crop_resize(seq, 20, np.random.default_rng(i))
        assert np.array_equal(a, temporal_crop_resize(seq, 20, np.random.default_rng(i), min_crop=20))
    with pytest.raises(ValueError, match="min_crop must be >= 1 frame, got 0"):
        temporal_crop_resize(seq, 20, np.random.default_rng(0), min_crop=0)


def test_crop_is_deterministic_for_a_seed():
    seq = np.random.default_rng(1).normal(size=(90, 2, 4, 3)).astype(np.float32)
    a = temporal_crop_resize(seq, 16, np.random.default_rng([7, 1, 2]))
    b = temporal_crop_resize(seq, 16, np.random.default_rng([7, 1, 2]))
    c = temporal_crop_resize(seq, 16, np.random.default_rng([7, 2, 2]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_temporal_bad_input():
    with pytest.raises(ValueError, match="empty"):
        resize_whole(np.zeros((0, 1, 2, 3), np.float32), 4)
    with pytest.raises(ValueError, match=r"\(T, M, V, C\)"):
        resize_whole(np.zeros((4, 2, 3), np.float32), 4)
    with pytest.raises(ValueError, match="clip_len"):
        resize_whole(np.zeros((4, 1, 2, 3), np.float32), 0)
    with pytest.raises(ValueError, match="min_ratio"):
        temporal_crop_resize(np.zeros((4, 1, 2, 3), np.float32), 4, np.random.default_rng(0), 0.0)


# ----------------------------------------------------------------------------- spatial


def test_branch_frequencies_and_masked_joint_count():
    n = 20000
    draws = draw_view_transforms(n, 25, 3, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws.branch, minlength=3).double() / n
    assert freq[SHEAR] == pytest.approx(0.5, abs=0.015)
    assert freq[MASK] == pytest.approx(0.25, abs=0.015)
    assert freq[LINEAR] == pytest.approx(0.25, abs=0.015)
    eye = torch.eye(3, dtype=torch.float64)
    untouched = (draws.matrices == eye).all(-1).all(-1)  # (n, V)
    corrupted = ~untouched[draws.branch != SHEAR]
    assert (corrupted.sum(1) == 15).all()  # round(0.6 * 25)
    # every joint is chosen about equally often
    assert corrupted.double().mean(0).sub(0.6).abs().max() < 0.03


def test_matrices_of_each_branch():
    draws = draw_view_transforms(4000, 20, 3, torch.Generator().manual_seed(1))
    eye = torch.eye(3, dtype=torch.float64)
    shear = draws.matrices[draws.branch == SHEAR]
    assert (shear == shear[:, :1]).all()  # same matrix for all joints
    assert (torch.diagonal(shear, dim1=-2, dim2=-1) == 1).all()
    off = shear[:, 0][(1 - eye).bool().expand(len(shear), 3, 3)]
    assert off.min() >= -1 and off.max() <= 1 and off.std() > 0.5  # U(-1, 1): std 0.577
    mask = draws.matrices[draws.branch == MASK]
    chosen = ~(mask == eye).all(-1).all(-1)
    assert (mask[chosen] == 0).all() and (chosen.sum(1) == 12).all()
    linear = draws.matrices[draws.branch == LINEAR]
    chosen = ~(linear == eye).all(-1).all(-1)
    assert (chosen.sum(1) == 12).all()
    first = linear[torch.arange(len(linear)), chosen.double().argmax(1)]  # (n, 3, 3)
    assert (linear == torch.where(chosen[:, :, None, None], first[:, None], eye)).all()
    assert first.min() >= -1 and first.max() <= 1 and first.std() > 0.5


def test_apply_hand_example():
    # one view, 2 coordinates + score, 1 frame, 2 joints, 1 body
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.9, 0.8]]).reshape(1, 3, 1, 2, 1)
    shear = torch.tensor([[1.0, 0.5], [-0.25, 1.0]])
    linear = torch.tensor([[0.1, 0.2], [0.3, -0.4]])
    mats = torch.stack([shear, linear]).unsqueeze(0)  # joint 0 sheared, joint 1 mapped
    out = apply_view_transforms(x, mats, 2).reshape(3, 2)
    # joint 0: [1 + 0.5*3, -0.25*1 + 3] ; joint 1: [0.1*2 + 0.2*4, 0.3*2 - 0.4*4]
    expected = torch.tensor([[2.5, 1.0], [2.75, -1.0], [0.9, 0.8]])
    assert torch.allclose(out, expected)


def test_augment_views_applies_the_drawn_transforms():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 3, 8, 25, 2, generator=g, dtype=torch.float64)
    out = augment_views(x, torch.Generator().manual_seed(11))
    draws = draw_view_transforms(24, 25, 3, torch.Generator().manual_seed(11))
    flat_x, flat_out = x.reshape(24, 3, 8, 25, 2), out.reshape(24, 3, 8, 25, 2)
    for i in range(24):
        kind = int(draws.branch[i])
        mats = draws.matrices[i]
        if kind == SHEAR:
            expected = torch.einsum("ij,jlvm->ilvm", mats[0], flat_x[i])
            assert torch.allclose(flat_out[i], expected)
        else:
            chosen = ~(mats == torch.eye(3, dtype=torch.float64)).all(-1).all(-1)
            assert torch.equal(flat_out[i][:, :, ~chosen], flat_x[i][:, :, ~chosen])
            if kind == MASK:
                assert torch.count_nonzero(flat_out[i][:, :, chosen]) == 0
            else:
                a = mats[chosen][0]
                expected = torch.einsum("ij,jlvm->ilvm", a, flat_x[i][:, :, chosen])
                assert torch.allclose(flat_out[i][:, :, chosen], expected)
    assert set(draws.branch.tolist()) == {SHEAR, MASK, LINEAR}


def test_views_are_augmented_independently():
    x = torch.randn(1, 1, 3, 4, 25, 1).expand(8, 4, 3, 4, 25, 1).contiguous()
    out = augment_views(x, torch.Generator().manual_seed(0)).reshape(32, -1)
    assert len({tuple(row.tolist()) for row in out}) == 32


def test_determinism_and_seed_dependence():
    x = torch.randn(3, 4, 3, 5, 25, 2, generator=torch.Generator().manual_seed(0))
    a = augment_views(x, torch.Generator().manual_seed(42))
    b = augment_views(x, torch.Generator().manual_seed(42))
    c = augment_views(x, torch.Generator().manual_seed(43))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_dtype_device_preserved(dtype):
    x = torch.randn(2, 4, 3, 6, 17, 1).to(dtype)
    out = augment_views(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


def test_confidence_channel_untouched_and_2d_matrices():
    x = torch.randn(5, 4, 3, 6, 18, 2, generator=torch.Generator().manual_seed(0))
    x[:, :, 2] = torch.rand(5, 4, 6, 18, 2, generator=torch.Generator().manual_seed(1))
    out = augment_views(x, torch.Generator().manual_seed(2), spatial_channels=2)
    assert torch.equal(out[:, :, 2], x[:, :, 2])
    assert not torch.equal(out[:, :, :2], x[:, :, :2])
    draws = draw_view_transforms(20, 18, 2, torch.Generator().manual_seed(2))
    assert draws.matrices.shape == (20, 18, 2, 2)
    expected = apply_view_transforms(x.reshape(20, 3, 6, 18, 2), draws.matrices, 2)
    assert torch.equal(out.reshape(20, 3, 6, 18, 2), expected)


def test_augment_bad_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\(B, K, C, L, V, M\)"):
        augment_views(torch.zeros(2, 3, 4, 25, 2), g)
    with pytest.raises(ValueError, match="spatial_channels"):
        augment_views(torch.zeros(1, 4, 3, 4, 25, 2), g, spatial_channels=5)
    with pytest.raises(TypeError, match="spatial_channels"):
        augment_views(torch.zeros(1, 4, 3, 4, 25, 2), g, "ntu25")


# ----------------------------------------------------------------------------- fine-tune shear


def test_random_shear_hand_example_and_draws():
    x = torch.zeros(2, 4, 3, 2, 1)  # (B, C, L, V, M), channel 3 is a score
    x[:, 0], x[:, 1], x[:, 2], x[:, 3] = 1.0, 2.0, 3.0, 0.7
    out = random_shear(x, 0.5, torch.Generator().manual_seed(0), spatial_channels=3)
    off = (torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
           * 2 - 1) * 0.5
    for b in range(2):
        a = off[b]
        # row i of (I + A) @ (1, 2, 3): the diagonal is 1, the off-diagonal entries are A's
        expect = [1 + 2 * a[0, 1] + 3 * a[0, 2], a[1, 0] + 2 + 3 * a[1, 2], a[2, 0] + 2 * a[2, 1] + 3]
        assert torch.allclose(out[b, :3, 0, 0, 0], torch.tensor(expect, dtype=torch.float32))
        assert torch.allclose(out[b, :3], out[b, :3, :1, :1].expand(3, 3, 2, 1))  # one matrix a clip
    assert torch.equal(out[:, 3], x[:, 3])  # the score channel is left alone
    assert (off.abs() <= 0.5).all() and not torch.equal(out[0], out[1])
    assert torch.equal(random_shear(x, 0.0, torch.Generator().manual_seed(0), 3), x)
    with pytest.raises(ValueError, match=r"\(B, C, L, V, M\)"):
        random_shear(x[0], 0.5, torch.Generator())


# ----------------------------------------------------------------------------- fine-tune rotation


def test_rotation_matrices_by_hand():
    quarter = torch.pi / 2
    rx, ry, rz = rotation_matrices(torch.tensor([[quarter, 0, 0], [0, quarter, 0], [0, 0, quarter]],
                                                dtype=torch.float64))
    e = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(rx @ e[1], e[2], atol=1e-12)  # x-rotation turns y into z
    assert torch.allclose(ry @ e[2], e[0], atol=1e-12)  # y-rotation turns z into x
    assert torch.allclose(rz @ e[0], e[1], atol=1e-12)  # z-rotation turns x into y
    # composition order Rz @ Ry @ Rx: x-rotation first
    both = rotation_matrices(torch.tensor([[quarter, 0, quarter]], dtype=torch.float64))[0]
    assert torch.allclose(both @ e[1], e[2], atol=1e-12)  # y -(Rx)-> z -(Rz)-> z
    assert torch.allclose(both @ e[0], e[1], atol=1e-12)  # x -(Rx)-> x -(Rz)-> y
    r = rotation_matrices(torch.rand(50, 3, generator=torch.Generator().manual_seed(0),
                                     dtype=torch.float64) * 6 - 3)
    assert torch.allclose(r @ r.transpose(1, 2), e.expand(50, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(50, dtype=torch.float64))


def test_random_rotation_draws_preserve_lengths_and_scores():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 5, 25, 2, generator=g)  # channel 3 is a score
    out = random_rotation(x, 20.0, torch.Generator().manual_seed(0), spatial_channels=3)
    angles = (torch.rand(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
              * 2 - 1) * (20.0 * torch.pi / 180)
    assert (angles.abs() <= 20.0 * torch.pi / 180).all()
    mats = rotation_matrices(angles).float()
    assert torch.allclose(out[:, :3], torch.einsum("bij,bjlvm->bilvm", mats, x[:, :3]), atol=1e-5)
    assert torch.equal(out[:, 3], x[:, 3])
    assert torch.allclose(out[:, :3].norm(dim=1), x[:, :3].norm(dim=1), atol=1e-5)  # a rotation
    assert not torch.allclose(out[:, :3], x[:, :3])
    assert torch.equal(random_rotation(x, 0.0, torch.Generator().manual_seed(0), 3), x)


def test_random_rotation_about_chosen_axes():
    """axes="y": the same B x 3 draws, the x and z angles set to 0 (a turn about the vertical
    axis keeps every height); a bad axis string names what was expected."""
    x = torch.randn(5, 3, 4, 25, 1, generator=torch.Generator().manual_seed(2))
    angles = (torch.rand(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
              * 2 - 1) * (50.0 * torch.pi / 180)
    for axes, keep in (("y", [0.0, 1.0, 0.0]), ("xz", [1.0, 0.0, 1.0]), ("zyx", [1.0, 1.0, 1.0])):
        out = random_rotation(x, 50.0, torch.Generator().manual_seed(4), 3, axes=axes)
        mats = rotation_matrices(angles * torch.tensor(keep, dtype=torch.float64)).float()
        assert torch.allclose(out, torch.einsum("bij,bjlvm->bilvm", mats, x), atol=1e-5), axes
    assert torch.equal(random_rotation(x, 50.0, torch.Generator().manual_seed(4), 3, "y")[:, 1],
                       x[:, 1])
    for bad in ("", "yy", "w"):
        with pytest.raises(ValueError, match="distinct letters of 'xyz'"):
            random_rotation(x, 50.0, torch.Generator(), 3, axes=bad)


def test_random_rotation_2d_turns_the_image_plane():
    x = torch.zeros(2, 3, 1, 1, 1)  # (x, y, score)
    x[:, 0], x[:, 2] = 1.0, 0.9
    out = random_rotation(x, 90.0, torch.Generator().manual_seed(1), spatial_channels=2)
    angles = (torch.rand(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
              * 2 - 1) * (torch.pi / 2)
    for b in range(2):
        a = angles[b, 2]
        assert torch.allclose(out[b, :2, 0, 0, 0], torch.tensor([torch.cos(a), torch.sin(a)]).float())
    assert torch.equal(out[:, 2], x[:, 2])
    with pytest.raises(ValueError, match=r"\(B, C, L, V, M\)"):
        random_rotation(x[0], 10.0, torch.Generator())


def test_random_flip_by_hand():
    """Mirror of a 3-joint body (0 midline, 1 <-> 2): x negated, joints 1 and 2 swapped."""
    mirror = (0, 2, 1)
    x = torch.arange(2 * 3 * 1 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1, 3, 1) + 1
    out = random_flip(x, 1.0, torch.Generator().manual_seed(0), mirror)
    # sample 0, channel 0 (x) of joints 0, 1, 2 was [1, 2, 3]: becomes [-1, -3, -2]
    assert out[0, 0, 0, :, 0].tolist() == [-1.0, -3.0, -2.0]
    # y, z (and a score channel) keep their sign, only the joints swap: [4, 5, 6] -> [4, 6, 5]
    assert out[0, 1, 0, :, 0].tolist() == [4.0, 6.0, 5.0]
    assert out[1, 2, 0, :, 0].tolist() == [16.0, 18.0, 17.0]
    # flipping twice gives the clip back; probability 0 leaves it alone
    assert torch.equal(random_flip(out, 1.0, torch.Generator(), mirror), x)
    assert torch.equal(random_flip(x, 0.0, torch.Generator(), mirror), x)


def test_random_flip_draws_per_sample():
    from feeders.layouts import NTU25
    x = torch.randn(1000, 3, 2, 25, 1, generator=torch.Generator().manual_seed(3))
    out = random_flip(x, 0.3, torch.Generator().manual_seed(5), NTU25.mirror)
    draws = torch.rand(1000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    flipped = ~torch.isclose(out, x).flatten(1).all(1)
    assert torch.equal(flipped, draws < 0.3)
    assert 250 < int(flipped.sum()) < 350
    with pytest.raises(ValueError, match=r"V = 25 \(the mirror map\), got shape \(1, 3, 2, 17, 1\)"):
        random_flip(torch.zeros(1, 3, 2, 17, 1), 0.5, torch.Generator(), NTU25.mirror)
