"""DSTE (models/dste.py) and the shared transformer pieces of models/base.py."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from feeders.layouts import get_layout
from models.base import (
    Attention,
    DropPath,
    attention,
    attention_products,
    count_forward_flops,
    count_parameters,
    sinusoidal_encoding,
    spatial_tokens,
    temporal_tokens,
)
from models.dste import DSTE, ConvAttention, DenseShiftAttention, TokenMixer, build_dste, shift_reset


def tiny(clip_len=16, joints=5, bodies=2, channels=3, **kw):
    kw = {"hidden": 16, **kw}
    return DSTE(clip_len, joints, bodies, channels, **kw)


@pytest.mark.parametrize(
    "layout,clip_len,bodies,channels",
    [("ntu25", 64, 2, 3), ("kinect20", 32, 1, 3), ("coco17", 16, 1, 2), ("openpose18", 20, 2, 3)],
)
def test_output_shapes(layout, clip_len, bodies, channels):
    lay = get_layout(layout)
    model = build_dste("tiny", layout=lay, clip_len=clip_len, channels=channels, bodies=bodies)
    h = model.temporal_dim
    assert model.spatial_dim == h and model.feature_dim == 2 * h
    out = model(torch.randn(3, channels, clip_len, lay.num_joints, bodies))
    assert out.frames.shape == (3, clip_len, h)
    assert out.joints.shape == (3, bodies * lay.num_joints, h)
    assert out.temporal.shape == out.spatial.shape == (3, h)
    assert torch.equal(out.temporal, out.frames.amax(1))
    assert torch.equal(out.spatial, out.joints.amax(1))
    assert torch.equal(out.global_feat, torch.cat([out.temporal, out.spatial], 1))


def test_wrong_input_shape_is_a_clear_error():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 5, 2\).*\(2, 3, 16, 5, 1\)"):
        model(torch.randn(2, 3, 16, 5, 1))


def test_tokens_follow_the_documented_order():
    n, c, t, v, m = 2, 3, 4, 5, 2
    x = torch.randn(n, c, t, v, m)
    tt, st = temporal_tokens(x), spatial_tokens(x)
    assert tt.shape == (n, t, m * v * c) and st.shape == (n, m * v, t * c)
    for ni, ci, ti, vi, mi in [(0, 0, 0, 0, 0), (1, 2, 3, 4, 1), (0, 1, 2, 3, 1), (1, 0, 1, 2, 0)]:
        assert tt[ni, ti, (mi * v + vi) * c + ci] == x[ni, ci, ti, vi, mi]
        assert st[ni, mi * v + vi, ti * c + ci] == x[ni, ci, ti, vi, mi]


def dste_parameter_formula(h, clip_len, joints, bodies, channels, depth=2):
    """Hand count: docs/METHOD.md sections 2-3."""
    lin = lambda i, o: i * o + o  # noqa: E731
    ln = 2 * h
    s = bodies * joints
    embed = lin(bodies * joints * channels, h) + ln + lin(h, h) + lin(clip_len * channels, h) + ln + lin(h, h)
    attn = lin(h, 3 * h) + lin(h, h)
    mlp = lin(h, 2 * h) + lin(2 * h, h)
    ca = lin(h, h) + 2 * ln + mlp
    dsa_block = 2 * ln + mlp  # its attention is the layer's shared one

    def layer(seq):
        return attn + ca + dsa_block + 2 * lin(seq, seq)

    return embed + s * h + depth * (layer(clip_len) + layer(s))


def test_paper_parameter_count_and_flops():
    with torch.device("meta"):
        model = DSTE(64, 25, 2, 3, hidden=1024)
        x = torch.empty(1, 3, 64, 25, 2)
    n = count_parameters(model)
    assert n == dste_parameter_formula(1024, 64, 25, 2, 3)
    assert abs(n / 57.14e6 - 1) < 0.005, n
    flops = count_forward_flops(model, x)
    assert abs(flops / 12.4e9 - 1) < 0.01, flops


@pytest.mark.parametrize("preset,hidden", [("paper", 1024), ("base", 512), ("small", 256)])
def test_presets_have_their_width(preset, hidden):
    with torch.device("meta"):
        model = build_dste(preset, layout=get_layout("kinect20"), clip_len=32, channels=3, bodies=1)
    assert model.feature_dim == 2 * hidden
    assert count_parameters(model) == dste_parameter_formula(hidden, 32, 20, 1, 3)


def test_flop_count_on_cpu_matches_meta():
    """The CPU fused attention kernel is counted like the math decomposition used on meta."""
    cpu = tiny().eval()
    with torch.device("meta"):
        meta = tiny()
        x_meta = torch.empty(2, 3, 16, 5, 2)
    assert count_forward_flops(cpu, torch.randn(2, 3, 16, 5, 2)) == count_forward_flops(meta, x_meta)


def test_gradients_reach_every_parameter():
    model = tiny(clip_len=12, drop_path=0.0).train()
    model(torch.randn(4, 3, 12, 5, 2)).global_feat.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The shift overwrites mixed tokens 0, 4, 8: their rows of the second mixing layer get no gradient.
    for stream, seq in [(model.t_stream, 12), (model.s_stream, 10)]:
        fc2 = stream.layers[0].dsa.mixer.fc2
        reset = torch.arange(seq) % 4 == 0
        assert torch.all(fc2.weight.grad[reset] == 0) and torch.all(fc2.bias.grad[reset] == 0)
        assert torch.all(fc2.bias.grad[~reset] != 0)


class OutputDtypes(TorchDispatchMode):
    """Records (op name, output dtype) of every op that returns a floating tensor."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(first, torch.Tensor) and first.is_floating_point():
            self.seen.append((func.__name__.split(".")[0], first.dtype))
        return out


def test_bf16_autocast_matches_fp32_without_fp32_islands():
    model = tiny(clip_len=32, joints=25, hidden=64).eval()
    x = torch.randn(4, 3, 32, 25, 2)
    with torch.no_grad():
        ref = model(x).global_feat
        with torch.autocast("cpu", dtype=torch.bfloat16), OutputDtypes() as mode:
            out = model(x)
    assert out.global_feat.dtype == torch.bfloat16
    rel = (out.global_feat.float() - ref).norm() / ref.norm()
    assert rel < 5e-2, rel
    # Only the tokenisation of the fp32 input and the attention's (S, S) softmax stay fp32;
    # every product and residual is bf16.
    fp32 = [name for name, dtype in mode.seen if dtype == torch.float32]
    assert set(fp32) <= {"permute", "clone", "_unsafe_view", "view", "_softmax", "_to_copy"}, fp32
    assert fp32.count("_to_copy") == fp32.count("_softmax") > 0   # each softmax's own upcast
    matmuls = [dtype for name, dtype in mode.seen if name in ("addmm", "mm", "bmm") or "attention" in name]
    assert len(matmuls) > 20 and set(matmuls) == {torch.bfloat16}


def test_seed_determines_initial_weights():
    a, b, c = tiny(seed=3), tiny(seed=3), tiny(seed=4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.s_pos, c.s_pos)
    assert not torch.equal(a.t_stream.layers[0].attn.qkv.weight, c.t_stream.layers[0].attn.qkv.weight)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_attention_matches_the_formula_and_sdpa(num_heads):
    attn = Attention(16, num_heads)
    x = torch.randn(3, 7, 16)
    out = attn(x)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(16, dim=-1)
    d = 16 // num_heads
    heads = [
        torch.softmax(q[..., i * d:(i + 1) * d] @ k[..., i * d:(i + 1) * d].transpose(1, 2) / math.sqrt(d), -1)
        @ v[..., i * d:(i + 1) * d]
        for i in range(num_heads)
    ]
    expected = torch.cat(heads, -1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def attention_and_grads(fn, q, k, v, dtype=None):
    """fn(q, k, v) and the gradients of q, k, v for the loss sum(out^2), under autocast dtype."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        out = fn(q, k, v)
    out.float().square().sum().backward()
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("shape", [(6, 1, 20, 32), (4, 4, 50, 8)])
def test_attention_products_are_the_fused_kernel_to_rounding(shape):
    """The written-out form: forward and gradients equal F.scaled_dot_product_attention's in
    fp32; in bf16 autocast (where ``attention`` uses it on the CPU) it returns bf16 and stays
    within bf16 error of the fp32 result."""
    q, k, v = (torch.randn(shape) for _ in range(3))
    ours = attention_and_grads(attention_products, q, k, v)
    fused = attention_and_grads(F.scaled_dot_product_attention, q, k, v)
    for a, b in zip(ours, fused):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    low = attention_and_grads(attention, q, k, v, torch.bfloat16)
    assert low[0].dtype == torch.bfloat16
    for a, b in zip(low, fused):
        rel = (a.float() - b).norm() / b.norm()
        assert rel < 2e-2, rel


def test_attention_is_the_fused_kernel_except_in_low_precision_on_the_cpu(monkeypatch):
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].dtype)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    q = torch.randn(2, 1, 5, 8)
    attention(q, q, q)
    assert calls == [torch.float32]
    for dtype in (torch.bfloat16, torch.float16):
        assert attention(q.to(dtype), q.to(dtype), q.to(dtype)).dtype == dtype
    assert calls == [torch.float32]
    with torch.device("meta"):   # any other device: the fused kernels
        out = attention(*(torch.empty(2, 1, 5, 8, dtype=torch.bfloat16) for _ in range(3)))
    assert calls == [torch.float32, torch.bfloat16] and out.shape == (2, 1, 5, 8)


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        Attention(16, 3)


def test_shift_resets_every_fourth_token():
    f = torch.arange(10.0).reshape(1, 10, 1).repeat(2, 1, 2)
    x = -torch.ones(2, 10, 2)
    out = shift_reset(f, x)
    expected = torch.tensor([-1, 1, 2, 3, -1, 5, 6, 7, -1, 9.0]).reshape(1, 10, 1).expand(2, 10, 2)
    assert torch.equal(out, expected)


def test_token_mixer_mixes_along_the_sequence_axis():
    mixer = TokenMixer(6)
    x = torch.randn(2, 6, 4)
    w1, b1, w2, b2 = mixer.fc1.weight, mixer.fc1.bias, mixer.fc2.weight, mixer.fc2.bias
    expected = torch.stack([w2 @ torch.relu(w1 @ x[i] + b1[:, None]) + b2[:, None] for i in range(2)])
    torch.testing.assert_close(mixer(x), expected)


def test_ca_and_dsa_follow_their_formulas():
    torch.manual_seed(0)
    dim, seq = 8, 9
    attn, ca, dsa = Attention(dim), ConvAttention(dim, 0.1).eval(), DenseShiftAttention(dim, seq, 0.1).eval()
    for module in (attn, ca, dsa):  # non-trivial norms and biases
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, seq, dim)

    u = x + torch.relu(ca.pointwise(x))
    h = x + attn(ca.norm1(u))
    torch.testing.assert_close(ca(x, attn), ca.mlp(ca.norm2(h)))  # no residual around the MLP

    f = x + dsa.mixer(x)
    f[:, 0::4] = x[:, 0::4]

    def block(y):
        y = y + attn(dsa.norm1(y))
        return y + dsa.mlp(dsa.norm2(y))

    torch.testing.assert_close(dsa(x, attn), 0.5 * (block(f) + block(x)))


def test_layers_share_one_attention_and_average_the_branches():
    model = tiny().eval()
    layer = model.t_stream.layers[0]
    assert not any("attn" in name for name, _ in layer.ca.named_parameters())
    assert not any("attn" in name for name, _ in layer.dsa.named_parameters())
    x = torch.randn(2, 16, 16)
    expected = 0.5 * layer.ca(x, layer.attn) + 0.5 * layer.dsa(x, layer.attn)
    torch.testing.assert_close(layer(x), expected)


def test_positional_tables_are_added_before_each_layer():
    model = tiny().eval()
    seen = {}
    for stream in ("t_stream", "s_stream"):
        for i, layer in enumerate(getattr(model, stream).layers):
            layer.register_forward_pre_hook(lambda m, args, key=(stream, i): seen.__setitem__(key + ("in",), args[0]))
            layer.register_forward_hook(lambda m, args, out, key=(stream, i): seen.__setitem__(key + ("out",), out))
    model(torch.randn(2, 3, 16, 5, 2))
    for stream, pos in (("t_stream", model.t_pos), ("s_stream", model.s_pos)):
        torch.testing.assert_close(seen[(stream, 1, "in")], seen[(stream, 0, "out")] + pos)


def test_sinusoidal_encoding_values():
    pe = sinusoidal_encoding(5, 6)
    assert pe.shape == (5, 6)
    assert torch.equal(pe[0], torch.tensor([0, 1, 0, 1, 0, 1.0]))
    for p in range(5):
        for i in range(3):
            w = 10000 ** (-2 * i / 6)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(p * w), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p * w), abs=1e-6)


def test_drop_path_drops_whole_samples_and_rescales():
    dp = DropPath(0.5).train()
    torch.manual_seed(0)
    out = dp(torch.ones(400, 3, 2))
    per_sample = out.reshape(400, -1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    assert 150 < (per_sample[:, 0] == 0).sum() < 250
    x = torch.randn(4, 3)
    assert dp.eval()(x) is x
    with pytest.raises(ValueError, match="DropPath"):
        DropPath(1.0)


def test_drop_path_residual_is_x_plus_the_dropped_branch():
    dp = DropPath(0.5).train()
    x, branch = torch.randn(64, 3, 2), torch.randn(64, 3, 2)
    torch.manual_seed(1)
    expected = x + dp(branch)
    torch.manual_seed(1)
    assert torch.equal(dp.residual(x, branch), expected)
    assert torch.equal(dp.eval().residual(x, branch), x + branch)
    assert torch.equal(DropPath(0.0).train().residual(x, branch), x + branch)


def test_training_mode_ca_and_dsa_drop_whole_samples_of_each_branch():
    """Same formulas as test_ca_and_dsa_follow_their_formulas, with drop path active: masks are
    drawn in forward order (attention branch, then MLP branch)."""
    torch.manual_seed(0)
    dim, seq, b = 8, 9, 32
    attn, ca, dsa = Attention(dim), ConvAttention(dim, 0.5).train(), DenseShiftAttention(dim, seq, 0.5).train()
    x = torch.randn(b, seq, dim)
    torch.manual_seed(5)
    out_ca = ca(x, attn)
    torch.manual_seed(5)
    u = x + torch.relu(ca.pointwise(x))
    h = x + attn(ca.norm1(u)) * ca.drop_path.mask(x)
    expected = ca.mlp(ca.norm2(h)) * ca.drop_path.mask(x)
    torch.testing.assert_close(out_ca, expected)
    assert 0 < (out_ca.abs().sum((1, 2)) == 0).sum() < b  # some, not all, samples dropped

    torch.manual_seed(6)
    out_dsa = dsa(x, attn)
    torch.manual_seed(6)
    y = torch.cat([shift_reset(x + dsa.mixer(x), x), x])
    y = y + attn(dsa.norm1(y)) * dsa.drop_path.mask(y)
    y = y + dsa.mlp(dsa.norm2(y)) * dsa.drop_path.mask(y)
    torch.testing.assert_close(out_dsa, 0.5 * (y[:b] + y[b:]))


def test_attention_benchmark_times_both_forms_and_prints_their_differences():
    """benchmarks/attention.py on a tiny DSTE: one row per attention call and precision, fp32
    differences at float rounding, and the whole-step rows."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "benchmarks/attention.py", "--preset", "tiny",
                          "--batch-size", "2", "--clip-len", "8", "--reps", "1", "--step",
                          "--rounds", "1", "--layout", "kinect20"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    kernel = [r for r in rows if r and r[0] in ("fp32", "bf16") and r[1] in ("temporal", "spatial")]
    assert len(kernel) == 8
    assert {" ".join(r[1:3]) + " " + r[7] for r in kernel if r[0] == "fp32"} == {
        "temporal CA 32", "temporal DSA 32", "spatial CA 32", "spatial DSA 32"}  # d = tiny width
    for r in kernel:
        out_diff, grad_diff = float(r[-2]), float(r[-1])
        assert out_diff < (1e-5 if r[0] == "fp32" else 5e-2), r
        assert grad_diff < (1e-4 if r[0] == "fp32" else 0.5), r
    steps = [r for r in rows if r and r[0] in ("fp32", "bf16") and r[1] == "kinect20"]
    assert len(steps) == 2 and all(float(r[2]) > 0 and float(r[3]) > 0 for r in steps)
