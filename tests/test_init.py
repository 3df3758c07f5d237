"""DSTE and STTR start where the USDRL release starts (METHOD.md section 10): the statistics of
each parameter group of a freshly built encoder."""
import math

import pytest
import torch

from models import build_encoder

H = 256
KW = dict(layout="ntu25", clip_len=64, channels=3, bodies=2, seed=0)


def group_of(name: str) -> str:
    """The release's initialisation group of a DSTE / STTR parameter name (by hand)."""
    if name == "s_pos":
        return "table"
    if ".norm" in name and name.split(".")[-2].startswith("norm"):
        return "ln_" + name.split(".")[-1]
    if ".attn.qkv." in name:
        return "qkv_" + name.split(".")[-1]
    if ".ca.pointwise." in name:
        return "pointwise_" + name.split(".")[-1]
    return "linear_" + name.split(".")[-1]


def groups(model) -> dict[str, torch.Tensor]:
    out: dict[str, list] = {}
    for name, param in model.named_parameters():
        out.setdefault(group_of(name), []).append(param.detach().flatten())
    return {g: torch.cat(v) for g, v in out.items()}


@pytest.mark.parametrize("name", ["dste", "sttr"])
def test_parameter_group_statistics_are_the_release_initialisation(name):
    g = groups(build_encoder(name, "small", **KW))
    expected = {"table", "ln_weight", "ln_bias", "qkv_weight", "qkv_bias", "linear_weight",
                "linear_bias"} | ({"pointwise_weight", "pointwise_bias"} if name == "dste" else set())
    assert set(g) == expected
    # normal std 0.02, truncated only at +-2: values beyond 2 std (the old +-0.04 cut) occur
    for group in ("linear_weight", "table"):
        w = g[group]
        assert abs(w.mean()) < 1e-3 and w.std() == pytest.approx(0.02, rel=0.03)
        assert 0.06 < w.abs().max() < 0.15
        assert (w.abs() > 0.04).float().mean() == pytest.approx(0.0455, abs=0.01)  # P(|z| > 2)
    # Xavier-uniform attention input projection (3H, H): bound sqrt(6 / (H + 3H))
    bound = math.sqrt(6 / (4 * H))
    q = g["qkv_weight"]
    assert q.abs().max() <= bound and q.abs().max() > 0.99 * bound
    assert q.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    for group in ("linear_bias", "qkv_bias", "ln_bias"):
        assert torch.count_nonzero(g[group]) == 0
    assert torch.all(g["ln_weight"] == 1)
    if name == "dste":  # the kernel-1 Conv1d keeps PyTorch's default: U(-1/sqrt(H), 1/sqrt(H))
        for group in ("pointwise_weight", "pointwise_bias"):
            p = g[group]
            assert p.abs().max() <= 1 / math.sqrt(H) and p.abs().max() > 0.98 / math.sqrt(H)
            assert p.std() == pytest.approx(1 / math.sqrt(3 * H), rel=0.1)


def test_initialisation_is_a_function_of_the_seed():
    a, b, c = (build_encoder("dste", "tiny", **{**KW, "seed": s}) for s in (4, 4, 5))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.t_stream.layers[0].ca.pointwise.weight, c.t_stream.layers[0].ca.pointwise.weight)
    assert not torch.equal(a.t_stream.layers[0].attn.qkv.weight, c.t_stream.layers[0].attn.qkv.weight)
