"""The encoder registry (models/__init__.py)."""
import pytest
import torch

import models
from feeders.layouts import get_layout
from models import build_encoder, encoder_builder, list_encoders, list_presets, register_encoder
from models.registry import unregister_encoder
from models.dste import build_dste
from models.msg3d import build_msg3d
from models.stgcn import build_stgcn
from models.sttr import build_sttr

NAMES = ["dste", "sttr", "stgcn", "msg3d"]


def test_all_four_encoders_and_presets_are_registered():
    assert list_encoders() == NAMES
    builders = {"dste": build_dste, "sttr": build_sttr, "stgcn": build_stgcn, "msg3d": build_msg3d}
    assert {name: encoder_builder(name) for name in NAMES} == builders
    for name in NAMES:
        assert list_presets(name) == ["paper", "base", "small", "tiny"]
    assert list_presets() == ["paper", "base", "small", "tiny"]


class _Dummy(torch.nn.Module):
    """A minimal encoder for the registration test."""

    def __init__(self, width):
        super().__init__()
        self.proj = torch.nn.Linear(1, width)
        self.temporal_dim = self.spatial_dim = width
        self.feature_dim = 2 * width


@pytest.fixture
def dummy_encoder():
    """Register encoder 'dummy' (presets 'one', 'huge') for one test."""
    @register_encoder("dummy", {"one": {"width": 1}, "huge": {"width": 9}})
    def build_dummy(preset, *, layout, clip_len, channels, bodies, **overrides):
        return _Dummy({"one": 1, "huge": 9}[preset])
    yield build_dummy
    unregister_encoder("dummy")
    assert "dummy" not in list_encoders()


def test_a_registered_encoder_appears_in_every_choice(dummy_encoder, capsys):
    import action_recognition
    import action_retrieval
    import pretrain
    from models.__main__ import main

    assert list_encoders() == NAMES + ["dummy"]
    assert list_presets() == ["paper", "base", "small", "tiny", "one", "huge"]
    model = build_encoder("dummy", "huge", layout="ntu25", clip_len=8, channels=3, bodies=1)
    assert model.feature_dim == 18
    for parser in (pretrain.build_parser(), action_recognition.build_parser(),
                   action_retrieval.build_parser()):
        backbone = next(a for a in parser._actions if a.dest == "backbone")
        assert list(backbone.choices) == NAMES + ["dummy"]
    args = pretrain.build_parser().parse_args(["--data", "d", "--output", "o", "--backbone", "dummy",
                                               "--preset", "one"])
    assert args.backbone == "dummy"
    main(["--list-encoders", "--list-streams"])  # what scripts/_common.sh reads
    assert capsys.readouterr().out == "dste sttr stgcn msg3d dummy\nj m b jm bm jmb\n"
    with pytest.raises(ValueError, match="unknown encoder 'vit'; valid encoders: dste, sttr, stgcn, msg3d, dummy"):
        build_encoder("vit", layout="ntu25", clip_len=8, channels=3, bodies=1)
    with pytest.raises(ValueError, match="encoder 'dummy' is registered twice"):
        register_encoder("dummy", ("one",))(dummy_encoder)


def test_models_cli_lists_and_rejects_bad_names(capsys):
    from models.__main__ import main
    main(["--list-presets", "dste"])
    assert capsys.readouterr().out == "paper base small tiny\n"
    with pytest.raises(SystemExit) as err:
        main(["--list-presets", "vit"])
    assert err.value.code == 2
    assert "error: unknown encoder 'vit'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "layout,clip_len,channels,bodies", [("ntu25", 16, 3, 2), (get_layout("coco17"), 12, 2, 1)]
)
def test_every_encoder_honours_the_output_contract(name, layout, clip_len, channels, bodies):
    model = build_encoder(name, "tiny", layout=layout, clip_len=clip_len, channels=channels, bodies=bodies)
    joints = get_layout(layout).num_joints
    assert model.feature_dim == model.temporal_dim + model.spatial_dim
    out = model(torch.randn(2, channels, clip_len, joints, bodies))
    assert isinstance(out, models.EncoderOutput)
    assert out.temporal.shape == (2, model.temporal_dim)
    assert out.spatial.shape == (2, model.spatial_dim)
    assert out.frames.shape[0] == 2 and out.frames.shape[2] == model.temporal_dim
    assert 1 <= out.frames.shape[1] <= clip_len
    assert out.joints.shape == (2, joints * bodies, model.spatial_dim)
    assert torch.equal(out.global_feat, torch.cat([out.temporal, out.spatial], 1))


@pytest.mark.parametrize("name", NAMES)
def test_seed_override_reaches_the_encoder(name):
    kw = dict(layout="kinect20", clip_len=8, channels=3, bodies=1)
    a, b, c = (build_encoder(name, "tiny", seed=s, **kw) for s in (0, 0, 1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_overrides_and_default_preset():
    model = build_encoder("dste", layout="ntu25", clip_len=8, channels=3, bodies=1, hidden=24)
    assert model.feature_dim == 48
    with torch.device("meta"):
        assert build_encoder("sttr", layout="ntu25", clip_len=8, channels=3, bodies=1).feature_dim == 512


def test_errors_list_the_valid_choices():
    kw = dict(layout="ntu25", clip_len=8, channels=3, bodies=1)
    with pytest.raises(ValueError, match="unknown encoder 'vit'; valid encoders: dste, sttr, stgcn, msg3d"):
        build_encoder("vit", "tiny", **kw)
    with pytest.raises(ValueError, match="unknown encoder 'vit'"):
        list_presets("vit")
    for name in NAMES:
        with pytest.raises(ValueError, match=f"unknown preset 'huge' for encoder '{name}'; valid presets: "
                                             "paper, base, small, tiny"):
            build_encoder(name, "huge", **kw)
    with pytest.raises(ValueError, match="unknown layout 'ntu26'"):
        build_encoder("dste", "tiny", layout="ntu26", clip_len=8, channels=3, bodies=1)
    with pytest.raises(ValueError, match=r"dste: unknown overrides \['width'\]"):
        build_encoder("dste", "tiny", width=3, **kw)
