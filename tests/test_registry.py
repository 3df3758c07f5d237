"""The encoder registry (models/__init__.py)."""
import pytest
import torch

import models
from feeders.layouts import get_layout
from models import ENCODERS, build_encoder, list_encoders, list_presets
from models.dste import build_dste
from models.msg3d import build_msg3d
from models.stgcn import build_stgcn
from models.sttr import build_sttr

NAMES = ["dste", "sttr", "stgcn", "msg3d"]


def test_all_four_encoders_and_presets_are_registered():
    assert list_encoders() == NAMES
    assert ENCODERS == {"dste": build_dste, "sttr": build_sttr, "stgcn": build_stgcn, "msg3d": build_msg3d}
    for name in NAMES:
        assert list_presets(name) == ["paper", "base", "small", "tiny"]


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
