"""Import a released checkpoint as a checkpoint of this suite.

    python -m models.convert --from usdrl --src checkpoint_0450.pth.tar --out usdrl_ntu60.pt
    python action_recognition.py --pretrained usdrl_ntu60.pt --data data/ntu60 ...

`--from usdrl`: the USDRL release (wengwanjiang/USDRL), `{"epoch", "state_dict", "optimizer"}`
with `module.`-prefixed keys: the DSTE `backbone.*` and the `t_proj`, `s_proj`, `i_proj`
projectors. The file is read with `torch.load(weights_only=True)`; the encoder configuration is
inferred from the tensors (hidden size H from the spatial table, the number of layers, the
clip length L from the temporal token mixer, the channels C from the spatial embedding, the
bodies M from the spatial table and `--layout`'s joints, the projector multiplier); the names are
mapped onto this suite's DSTE (models/dste.py) and USDRL heads (models/usdrl.py); the biases of
the release's projector Linear layers in front of a BatchNorm are folded into that BatchNorm's
running mean (in eval mode BN(Wx + b) with mean mu is BN(Wx) with mean mu - b; in training mode
the batch mean cancels b anyway). Every tensor of the file must be used exactly once.

`--from umurl`: the UmURL release (HuiGuanLab/UmURL, METHOD.md section 8), `backbone.*` (the
joint / bone / motion embedders `{j,b,m}_emb`, the fusion `mm_fusion`, the shared encoder
`ma_encoder` of torch TransformerEncoder layers) and the `{j,b,m}_projector` heads: mapped onto
an STTR-based unified encoder (models/unified.py, the `jmb` stream) with `depth` = the release's
layers (its temporal table is added once, as STTR adds it before its single layer; it has no
spatial table, so `s_pos` is zero). Only the encoder is imported (its projectors are not
this suite's UmURL heads: they are left out, and said so).

The output is a checkpoint every entry point takes as `--pretrained` (`model` with `encoder.`
weights, `config` naming backbone, preset, overrides, stream, clip geometry) and that
`models.load_pretrained(path)` turns back into the encoder. Written atomically. Both releases
use single-head attention (the tensors cannot tell the number of heads); so does the import.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import torch

from feeders.dataset import NORMALIZATIONS
from feeders.layouts import get_layout
from feeders.store import file_sha256
from feeders.streams import FUSED, FUSED_PARTS
from models import dste, sttr
from models.base import sinusoidal_encoding
from models.checkpoint import PretrainedError, read_checkpoint_file

FORMATS = ("usdrl", "umurl")
PROJECTORS = ("t_proj", "s_proj", "i_proj")


class ReleaseState:
    """The release's state dict with a record of which keys were taken.

    `take(key)` returns a tensor and marks it used; `check_all_used()` raises a PretrainedError
    listing the keys nothing took (unexpected) and `take` one naming a missing key.
    """

    def __init__(self, state: dict, path: Path, fmt: str):
        self.state, self.path, self.fmt = state, path, fmt
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise PretrainedError(f"{self.path}: not a {self.fmt} release checkpoint: missing key "
                                  f"{key!r} (it has {len(self.state)} keys, e.g. "
                                  f"{sorted(self.state)[:3]})")
        self.used.add(key)
        return self.state[key]

    def check_all_used(self) -> None:
        unexpected = sorted(set(self.state) - self.used)
        if unexpected:
            raise PretrainedError(f"{self.path}: unexpected keys for a {self.fmt} release "
                                  f"checkpoint: {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")


def release_state(ckpt: dict, path: Path, fmt: str) -> ReleaseState:
    """The model state dict of a release file (`state_dict`, `model` or the dict itself), with a
    DataParallel / DDP `module.` prefix removed."""
    state = ckpt.get("state_dict", ckpt.get("model", ckpt))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"{path}: expected a state dict of tensors under 'state_dict'")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return ReleaseState(state, path, fmt)


def layer_count(rs: ReleaseState, name: str) -> int:
    """Number of release DSTE layers `<name>`, `<name>1`, `<name>2`, ... (`backbone.t_tr`, ...)."""
    depth = 0
    while rs.has(f"{name}{depth or ''}.CA.attn.in_proj_weight"):
        depth += 1
    return depth


# ----------------------------------------------------------------------------- USDRL
def _embedding(rs: ReleaseState, src: str, dst: str) -> dict:
    """Linear -> LayerNorm -> ReLU -> Linear: release indices 0, 1, 3 -> fc1, norm, fc2."""
    return {f"{dst}.{ours}.{p}": rs.take(f"{src}.{theirs}.{p}")
            for theirs, ours in (("0", "fc1"), ("1", "norm"), ("3", "fc2")) for p in ("weight", "bias")}


def _shared_attention(rs: ReleaseState, layer: str, dst: str) -> dict:
    """The release keeps one attention module under both CA.attn and DSA.attn (shared, as here):
    torch MultiheadAttention in_proj (q, k, v stacked) -> qkv, out_proj -> proj."""
    out = {}
    for theirs, ours in (("in_proj_weight", "qkv.weight"), ("in_proj_bias", "qkv.bias"),
                         ("out_proj.weight", "proj.weight"), ("out_proj.bias", "proj.bias")):
        ca, dsa = rs.take(f"{layer}.CA.attn.{theirs}"), rs.take(f"{layer}.DSA.attn.{theirs}")
        if not torch.equal(ca, dsa):
            raise PretrainedError(f"{rs.path}: {layer}.CA.attn and {layer}.DSA.attn differ; this "
                                  "suite's DSTE layer shares one attention module between them")
        out[f"{dst}.attn.{ours}"] = ca
    return out


def _dste_layer(rs: ReleaseState, layer: str, dst: str) -> dict:
    """One release DSTE layer (CA + DSA) -> models.dste.DSTELayer names."""
    out = _shared_attention(rs, layer, dst)
    out[f"{dst}.ca.pointwise.weight"] = rs.take(f"{layer}.CA.conv1.weight").squeeze(-1)  # (H, H, 1)
    out[f"{dst}.ca.pointwise.bias"] = rs.take(f"{layer}.CA.conv1.bias")
    for branch, ours in (("CA", "ca"), ("DSA", "dsa")):
        for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            for p in ("weight", "bias"):
                out[f"{dst}.{ours}.{part}.{p}"] = rs.take(f"{layer}.{branch}.{part}.{p}")
    for theirs, ours in (("wt1", "fc1"), ("wt2", "fc2")):
        for p in ("weight", "bias"):
            out[f"{dst}.dsa.mixer.{ours}.{p}"] = rs.take(f"{layer}.DSA.{theirs}.{p}")
    return out


def _check_temporal_table(rs: ReleaseState, key: str, clip_len: int, hidden: int) -> None:
    """The release stores its fixed sinusoidal table; this suite recomputes it (models.base)."""
    table = rs.take(key)[0, :clip_len]
    if not torch.allclose(table, sinusoidal_encoding(clip_len, hidden), atol=1e-4):
        raise PretrainedError(f"{rs.path}: {key} is not the sinusoidal table this suite uses")


def _projector(rs: ReleaseState, name: str) -> dict:
    """Release projector Linear(+bias) -> BN -> ReLU -> Linear(+bias) -> BN -> ReLU -> Linear
    onto models.usdrl.projector (no bias in front of a BN): each such bias is folded into the
    BN's running mean."""
    out = {}
    for linear, bn in (("0", "1"), ("3", "4")):
        out[f"{name}.{linear}.weight"] = rs.take(f"{name}.{linear}.weight")
        bias = rs.take(f"{name}.{linear}.bias") if rs.has(f"{name}.{linear}.bias") else 0.0
        out[f"{name}.{bn}.running_mean"] = rs.take(f"{name}.{bn}.running_mean") - bias
        for p in ("weight", "bias", "running_var", "num_batches_tracked"):
            out[f"{name}.{bn}.{p}"] = rs.take(f"{name}.{bn}.{p}")
    for p in ("weight", "bias"):
        out[f"{name}.6.{p}"] = rs.take(f"{name}.6.{p}")
    return out


def _preset_and_overrides(presets: dict, **found) -> tuple[str, dict]:
    """The first preset whose values equal `found`, else `paper` with the differing values as
    overrides."""
    for name, values in presets.items():
        if all(values[k] == v for k, v in found.items()):
            return name, {}
    return "paper", {k: v for k, v in found.items() if presets["paper"][k] != v}


def _bodies(rs: ReleaseState, tokens: int, layout: str) -> int:
    joints = get_layout(layout).num_joints
    if tokens % joints:
        raise PretrainedError(f"{rs.path}: {tokens} spatial tokens are not a whole number of "
                              f"bodies of the {joints} joints of layout {layout!r} (--layout)")
    return tokens // joints


def convert_usdrl(rs: ReleaseState, layout: str) -> tuple[dict, dict]:
    """Release USDRL state -> (this suite's USDRL state dict: `encoder.*` + projectors, config)."""
    spe = rs.take("backbone.spe")                                   # (1, M*V, H)
    tokens, hidden = spe.shape[1], spe.shape[2]
    depth = layer_count(rs, "backbone.t_tr")
    if depth == 0 or layer_count(rs, "backbone.s_tr") != depth:
        raise PretrainedError(f"{rs.path}: expected as many temporal (backbone.t_tr*) as spatial "
                              f"(backbone.s_tr*) DSTE layers, at least one")
    clip_len = rs.state["backbone.t_tr.DSA.wt1.weight"].shape[0]     # (L, L) token mixer
    s_in = rs.state["backbone.ske_emb.s_embedding.0.weight"].shape[1]  # L * C
    channels, bodies = s_in // clip_len, _bodies(rs, tokens, layout)
    state = {"encoder.s_pos": spe[0]}
    state.update(_embedding(rs, "backbone.ske_emb.t_embedding", "encoder.t_embed"))
    state.update(_embedding(rs, "backbone.ske_emb.s_embedding", "encoder.s_embed"))
    _check_temporal_table(rs, "backbone.tpe.pe", clip_len, hidden)
    for stream in ("t", "s"):
        for i in range(depth):
            state.update(_dste_layer(rs, f"backbone.{stream}_tr{i or ''}",
                                     f"encoder.{stream}_stream.layers.{i}"))
    for name in PROJECTORS:
        state.update(_projector(rs, name))
    rs.check_all_used()
    proj_mult = state["t_proj.0.weight"].shape[0] // hidden
    preset, overrides = _preset_and_overrides(dste.PRESETS, hidden=hidden, depth=depth)
    config = {"backbone": "dste", "preset": preset, "encoder_overrides": overrides,
              "clip_len": clip_len, "layout": layout, "channels": channels, "bodies": bodies,
              "spatial_channels": channels, "proj_mult": proj_mult}
    return state, config


# ----------------------------------------------------------------------------- UmURL
def _torch_encoder_layer(rs: ReleaseState, layer: str, dst: str) -> dict:
    """torch TransformerEncoderLayer (post-norm, ReLU FFN) -> models.sttr.PostNormLayer names."""
    out = {}
    for theirs, ours in (("self_attn.in_proj_weight", "attn.qkv.weight"),
                         ("self_attn.in_proj_bias", "attn.qkv.bias"),
                         ("self_attn.out_proj.weight", "attn.proj.weight"),
                         ("self_attn.out_proj.bias", "attn.proj.bias"),
                         ("linear1.weight", "ffn.fc1.weight"), ("linear1.bias", "ffn.fc1.bias"),
                         ("linear2.weight", "ffn.fc2.weight"), ("linear2.bias", "ffn.fc2.bias"),
                         ("norm1.weight", "norm1.weight"), ("norm1.bias", "norm1.bias"),
                         ("norm2.weight", "norm2.weight"), ("norm2.bias", "norm2.bias")):
        out[f"{dst}.{ours}"] = rs.take(f"{layer}.{theirs}")
    return out


def convert_umurl(rs: ReleaseState, layout: str) -> tuple[dict, dict]:
    """Release UmURL state -> (unified STTR encoder state dict under `encoder.`, config)."""
    enc = "backbone.ma_encoder"
    depth = 0
    while rs.has(f"{enc}.t_tr.layers.{depth}.self_attn.in_proj_weight"):
        depth += 1
    if depth == 0 or not rs.has(f"{enc}.s_tr.layers.{depth - 1}.self_attn.in_proj_weight") \
            or rs.has(f"{enc}.s_tr.layers.{depth}.self_attn.in_proj_weight"):
        raise PretrainedError(f"{rs.path}: expected as many temporal ({enc}.t_tr.layers.*) as "
                              f"spatial ({enc}.s_tr.layers.*) transformer layers, at least one")
    if depth > 1:
        raise PretrainedError(f"{rs.path}: {depth} layers per stream; the release adds its "
                              "temporal table once, before the first layer, this suite's STTR "
                              "before every layer, so only 1-layer UmURL models import exactly")
    t_w = rs.state["backbone.j_emb.t_embedding.0.weight"]          # (H, M*V*C)
    s_w = rs.state["backbone.j_emb.s_embedding.0.weight"]          # (H, L*C)
    hidden = t_w.shape[0]
    joints = get_layout(layout).num_joints
    # the tensors give M*V*C and L*C only: C is taken as 3 (xyz) unless 3 does not divide them
    channels = next((c for c in (3, 2) if t_w.shape[1] % (c * joints) == 0 and s_w.shape[1] % c == 0), None)
    if channels is None:
        raise PretrainedError(f"{rs.path}: temporal embedding input {t_w.shape[1]} is not "
                              f"bodies x {joints} joints (--layout {layout}) x 2 or 3 channels")
    bodies, clip_len = t_w.shape[1] // (channels * joints), s_w.shape[1] // channels
    state = {"encoder.s_pos": torch.zeros(bodies * joints, hidden)}  # the release has none
    for m in FUSED_PARTS:  # the release's j_emb, m_emb, b_emb use the same letters
        state.update(_embedding(rs, f"backbone.{m}_emb.t_embedding", f"encoder.t_embed.{m}"))
        state.update(_embedding(rs, f"backbone.{m}_emb.s_embedding", f"encoder.s_embed.{m}"))
    state["encoder.t_fuse.weight"] = rs.take("backbone.mm_fusion.t_fusion.0.weight")
    state["encoder.s_fuse.weight"] = rs.take("backbone.mm_fusion.s_fusion.0.weight")
    _check_temporal_table(rs, f"{enc}.pe.pe", clip_len, hidden)
    for stream in ("t", "s"):
        for i in range(depth):
            state.update(_torch_encoder_layer(rs, f"{enc}.{stream}_tr.layers.{i}",
                                              f"encoder.{stream}_stream.layers.{i}"))
    for key in [k for k in rs.state if re.fullmatch(r"[jbm]_projector\..*", k)]:
        rs.used.add(key)  # the release's heads: deliberately not imported (see the docstring)
    rs.check_all_used()
    preset, overrides = _preset_and_overrides(sttr.PRESETS, hidden=hidden, depth=depth)
    config = {"backbone": "sttr", "preset": preset, "encoder_overrides": overrides,
              "clip_len": clip_len, "layout": layout, "channels": channels, "bodies": bodies,
              "spatial_channels": channels, "stream": FUSED}
    return state, config


CONVERTERS = {"usdrl": convert_usdrl, "umurl": convert_umurl}


# ----------------------------------------------------------------------------- command line
def convert(fmt: str, src: Path, out: Path, layout: str = "ntu25", stream: str | None = None,
            normalize: str = "first_frame") -> dict:
    """Read release file `src` (format `fmt`), write this suite's checkpoint to `out`
    (atomically) and return it. `stream`: the input the release model was trained on (USDRL: j,
    m or b; the USDRL release trains on joints whatever its --moda says, METHOD.md section 1)."""
    ckpt = read_checkpoint_file(src)
    rs = release_state(ckpt, src, fmt)
    state, config = CONVERTERS[fmt](rs, layout)
    config.setdefault("stream", stream or "j")
    if stream is not None and stream != config["stream"]:
        raise PretrainedError(f"{src}: a {fmt} release model takes stream {config['stream']!r}, "
                              f"not --stream {stream}")
    config["normalize"] = normalize
    epoch = ckpt.get("epoch")
    result = {"model": state, "encoder_key": "encoder", "config": config,
              "source": {"format": fmt, "file": str(src), "sha256": file_sha256(src),
                         "epoch": int(epoch) if isinstance(epoch, (int, torch.Tensor)) else None}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        torch.save(result, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m models.convert",
        description="Import a released USDRL or UmURL checkpoint as a --pretrained checkpoint "
                    "of this suite (the encoder configuration is read from the tensors).")
    parser.add_argument("--from", dest="fmt", required=True, choices=FORMATS,
                        help="release format: usdrl (wengwanjiang/USDRL checkpoint_XXXX.pth.tar) "
                             "or umurl (HuiGuanLab/UmURL)")
    parser.add_argument("--src", type=Path, required=True, help="the release's checkpoint file")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    parser.add_argument("--layout", default="ntu25",
                        help="skeleton layout of the release's data (its joints give the bodies)")
    parser.add_argument("--stream", default=None, choices=("j", "m", "b"),
                        help="usdrl: the input stream the model was trained on (default j; the "
                             "release always trains on joints)")
    parser.add_argument("--normalize", default="first_frame", choices=NORMALIZATIONS,
                        help="the coordinate normalisation evaluations apply to this model's input")
    args = parser.parse_args(argv)
    try:
        get_layout(args.layout)
    except ValueError as err:
        parser.error(str(err))
    try:
        result = convert(args.fmt, args.src, args.out, args.layout, args.stream, args.normalize)
    except PretrainedError as err:
        sys.exit(f"python -m models.convert: error: {err}")
    cfg = result["config"]
    overrides = "".join(f" {k}={v}" for k, v in cfg["encoder_overrides"].items())
    print(f"wrote {args.out}: {cfg['backbone']} preset {cfg['preset']}{overrides}, stream "
          f"{cfg['stream']}, {cfg['clip_len']} frames, layout {cfg['layout']}, "
          f"{cfg['bodies']} bodies, {cfg['channels']} channels")


if __name__ == "__main__":
    main()
