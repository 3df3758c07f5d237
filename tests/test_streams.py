import pytest
import torch

from feeders.streams import STREAMS, to_stream

# docs/METHOD.md section 1: NTU (child, parent) pairs, 1-based.
NTU_PAIRS = [
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (21, 21), (22, 23), (23, 8), (24, 25), (25, 12),
]
NTU_PARENTS = [p - 1 for _, p in NTU_PAIRS]


def ntu_clip(seed=0, n=2, c=3, t=4, m=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, t, 25, m, generator=g, dtype=torch.float64)


def test_joint_stream_is_identity():
    x = ntu_clip()
    assert torch.equal(to_stream(x, "j", NTU_PARENTS), x)


def test_motion_hand_values():
    # one clip, 1 channel, 3 frames, 2 joints, 1 body
    x = torch.tensor([[1.0, 2.0], [4.0, 0.0], [4.5, -1.0]]).reshape(1, 1, 3, 2, 1)
    expected = torch.tensor([[3.0, -2.0], [0.5, -1.0], [0.0, 0.0]]).reshape(1, 1, 3, 2, 1)
    assert torch.equal(to_stream(x, "m", [0, 0]), expected)
    assert torch.equal(to_stream(x, "jm", [0, 0]), expected)


def test_bone_hand_values_tiny():
    # 3 joints in a chain 0 <- 1 <- 2, joint 0 is the root; 2 channels, 1 frame
    x = torch.tensor([[1.0, 3.0, 6.0], [10.0, 20.0, 40.0]]).reshape(1, 2, 1, 3, 1)
    expected = torch.tensor([[0.0, 2.0, 3.0], [0.0, 10.0, 20.0]]).reshape(1, 2, 1, 3, 1)
    assert torch.equal(to_stream(x, "b", [0, 0, 1]), expected)


def test_ntu_bones_follow_the_25_pairs():
    x = ntu_clip()
    b = to_stream(x, "b", NTU_PARENTS)
    # joint 21 (1-based) is its own parent: zero bone
    assert torch.count_nonzero(b[:, :, :, 20]) == 0
    # joint 22's parent is 23, joint 1's parent is 2, joint 25's parent is 12
    assert torch.equal(b[:, :, :, 21], x[:, :, :, 21] - x[:, :, :, 22])
    assert torch.equal(b[:, :, :, 0], x[:, :, :, 0] - x[:, :, :, 1])
    assert torch.equal(b[:, :, :, 24], x[:, :, :, 24] - x[:, :, :, 11])
    for child, parent in NTU_PAIRS:
        assert torch.equal(b[:, :, :, child - 1], x[:, :, :, child - 1] - x[:, :, :, parent - 1])


def test_bone_motion_is_motion_of_bones():
    x = ntu_clip(seed=1)
    b = to_stream(x, "b", NTU_PARENTS)
    bm = to_stream(x, "bm", NTU_PARENTS)
    assert torch.equal(bm[:, :, :-1], b[:, :, 1:] - b[:, :, :-1])
    assert torch.count_nonzero(bm[:, :, -1]) == 0


def test_confidence_channel_passes_through():
    x = ntu_clip(seed=2)  # channels (x, y, score)
    for stream in STREAMS:
        out = to_stream(x, stream, NTU_PARENTS, spatial_channels=2)
        assert out.shape == x.shape
        assert torch.equal(out[:, 2], x[:, 2]), stream
    b = to_stream(x, "b", NTU_PARENTS, spatial_channels=2)
    assert torch.equal(b[:, :2, :, 21], x[:, :2, :, 21] - x[:, :2, :, 22])


def test_default_spatial_channels_is_min_c_3():
    x = torch.arange(4 * 2 * 3 * 1, dtype=torch.float32).reshape(1, 4, 2, 3, 1)
    m = to_stream(x, "m", [0, 0, 1])
    assert torch.count_nonzero(m[:, :3, -1]) == 0
    assert torch.equal(m[:, 3], x[:, 3])


def test_input_not_modified_and_dtype_kept():
    x = ntu_clip(seed=3).float()
    before = x.clone()
    for stream in STREAMS:
        out = to_stream(x, stream, NTU_PARENTS)
        assert out.dtype == torch.float32
    assert torch.equal(x, before)


def test_unknown_stream_lists_valid_ones():
    with pytest.raises(ValueError, match="j, m, b, jm, bm"):
        to_stream(ntu_clip(), "xyz", NTU_PARENTS)


def test_bad_parents_and_channels():
    with pytest.raises(ValueError, match="25 joints"):
        to_stream(ntu_clip(), "b", [0, 0, 1])
    with pytest.raises(ValueError, match="joint indices"):
        to_stream(ntu_clip(), "b", [25] * 25)
    with pytest.raises(ValueError, match="spatial_channels"):
        to_stream(ntu_clip(), "m", NTU_PARENTS, spatial_channels=4)


def test_ntu_layout_parents_match_method_pairs():
    from feeders.layouts import get_layout

    assert list(get_layout("ntu25").parents) == NTU_PARENTS
