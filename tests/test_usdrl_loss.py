"""usdrl_loss: hand-computed values, equality with a direct D x D reference, fp32 at paper width."""
from itertools import combinations

import pytest
import torch

from models.usdrl import LossWeights, _varcov, _xcorr, usdrl_loss


# ---------------------------------------------------------------- direct D x D reference
def reference_loss(z: dict, w: LossWeights) -> torch.Tensor:
    """The objective of docs/METHOD.md section 4 written with explicit D x D matrices."""
    total = {"inv": 0.0, "varcov": 0.0, "xcorr": 0.0}
    for d, zd in z.items():
        inv = sum(((zd[v] - zd[3]) ** 2).mean() for v in range(3))
        m = zd[:3].mean(0)
        inv = inv + sum(((zd[v] - m) ** 2).mean() for v in range(3))
        varcov = 0.0
        for v in range(4):
            x = zd[v] - zd[v].mean(0)
            cov = x.T @ x / (x.shape[0] - 1)
            std = torch.sqrt(torch.diagonal(cov) + 1e-4)
            off = cov - torch.diag(torch.diagonal(cov))
            varcov = varcov + w.std * torch.relu(1 - std).mean() + (off ** 2).sum() / x.shape[1]
        xcorr = 0.0
        for a, b in combinations(range(4), 2):
            za = (zd[a] - zd[a].mean(0)) / torch.sqrt(zd[a].var(0, unbiased=False) + w.eps)
            zb = (zd[b] - zd[b].mean(0)) / torch.sqrt(zd[b].var(0, unbiased=False) + w.eps)
            c = za.T @ zb / za.shape[0]
            diag = torch.diagonal(c)
            xcorr = xcorr + ((diag - 1) ** 2).sum() + w.offdiag * ((c ** 2).sum() - (diag ** 2).sum())
        for name, val in (("inv", inv), ("varcov", varcov), ("xcorr", xcorr)):
            total[name] = total[name] + getattr(w, d) * val
    return w.inv * total["inv"] + w.varcov * total["varcov"] + w.xcorr * total["xcorr"]


def random_z(b, dims, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {d: torch.randn(4, b, n, generator=g, dtype=dtype) * 0.7 + 0.1
            for d, n in dims.items()}


# ---------------------------------------------------------------- hand computations
def test_varcov_by_hand():
    # View A = [[1,0],[0,1],[-1,-1]]: column means 0, unbiased variances (1+0+1)/2 = 1, so the
    # hinge relu(1 - sqrt(1 + 1e-4)) is 0; Cov01 = (0 + 0 + 1)/2 = 0.5, off-diagonal sum
    # 2 * 0.25 = 0.5, divided by D=2 -> 0.25.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    # View B = [[2,0],[0,0],[-2,0]]: variances 4 and 0; hinge mean = (0 + (1 - 0.01)) / 2 = 0.495,
    # times 5 = 2.475; Cov01 = 0.
    b = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-2.0, 0.0]])
    zc = torch.stack([a, b]).double()
    assert _varcov(zc[:1], 5.0).item() == pytest.approx(0.25)
    assert _varcov(zc[1:], 5.0).item() == pytest.approx(2.475, rel=1e-6)
    assert _varcov(zc, 5.0).item() == pytest.approx(2.725, rel=1e-6)


def test_xcorr_by_hand():
    # P has standardised columns already (means 0, biased variance 1). Q = [[1,1],[1,1],
    # [-1,-1],[-1,-1]]. C = P^T Q / 4 = [[1,1],[0,0]] -> (1-1)^2 + (0-1)^2 = 1 on the diagonal,
    # 0.005 * 1^2 off the diagonal: 1.005. Scaling and shifting Q changes nothing.
    p = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    q = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    zc = torch.stack([p, 3 * q]).double()
    assert _xcorr(zc, 0.005, eps=0.0).item() == pytest.approx(1.005)
    assert _xcorr(torch.stack([p, p]).double(), 0.005, eps=0.0).item() == pytest.approx(0.0)


def test_total_by_hand():
    # Views P, P, P, Q (P, Q as above, B=4, D=2), instance domain only.
    # invariance: MSE(P, Q) = (0+0 + 0+4 + 0+4 + 0+0)/8 = 1 for each of 3 views; mean(P,P,P) = P
    #   -> inv = 3.
    # varcov: P: variances 4/3 (hinge 0), Cov01 = 0 -> 0. Q: variances 4/3, Cov01 = 4/3,
    #   off-diagonal sum 2 * 16/9, / D -> 16/9.
    # xcorr: the 3 pairs (P, P) give 0, the 3 pairs (P, Q) give 1.005 -> 3.015.
    # total = 5 * 3 + 1 * 16/9 + 1e-3 * 3.015
    p = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    q = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    z = {"i": torch.stack([p, p, p, q]).double()}
    total, terms = usdrl_loss(z, LossWeights(eps=0.0))
    assert terms["inv_i"].item() == pytest.approx(3.0)
    assert terms["varcov_i"].item() == pytest.approx(16 / 9)
    assert terms["xcorr_i"].item() == pytest.approx(3.015)
    assert total.item() == pytest.approx(15 + 16 / 9 + 3.015e-3)


def test_domain_weights_and_term_weights():
    # The same embeddings in the three domains: each weighted term is (1 + 0.5 + 0.5) x one domain.
    one = random_z(6, {"i": 5}, torch.float64)["i"]
    _, single = usdrl_loss({"i": one})
    total, terms = usdrl_loss({"t": one, "s": one, "i": one})
    for name in ("inv", "varcov", "xcorr"):
        assert terms[name].item() == pytest.approx(2 * single[f"{name}_i"].item())
    w = LossWeights(inv=2.0, varcov=0.0, xcorr=0.0, t=0.0, s=0.0)
    total, terms = usdrl_loss({"t": one, "s": one, "i": one}, w)
    assert total.item() == pytest.approx(2 * single["inv_i"].item())


# ---------------------------------------------------------------- Gram form == D x D reference
@pytest.mark.parametrize("b,dims", [(3, {"i": 2}), (5, {"t": 7, "s": 4, "i": 11}),
                                    (9, {"t": 3, "s": 3, "i": 6})])
def test_matches_reference_float64(b, dims):
    z = random_z(b, dims, torch.float64, seed=b)
    for w in (LossWeights(), LossWeights(xcorr=0.5, std=2.0, offdiag=0.1, t=0.3, eps=1e-3)):
        zg = {d: v.clone().requires_grad_() for d, v in z.items()}
        zr = {d: v.clone().requires_grad_() for d, v in z.items()}
        got, _ = usdrl_loss(zg, w)
        want = reference_loss(zr, w)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        got.backward()
        want.backward()
        for d in z:
            torch.testing.assert_close(zg[d].grad, zr[d].grad, rtol=1e-9, atol=1e-12)


def test_matches_reference_fp32_paper_width():
    # Paper widths (t: 2048, i: 4096) at batch 16: the Gram form in fp32 agrees with the
    # direct D x D form (the fp32 cancellations of the Gram form stay within 1e-4).
    z = random_z(16, {"t": 2048, "i": 4096}, torch.float32, seed=1)
    got, terms = usdrl_loss(z)
    want = reference_loss(z, LossWeights())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-4)


def test_fp32_under_autocast_and_bad_shape():
    z = random_z(8, {"i": 16}, torch.float32, seed=2)
    want, _ = usdrl_loss(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = usdrl_loss({"i": z["i"].bfloat16()})
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=2e-2)
    with pytest.raises(ValueError, match=r"z\['i'\] must be \(4 views"):
        usdrl_loss({"i": z["i"][:3]})


# ---------------------------------------------------------------- the USDRL module
class SplitEncoder(torch.nn.Module):
    """Stand-in encoder: input (N, Dt + Ds) is already the (temporal, spatial) feature pair."""

    def __init__(self, dt, ds):
        super().__init__()
        self.temporal_dim, self.spatial_dim, self.feature_dim = dt, ds, dt + ds

    def forward(self, x):
        from models.base import EncoderOutput
        t, s = x[:, :self.temporal_dim], x[:, self.temporal_dim:]
        return EncoderOutput(x, t, s, t[:, None], s[:, None])


def test_projector_widths_paper():
    from models.usdrl import USDRL
    model = USDRL(SplitEncoder(1024, 1024), proj_mult=2)
    linear = lambda seq: [tuple(m.weight.shape[::-1]) for m in seq if isinstance(m, torch.nn.Linear)]
    assert linear(model.t_proj) == [(1024, 2048), (2048, 2048), (2048, 2048)]
    assert linear(model.s_proj) == [(1024, 2048), (2048, 2048), (2048, 2048)]
    assert linear(model.i_proj) == [(2048, 2048), (2048, 2048), (2048, 4096)]
    small = USDRL(SplitEncoder(8, 4), proj_mult=1)
    assert linear(small.i_proj) == [(12, 6), (6, 6), (6, 12)]


def test_projector_batchnorm_statistics_are_per_view():
    # In training mode a constant shift of one view's features is removed by that view's own
    # BatchNorm statistics (the Linear before it has no bias); pooled statistics would not.
    from models.usdrl import USDRL
    torch.manual_seed(0)
    model = USDRL(SplitEncoder(3, 2), proj_mult=2).train()
    x = torch.randn(4 * 6, 5)
    shift = torch.repeat_interleave(torch.tensor([0.0, 5.0, -3.0, 1.0]), 6)[:, None]
    a, b = model(x), model(x + shift)
    for d in ("t", "s", "i"):
        assert a[d].shape[:2] == (4, 6)
        torch.testing.assert_close(a[d], b[d], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not divisible by num_views=4"):
        model(x[:10])
