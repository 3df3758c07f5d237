"""The method registry and the usdrl method: pretrain.py's step through the plug-in computes
what the step hard-wired to USDRL computed before the methods existed (bit for bit)."""
import argparse

import pytest
import torch
from torch import nn

import engine
import pretrain
from feeders.augment import augment_views, random_rotation
from feeders.layouts import NTU25
from feeders.streams import to_stream
from methods import DEFAULT_METHOD, Method, get_method, list_methods, register_method
from methods.base import _METHODS
from methods.usdrl import USDRLMethod
from models import build_encoder
from models.usdrl import USDRL, LossWeights, usdrl_loss

INFO = engine.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def old_pretrain_step(model, weights, args, info, parents, dtype, batch, epoch, step):
    """pretrain.pretrain_step as it was before methods were plug-ins (commit 766d0d3), kept as
    the reference of the regression test below."""
    views = batch[0].to(info.device, non_blocking=True)
    gen = engine.step_generator(args.seed, epoch, step, info.rank)
    if args.augment:
        views = augment_views(views, gen, args.spatial_channels)
    b, k = views.shape[:2]
    x = views.transpose(0, 1).reshape(k * b, *views.shape[2:])
    if args.rotate:
        x = random_rotation(x, args.rotate, gen, args.spatial_channels)
    x = to_stream(x, args.stream, parents, args.spatial_channels)
    with engine.precision_context(dtype, info.device):
        z = model(x, num_views=k)
    z = {d: engine.gather_with_grad(v, dim=1) for d, v in z.items()}
    loss, terms = usdrl_loss(z, weights)
    scalars = {name: v.detach() for name, v in terms.items()}
    for d, v in z.items():
        scalars[f"std_{d}"] = v.detach().float().std(dim=1).mean()
    return loss, scalars


def _usdrl_step(method: bool, dtype=None):
    """The loss, scalars and gradients of one step on a fixed batch: tiny DSTE (seed 3),
    views from seed 1, step generator (7, 2, 5, 0), --rotate 30, bone stream, torch seed 5
    for the DropPath masks; through the usdrl method or through old_pretrain_step."""
    torch.manual_seed(0)
    enc = build_encoder("dste", "tiny", layout="ntu25", clip_len=8, channels=3, bodies=2, seed=3)
    model = USDRLMethod(enc, 2, LossWeights()) if method else USDRL(enc, 2)
    views = torch.randn(4, 4, 3, 8, 25, 2, generator=torch.Generator().manual_seed(1))
    args = argparse.Namespace(augment=True, rotate=30.0, seed=7, spatial_channels=3, stream="b")
    batch = (views, torch.arange(4))
    torch.manual_seed(5)
    if method:
        loss, scalars = pretrain.pretrain_step(model, args, INFO, NTU25.parents, dtype, batch, 2, 5)
    else:
        loss, scalars = old_pretrain_step(model, LossWeights(), args, INFO, NTU25.parents, dtype,
                                          batch, 2, 5)
    loss.backward()
    return loss.detach(), scalars, {k: p.grad for k, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_usdrl_method_step_equals_the_old_step(dtype):
    loss, scalars, grads = _usdrl_step(True, dtype)
    old_loss, old_scalars, old_grads = _usdrl_step(False, dtype)
    assert torch.equal(loss, old_loss)
    assert set(scalars) == set(old_scalars)
    assert list(scalars)[:3] == ["std_t", "std_s", "std_i"]  # collapse indicators named first
    assert all(torch.equal(scalars[k], old_scalars[k]) for k in scalars)
    assert grads.keys() == old_grads.keys()
    assert all(torch.equal(grads[k], old_grads[k]) for k in grads)
    if dtype is None:
        # regression golden: printed by the old pretrain.pretrain_step (commit 766d0d3) on this
        # very batch (fp32, torch 2.13.0 CPU), before the refactor; the value for the release's
        # initialisation (METHOD.md section 10, models/base.py since h/models; before: 42.16873)
        assert loss.item() == pytest.approx(42.8267707824707, rel=1e-6)


def test_registry_lists_and_rejects():
    assert list_methods()[:2] == ["usdrl", "umurl"] and DEFAULT_METHOD == "usdrl"
    assert get_method("usdrl") is USDRLMethod and USDRLMethod.name == "usdrl"
    with pytest.raises(ValueError, match="unknown method 'simclr'; valid methods: usdrl, umurl"):
        get_method("simclr")
    with pytest.raises(ValueError, match="registered twice"):
        register_method("usdrl")(type("Again", (Method,), {}))
    with pytest.raises(ValueError, match="not a Method subclass"):
        register_method("plain")(nn.Linear)


def test_a_new_method_is_one_class(tmp_path):
    """A method registered from outside the package (here: a test) trains through pretrain.py,
    adds its flag, and its checkpoint names where its encoder is."""
    from feeders.synthetic import write_synthetic

    class MeanMatch(Method):
        num_views = 2
        encoder_key = "backbone"

        def __init__(self, encoder, scale):
            super().__init__()
            self.backbone, self.scale = encoder, scale
            self.loss = lambda z: ((z[0] - z[1]).square().mean() * self.scale, {})

        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument_group("meanmatch").add_argument("--scale", type=float, default=1.0)

        @classmethod
        def from_args(cls, encoder, args):
            return cls(encoder, args.scale)

        def make_inputs(self, views, generator, args, parents):
            return views.transpose(0, 1).reshape(-1, *views.shape[2:])

        def forward(self, x):
            return torch.stack(self.backbone(x).global_feat.chunk(2))

    register_method("meanmatch")(MeanMatch)
    try:
        data = write_synthetic(tmp_path / "d", num_sequences=12, seed=0)
        out = tmp_path / "run"
        pretrain.main(["--method", "meanmatch", "--scale", "2", "--data", str(data), "--output",
                   str(out), "--backbone", "dste", "--preset", "tiny", "--clip-len", "8",
                       "--batch-size", "4", "--epochs", "1", "--workers", "0"])
    finally:
        _METHODS.pop("meanmatch")
    ckpt = engine.load_checkpoint(out / "last.pt")
    assert ckpt["encoder_key"] == "backbone" and ckpt["meta"]["config"]["scale"] == 2.0
    assert any(k.startswith("backbone.t_stream.") for k in ckpt["model"])
    from evaluation.features import encoder_state
    assert encoder_state(ckpt).keys() == build_encoder(
        "dste", "tiny", layout="ntu25", clip_len=8, channels=3, bodies=2).state_dict().keys()


def test_method_flags_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain.parse_args(["--method", "umurl", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "umurl loss" in text and "--w-inv" in text and "--w-xcorr" not in text
    with pytest.raises(SystemExit):
        pretrain.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "usdrl loss" in text and "--w-xcorr" in text and "--method {usdrl,umurl" in text
    with pytest.raises(SystemExit) as exit_info:
        pretrain.parse_args(["--method", "nope", "--data", "x", "--output", "y"])
    assert exit_info.value.code == 2
    assert "pretrain.py: error: argument --method: invalid choice: 'nope'" in capsys.readouterr().err
    args = pretrain.parse_args(["--method", "umurl", "--data", "x", "--output", "y"])
    assert args.stream == "jmb" and args.w_inv == 5.0
    assert pretrain.parse_args(["--data", "x", "--output", "y"]).stream == "j"
