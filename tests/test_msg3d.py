"""MS-G3D encoder: disentangled adjacency, G3D windows, MS-TCN, shapes, size and cost."""
import math

import pytest
import torch
import torch.nn.functional as F

from feeders.layouts import get_layout
from models.base import EncoderOutput, count_forward_flops
from models.gcn_blocks import (MultiScaleTemporalConv, disentangled_scales, graph_diameter,
                               spacetime_adjacency)
from models.msg3d import (PRESETS, G3DWindow, MultiScaleGraphConv, build_msg3d,
                          unfold_windows)

CHAIN4 = torch.tensor([[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]], dtype=torch.float32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run faster on one thread than on OpenMP threads of a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_disentangled_scales_on_a_chain_by_hand():
    s6, h = 1 / math.sqrt(6), 0.5
    expected = torch.tensor([
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],           # k=0: I
        [[h, s6, 0, 0], [s6, 1 / 3, 1 / 3, 0],                              # k=1: A + I,
         [0, 1 / 3, 1 / 3, s6], [0, 0, s6, h]],                             # degrees 2,3,3,2
        [[h, 0, h, 0], [0, h, 0, h], [h, 0, h, 0], [0, h, 0, h]],           # k=2: (0,2),(1,3)
        [[h, 0, 0, h], [0, 1, 0, 0], [0, 0, 1, 0], [h, 0, 0, h]],           # k=3: (0,3)
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],           # beyond diameter
    ])
    assert torch.allclose(disentangled_scales(CHAIN4, 5), expected, atol=1e-6)
    # self loops in the input do not change the result (G3D passes A + I)
    assert torch.allclose(disentangled_scales(CHAIN4 + torch.eye(4), 5), expected, atol=1e-6)


def test_graph_diameter_and_paper_scale_count():
    assert graph_diameter(CHAIN4) == 3
    ntu = get_layout("ntu25")
    assert graph_diameter(ntu.adjacency()) == 12          # hand tip to opposite hand tip / foot
    model = build_msg3d("paper", layout=ntu, clip_len=16, channels=3, bodies=2)
    assert model.num_gcn_scales == 13                     # the paper's NTU setting
    stage = model.stages[0]
    assert stage.factorized[0].A.shape == (13, 25, 25)
    assert [w.gcn.A.shape for w in stage.g3d] == [(6, 75, 75), (6, 125, 125)]


def test_spacetime_adjacency_tiles_a_plus_identity():
    a = spacetime_adjacency(CHAIN4, 3)
    block = CHAIN4 + torch.eye(4)
    assert a.shape == (12, 12)
    for i in range(3):
        for j in range(3):
            assert torch.equal(a[4 * i:4 * i + 4, 4 * j:4 * j + 4], block)


@pytest.mark.parametrize("window,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 2, 2)])
def test_unfold_windows_by_hand(window, stride, dilation):
    x = _randn(2, 3, 7, 4)
    y = unfold_windows(x, window, stride, dilation)
    pad = (window - 1) * dilation // 2
    xp = F.pad(x, (0, 0, pad, pad))
    assert y.shape == (2, 3, math.ceil(7 / stride), window * 4)
    for t in range(y.shape[2]):
        for w in range(window):
            assert torch.equal(y[:, :, t, w * 4:(w + 1) * 4], xp[:, :, t * stride + w * dilation])


def test_multiscale_graph_conv_matches_per_scale_reference():
    scales = disentangled_scales(CHAIN4, 3)
    gcn = MultiScaleGraphConv(2, 5, scales)
    with torch.no_grad():
        gcn.A_res.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(3))
    x = _randn(2, 2, 6, 4)
    agg = torch.cat([x @ (scales[s] + gcn.A_res[s]).T for s in range(3)], dim=1)
    assert torch.allclose(gcn(x), gcn.mlp(agg), atol=1e-5)


def test_g3d_collapse_equals_the_papers_conv3d():
    window = G3DWindow(4, 6, embed=4, adjacency=CHAIN4, num_scales=2, window=3, stride=2,
                       dilation=1).eval()
    x = _randn(2, 4, 9, 4)
    y = window.gcn(unfold_windows(x, 3, 2, 1)).view(2, 4, 5, 3, 4)    # (N, E, T', w, V)
    conv = window.collapse[0]
    w3d = conv.weight.view(6, 4, 3)[:, :, None, :, None]            # (out, E, 1, w, 1)
    ref = F.conv3d(y, w3d, conv.bias).squeeze(3)
    assert torch.allclose(window(x), window.collapse[1](ref), atol=1e-5)


def test_multiscale_temporal_conv_branches():
    tcn = MultiScaleTemporalConv(12, 24, stride=2, dilations=(1, 2, 3, 4))
    assert len(tcn.branches) == 6
    assert tcn(_randn(2, 12, 9, 5)).shape == (2, 24, 5, 5)
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleTemporalConv(12, 20, dilations=(1, 2, 3, 4))


@pytest.mark.parametrize("layout,channels,bodies,clip_len", [
    ("ntu25", 3, 2, 9), ("kinect20", 3, 1, 6), ("coco17", 2, 1, 8),
    ("openpose18", 3, 2, 7), ("penn13", 2, 2, 5)])
def test_output_shapes(layout, channels, bodies, clip_len):
    v = get_layout(layout).num_joints
    model = build_msg3d("tiny", layout=layout, clip_len=clip_len, channels=channels,
                        bodies=bodies)
    out = model(_randn(2, channels, clip_len, v, bodies))
    c = PRESETS["tiny"]["stage_channels"][-1]
    t_out = math.ceil(math.ceil(clip_len / 2) / 2)            # stride 2 at stages 2 and 3
    assert isinstance(out, EncoderOutput)
    assert out.global_feat.shape == (2, 2 * c)
    assert out.temporal.shape == out.spatial.shape == (2, c)
    assert out.frames.shape == (2, t_out, c)
    assert out.joints.shape == (2, bodies * v, c)
    assert model.temporal_dim == model.spatial_dim == c and model.feature_dim == 2 * c


def _mstcn(c_in, c_out, stride, branches):
    w = c_out // branches
    reduce = c_in * w + w + 2 * w                               # 1x1 conv + BN
    total = (branches - 2) * (reduce + w * w * 3 + w + 2 * w)   # dilated branches
    total += reduce + 2 * w                                     # max-pool branch (+ BN)
    total += reduce                                             # strided 1x1 branch
    if c_in != c_out or stride != 1:
        total += c_in * c_out + c_out + 2 * c_out               # 1x1 conv + BN shortcut
    return total


def _msgcn(c_in, c_out, scales, nodes):
    return scales * nodes * nodes + scales * c_in * c_out + c_out + 2 * c_out


def test_paper_parameter_count():
    """Counted from the paper's description (Liu et al. 2020, fig. 3), no classifier."""
    v, m, c_in = 25, 2, 3
    total = 2 * m * v * c_in
    for i, (out, stride) in enumerate(zip((96, 192, 384), (1, 2, 2))):
        embed = out if i == 0 else c_in
        for w in (3, 5):
            total += _msgcn(c_in, embed, 6, w * v) + embed * w * out + out + 2 * out
        total += _msgcn(c_in, embed, 13, v)
        total += _mstcn(embed, out, stride, 6) + 2 * _mstcn(out, out, 1, 6)
        c_in = out
    model = build_msg3d("paper", layout="ntu25", clip_len=100, channels=3, bodies=2)
    count = sum(p.numel() for p in model.parameters())
    assert count == total == 3_171_495    # pyskl reports ~3.2 M (with a 384 -> 60 classifier)


def test_paper_flops_near_pyskl():
    model = build_msg3d("paper", layout="ntu25", clip_len=100, channels=3, bodies=2)
    model = model.eval().to("meta")
    flops = count_forward_flops(model, torch.empty(1, 3, 100, 25, 2, device="meta"))
    # 21.85 GFLOPs = 10.92 GMACs; pyskl lists about 11 GMACs for this input
    assert abs(flops / 2 - 11e9) <= 0.1 * 11e9


def test_residual_masks_start_tiny_and_learn():
    model = build_msg3d("tiny", layout="penn13", clip_len=8, channels=2, bodies=1)
    masks = [m.A_res for m in model.modules() if isinstance(m, MultiScaleGraphConv)]
    assert len(masks) == 3 * 3                   # per stage: MS-GCN + two G3D windows
    for mask in masks:
        assert mask.requires_grad and 0 < mask.abs().max() <= 1e-6


def test_gradients_reach_every_parameter():
    model = build_msg3d("tiny", layout="penn13", clip_len=8, channels=2, bodies=2)
    out = model(_randn(2, 2, 8, 13, 2))
    (out.global_feat.square().sum() + out.frames.sum() + out.joints.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_close_to_fp32():
    model = build_msg3d("tiny", layout="kinect20", clip_len=8, channels=3, bodies=2)
    x = _randn(3, 3, 8, 20, 2)
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
        return build_msg3d("tiny", layout="coco17", clip_len=8, channels=2, bodies=1,
                           seed=seed).state_dict()

    a, b, c = state(0), state(0), state(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_bad_input_and_arguments():
    model = build_msg3d("tiny", layout="ntu25", clip_len=8, channels=3, bodies=2)
    with pytest.raises(ValueError, match="M=2"):
        model(torch.zeros(1, 3, 8, 25, 1))
    with pytest.raises(ValueError, match="unknown preset"):
        build_msg3d("huge", layout="ntu25", clip_len=8, channels=3, bodies=2)
    with pytest.raises(ValueError, match="unknown overrides"):
        build_msg3d("tiny", layout="ntu25", clip_len=8, channels=3, bodies=2, partition="x")
    with pytest.raises(ValueError, match="odd"):
        build_msg3d("tiny", layout="ntu25", clip_len=8, channels=3, bodies=2, windows=(4,),
                    window_dilations=(1,))
    with pytest.raises(ValueError, match="num_scales"):
        disentangled_scales(CHAIN4, 0)
