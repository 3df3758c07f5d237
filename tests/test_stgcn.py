"""ST-GCN encoder and the shared GCN blocks (graph conv, pooling, residual units)."""
import math

import pytest
import torch

from feeders.layouts import STRATEGIES, get_layout
from models.base import EncoderOutput
from models.gcn_blocks import PartitionGraphConv, pool_gcn_features, residual_path
from models.stgcn import PRESETS, build_stgcn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run faster on one thread than on OpenMP threads of a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout,channels,bodies,clip_len", [
    ("ntu25", 3, 2, 16), ("kinect20", 3, 1, 13), ("coco17", 2, 1, 8),
    ("openpose18", 3, 2, 9), ("penn13", 2, 2, 5)])
def test_output_shapes(layout, channels, bodies, clip_len):
    v = get_layout(layout).num_joints
    model = build_stgcn("tiny", layout=layout, clip_len=clip_len, channels=channels,
                        bodies=bodies)
    out = model(_randn(2, channels, clip_len, v, bodies))
    c = PRESETS["tiny"]["block_channels"][-1]
    t_out = math.ceil(clip_len / 2)                 # tiny has one stride-2 block
    assert isinstance(out, EncoderOutput)
    assert out.global_feat.shape == (2, 2 * c)
    assert out.temporal.shape == out.spatial.shape == (2, c)
    assert out.frames.shape == (2, t_out, c)
    assert out.joints.shape == (2, bodies * v, c)
    assert model.temporal_dim == model.spatial_dim == c and model.feature_dim == 2 * c
    assert torch.equal(out.global_feat, torch.cat([out.temporal, out.spatial], 1))


def test_pooling_convention_by_hand():
    n, m, c, t, v = 2, 2, 3, 4, 5
    f = _randn(n * m, c, t, v)
    out = pool_gcn_features(f, bodies=m)
    g = f.view(n, m, c, t, v)
    for i in range(n):
        frames = sum(g[i, b].mean(dim=2) for b in range(m)) / m          # (C, T)
        assert torch.allclose(out.frames[i], frames.T, atol=1e-6)
        for b in range(m):
            for j in range(v):
                assert torch.allclose(out.joints[i, b * v + j], g[i, b, :, :, j].mean(dim=1),
                                      atol=1e-6)
        assert torch.allclose(out.temporal[i], frames.max(dim=1).values, atol=1e-6)
        assert torch.allclose(out.spatial[i], out.joints[i].max(dim=0).values)


def test_partition_graph_conv_matches_per_partition_sum():
    parts = torch.from_numpy(get_layout("penn13").partitions("spatial"))
    conv = PartitionGraphConv(4, 6, parts, edge_importance=True)
    with torch.no_grad():
        conv.importance.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    x = _randn(2, 4, 3, 13)
    w = conv.conv.weight[:, :, 0, 0].view(3, 6, 4)
    b = conv.conv.bias.view(3, 6)
    expected = torch.zeros(2, 6, 3, 13)
    for k in range(3):
        xk = torch.einsum("oc,nctv->notv", w[k], x) + b[k][None, :, None, None]
        expected += xk @ (parts[k] * conv.importance[k])
    assert torch.allclose(conv(x), expected, atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_partition_strategy(strategy):
    layout = get_layout("ntu25")
    model = build_stgcn("tiny", layout=layout, clip_len=8, channels=3, bodies=2,
                        partition=strategy, max_hop=2)
    expected = torch.from_numpy(layout.partitions(strategy, max_hop=2))
    for block in model.blocks:
        assert torch.equal(block.gcn.A, expected)
        assert block.gcn.importance.shape == expected.shape
    out = model(_randn(2, 3, 8, 25, 2))
    assert torch.isfinite(out.global_feat).all()


def _paper_param_count(c_in, v, m, k, widths, strides, kernel):
    """ST-GCN parameters from the paper's description (no classifier)."""
    total = 2 * m * v * c_in                                   # data BN
    prev = c_in
    for i, (out, s) in enumerate(zip(widths, strides)):
        total += prev * out * k + out * k + k * v * v          # graph conv + edge importance
        total += 2 * out + out * out * kernel + out + 2 * out  # BN, temporal conv, BN
        if i > 0 and (prev != out or s != 1):
            total += prev * out + out + 2 * out                # 1x1 conv + BN shortcut
        prev = out
    return total


def test_paper_parameter_count():
    preset = PRESETS["paper"]
    model = build_stgcn("paper", layout="ntu25", clip_len=64, channels=3, bodies=2)
    count = sum(p.numel() for p in model.parameters())
    assert count == _paper_param_count(3, 25, 2, 3, preset["block_channels"],
                                       preset["block_strides"], 9)
    # 3.08 M without the classifier (the paper's "3.1 M" includes a 256 -> 60 linear layer)
    assert count == 3_083_562
    no_importance = build_stgcn("paper", layout="ntu25", clip_len=64, channels=3, bodies=2,
                                edge_importance=False)
    assert count - sum(p.numel() for p in no_importance.parameters()) == 10 * 3 * 25 * 25


def test_paper_preset_structure():
    model = build_stgcn("paper", layout="ntu25", clip_len=64, channels=3, bodies=2)
    assert [b.tcn[2].out_channels for b in model.blocks] == [64] * 4 + [128] * 3 + [256] * 3
    assert [b.tcn[2].stride[0] for b in model.blocks] == [1, 1, 1, 1, 2, 1, 1, 2, 1, 1]
    assert [b.tcn[4].p for b in model.blocks] == [0.0] + [0.5] * 9
    assert model.blocks[0].residual is None
    assert isinstance(model.blocks[1].residual, torch.nn.Identity)
    assert model.blocks[4].residual is not None and model.blocks[4].residual[0].stride == (2, 1)
    small = build_stgcn("small", layout="ntu25", clip_len=64, channels=3, bodies=2)
    assert [b.tcn[2].out_channels for b in small.blocks] == [32] * 4 + [64] * 3 + [128] * 3


def test_residual_path_kinds():
    assert residual_path(8, 8, 1, enabled=False) is None
    assert isinstance(residual_path(8, 8, 1), torch.nn.Identity)
    shortcut = residual_path(8, 16, 2)
    assert shortcut(_randn(1, 8, 7, 3)).shape == (1, 16, 4, 3)


def test_gradients_reach_every_parameter():
    model = build_stgcn("tiny", layout="kinect20", clip_len=8, channels=3, bodies=2)
    out = model(_randn(3, 3, 8, 20, 2))
    (out.global_feat.square().sum() + out.frames.sum() + out.joints.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_close_to_fp32():
    model = build_stgcn("tiny", layout="ntu25", clip_len=16, channels=3, bodies=2)
    x = _randn(4, 3, 16, 25, 2)
    model(x)                      # one training pass: non-trivial BN running statistics
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.global_feat.dtype == torch.bfloat16
    for a, b in zip(ref, low):    # bf16 has an 8-bit mantissa: 5 % of the output scale
        assert (a - b.float()).abs().max() <= 5e-2 * a.abs().max()


def test_same_seed_same_init():
    def state(seed):
        torch.manual_seed(seed + 100)     # global RNG state must not matter
        model = build_stgcn("tiny", layout="coco17", clip_len=8, channels=2, bodies=1,
                            seed=seed)
        return model.state_dict()

    a, b, c = state(0), state(0), state(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_bad_input_and_arguments():
    model = build_stgcn("tiny", layout="ntu25", clip_len=8, channels=3, bodies=2)
    with pytest.raises(ValueError, match="V=25"):
        model(torch.zeros(1, 3, 8, 20, 2))
    with pytest.raises(ValueError, match=r"\(N, C, T, V, M\)"):
        model(torch.zeros(3, 8, 25, 2))
    with pytest.raises(ValueError, match="unknown preset"):
        build_stgcn("huge", layout="ntu25", clip_len=8, channels=3, bodies=2)
    with pytest.raises(ValueError, match="unknown overrides"):
        build_stgcn("tiny", layout="ntu25", clip_len=8, channels=3, bodies=2, width=3)
    with pytest.raises(ValueError, match="unknown partition strategy"):
        build_stgcn("tiny", layout="ntu25", clip_len=8, channels=3, bodies=2, partition="x")
    with pytest.raises(ValueError, match="unknown layout"):
        build_stgcn("tiny", layout="ntu26", clip_len=8, channels=3, bodies=2)
