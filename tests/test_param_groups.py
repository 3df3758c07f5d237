"""Encoders declare their optimiser groups (models/param_groups.py): layer ids, lr scales, decay."""
import pytest
from torch import nn

from evaluation.finetune import Classifier, param_groups
from models import build_encoder, list_encoders
from models.param_groups import encoder_layer_ids, finetune_param_groups

KW = dict(layout="ntu25", clip_len=8, channels=3, bodies=2, seed=0)

# (name, expected layer id, exempt from weight decay), checked by hand against the module tree.
HAND_CHECKED = {
    "dste": (2, [("s_pos", 0, True), ("t_embed.fc1.weight", 0, False), ("s_embed.norm.bias", 0, True),
                 ("t_stream.layers.0.attn.qkv.weight", 1, False),
                 ("t_stream.layers.0.dsa.mixer.fc1.weight", 1, False),
                 ("s_stream.layers.0.ca.norm1.weight", 1, True),
                 ("s_stream.layers.1.ca.pointwise.weight", 2, False),
                 ("t_stream.layers.1.dsa.mlp.fc2.bias", 2, True)]),
    "sttr": (2, [("s_pos", 0, True), ("s_embed.fc2.weight", 0, False),
                 ("t_stream.layers.0.ffn.fc1.weight", 1, False),
                 ("s_stream.layers.0.norm2.weight", 1, True),
                 ("s_stream.layers.1.attn.proj.weight", 2, False)]),
    "stgcn": (3, [("input_norm.bn.weight", 0, True), ("blocks.0.gcn.importance", 1, False),
                  ("blocks.0.gcn.conv.weight", 1, False), ("blocks.1.tcn.0.weight", 2, True),
                  ("blocks.2.tcn.2.weight", 3, False), ("blocks.2.tcn.2.bias", 3, True)]),
    "msg3d": (3, [("input_norm.bn.bias", 0, True), ("stages.0.g3d.0.gcn.A_res", 1, False),
                  ("stages.0.factorized.1.branches.0.3.0.weight", 1, False),
                  ("stages.1.g3d.1.collapse.1.weight", 2, True),
                  ("stages.2.factorized.0.mlp.0.weight", 3, False)]),
}


def test_every_registered_encoder_is_hand_checked():
    assert sorted(HAND_CHECKED) == sorted(list_encoders())


@pytest.mark.parametrize("name", sorted(HAND_CHECKED))
def test_declared_layer_ids_and_lr_scales(name):
    depth, expected = HAND_CHECKED[name]
    encoder = build_encoder(name, "tiny", **KW)
    assert encoder.num_layers == depth
    ids = encoder_layer_ids(encoder)
    assert set(range(depth + 1)) == set(ids.values())  # every layer id is used
    exempt = encoder.no_weight_decay()
    params = dict(encoder.named_parameters())
    for pname, layer, no_decay in expected:
        assert (ids[pname], pname in exempt) == (layer, no_decay), pname
    assert exempt >= {n for n, p in params.items() if p.ndim == 1}

    head = nn.Linear(encoder.feature_dim, 5)
    groups = finetune_param_groups(encoder, head, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(scale) == len(params) + 2 == sum(len(g["params"]) for g in groups)
    for pname, layer, no_decay in expected:  # 0.5 ** (D + 1 - layer)
        assert scale[id(params[pname])] == (0.5 ** (depth + 1 - layer), 0.0 if no_decay else 0.05)
    assert scale[id(head.weight)] == (1.0, 0.05) and scale[id(head.bias)] == (1.0, 0.0)


def test_dste_lr_scales_by_hand():
    model = Classifier(build_encoder("dste", "tiny", **KW), 5, seed=0)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.8)
    scale = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert scale[id(params["encoder.t_embed.fc1.weight"])] == pytest.approx(0.512)  # 0.8 ** 3
    assert scale[id(params["encoder.s_stream.layers.0.attn.qkv.weight"])] == pytest.approx(0.64)
    assert scale[id(params["encoder.t_stream.layers.1.attn.qkv.weight"])] == pytest.approx(0.8)
    assert scale[id(params["head.weight"])] == 1.0
    assert sorted({g["lr"] for g in groups}) == pytest.approx([0.512, 0.64, 0.8, 1.0])


class Undeclared(nn.Module):
    """An encoder that forgot num_layers / layer_id / no_weight_decay."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.feature_dim = 4


def test_an_encoder_without_declarations_is_an_error():
    with pytest.raises(TypeError, match="encoder Undeclared does not declare its optimiser groups: "
                                        "missing num_layers, layer_id, no_weight_decay"):
        finetune_param_groups(Undeclared(), nn.Linear(4, 2), 0.05, 0.8)
    model = Classifier.__new__(Classifier)
    nn.Module.__init__(model)
    model.encoder, model.head = Undeclared(), nn.Linear(4, 2)
    with pytest.raises(TypeError, match="does not declare"):  # also with layer decay off
        param_groups(model, weight_decay=0.05, layer_decay=1.0)


def test_bad_declarations_are_errors():
    enc = Undeclared()
    enc.num_layers = 1
    enc.layer_id = lambda name: 2
    enc.no_weight_decay = lambda: {"proj.bias"}
    with pytest.raises(ValueError, match=r"layer ids outside \[0, 1\]: \{'proj.weight': 2"):
        finetune_param_groups(enc, nn.Linear(4, 2), 0.05, 0.8)
    enc.layer_id = lambda name: 1
    enc.no_weight_decay = lambda: {"proj.gamma"}
    with pytest.raises(ValueError, match=r"no_weight_decay\(\) names unknown parameters \['proj.gamma'\]"):
        finetune_param_groups(enc, nn.Linear(4, 2), 0.05, 0.8)


def test_the_unified_encoder_declares_its_groups():
    from models.unified import UnifiedEncoder
    unified = UnifiedEncoder(build_encoder("sttr", "tiny", **KW))
    ids = encoder_layer_ids(unified)
    assert unified.num_layers == 2
    assert ids["t_embed.m.fc1.weight"] == ids["s_fuse.weight"] == ids["s_pos"] == 0
    assert ids["s_stream.layers.1.ffn.fc2.weight"] == 2
    assert {"s_pos", "t_embed.b.norm.weight"} <= unified.no_weight_decay()
    assert "t_fuse.weight" not in unified.no_weight_decay()
