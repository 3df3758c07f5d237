"""STTR baseline (models/sttr.py)."""
import pytest
import torch

from feeders.layouts import get_layout
from models.base import count_forward_flops, count_parameters
from models.sttr import STTR, PostNormLayer, build_sttr


@pytest.mark.parametrize(
    "layout,clip_len,bodies,channels",
    [("ntu25", 64, 2, 3), ("kinect20", 24, 1, 3), ("coco17", 16, 1, 2), ("penn13", 20, 1, 2)],
)
def test_output_shapes(layout, clip_len, bodies, channels):
    lay = get_layout(layout)
    model = build_sttr("tiny", layout=lay, clip_len=clip_len, channels=channels, bodies=bodies)
    h = model.temporal_dim
    assert model.spatial_dim == h and model.feature_dim == 2 * h
    out = model(torch.randn(2, channels, clip_len, lay.num_joints, bodies))
    assert out.frames.shape == (2, clip_len, h)
    assert out.joints.shape == (2, bodies * lay.num_joints, h)
    assert torch.equal(out.temporal, out.frames.amax(1))
    assert torch.equal(out.spatial, out.joints.amax(1))
    assert torch.equal(out.global_feat, torch.cat([out.temporal, out.spatial], 1))


def sttr_parameter_formula(h, clip_len, joints, bodies, channels, depth=2):
    """Hand count: embeddings + learned spatial table + 2 post-norm layers (FFN width H) per stream."""
    lin = lambda i, o: i * o + o  # noqa: E731
    embed = lin(bodies * joints * channels, h) + 2 * h + lin(h, h) + lin(clip_len * channels, h) + 2 * h + lin(h, h)
    layer = lin(h, 3 * h) + lin(h, h) + 2 * lin(h, h) + 2 * (2 * h)
    return embed + bodies * joints * h + 2 * depth * layer


def test_paper_parameter_count():
    with torch.device("meta"):
        model = STTR(64, 25, 2, 3, hidden=1024)
        x = torch.empty(1, 3, 64, 25, 2)
    n = count_parameters(model)
    assert n == sttr_parameter_formula(1024, 64, 25, 2, 3)
    assert abs(n / 27.7e6 - 1) < 0.01, n
    # Each token passes 4H^2 (attention) + 2H^2 (FFN) multiply-adds per layer, plus the embeddings.
    assert 2 * 6 * 1024**2 * 2 * (64 + 50) < count_forward_flops(model, x) < 3.4e9


@pytest.mark.parametrize("preset,hidden", [("base", 512), ("small", 256), ("tiny", 32)])
def test_presets(preset, hidden):
    with torch.device("meta"):
        model = build_sttr(preset, layout=get_layout("ntu25"), clip_len=64, channels=3, bodies=2)
    assert model.feature_dim == 2 * hidden
    assert count_parameters(model) == sttr_parameter_formula(hidden, 64, 25, 2, 3)


def test_post_norm_layer_formula():
    torch.manual_seed(0)
    layer = PostNormLayer(8, 1, 0.1).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 5, 8)
    y = layer.norm1(x + layer.attn(x))
    expected = layer.norm2(y + layer.ffn.fc2(torch.relu(layer.ffn.fc1(y))))
    torch.testing.assert_close(layer(x), expected)


def test_gradients_reach_every_parameter_and_bf16_matches():
    model = STTR(12, 5, 2, 3, hidden=16, drop_path=0.0)
    x = torch.randn(4, 3, 12, 5, 2)
    model(x).global_feat.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        ref = model(x).global_feat
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x).global_feat
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 5e-2


def test_seed_and_errors():
    a, b, c = (STTR(8, 5, 1, 2, hidden=16, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.t_embed.fc1.weight, c.t_embed.fc1.weight)
    with pytest.raises(ValueError, match="unknown preset 'huge'.*paper, base, small, tiny"):
        build_sttr("huge", layout=get_layout("ntu25"), clip_len=8, channels=3, bodies=1)
    with pytest.raises(ValueError, match=r"expected shape \(N, C, L, V, M\)"):
        a(torch.randn(2, 3, 8, 5, 1))
