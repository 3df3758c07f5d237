"""models.export: a checkpoint's encoder as safetensors (weights + config + SHA-256), loaded
back by --pretrained with identical features; a paper-size file is under a third of last.pt."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

import action_retrieval
import engine
from evaluation.features import (CheckpointError, build_eval_encoder, extract, read_checkpoint,
                                 resolve_encoder_config)
from feeders.layouts import get_layout
from feeders.store import open_store
from feeders.synthetic import write_synthetic
from models import build_encoder
from models.export import export_encoder
from models.export import main as export_main
from models.usdrl import USDRL


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic dataset and a pretrain-style last.pt (model, optimizer state, meta)."""
    data = write_synthetic(tmp_path_factory.mktemp("syn") / "data", 24, seed=0)
    store = open_store(data)
    enc = build_encoder("dste", "tiny", layout=store.layout, clip_len=12, channels=3,
                        bodies=2, seed=4)
    model = USDRL(enc)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 3, 12, 25, 2), num_views=4)["t"].sum().backward()
    opt.step()
    config = {"backbone": "dste", "preset": "tiny", "stream": "b", "clip_len": 12,
              "spatial_channels": 3, "normalize": "first_frame", "lr": 5e-4}
    ckpt = tmp_path_factory.mktemp("run") / "last.pt"
    engine.save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                  "epoch": 5, "meta": {"config": config, "git_commit": "abc"}})
    return data, ckpt


def features(path, data):
    store = open_store(data)
    ckpt = read_checkpoint(path)
    unset = type("Flags", (), dict.fromkeys(("backbone", "preset", "stream", "clip_len",
                                             "spatial_channels", "normalize")))()
    cfg = resolve_encoder_config(unset, ckpt, path, store)
    enc = build_eval_encoder(cfg, store, seed=99, ckpt=ckpt, path=path)
    info = engine.DistInfo(0, 1, 0, torch.device("cpu"))
    return cfg, extract(enc, store, "xsub_val", stream=cfg["stream"], clip_len=cfg["clip_len"],
                        spatial_channels=cfg["spatial_channels"], info=info, dtype=None)[0]


def test_export_load_identical_features_and_hash(run, tmp_path, capsys):
    data, ckpt = run
    out = tmp_path / "encoder.safetensors"
    digest = export_main([str(ckpt), "--out", str(out)])
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest in capsys.readouterr().out
    assert (tmp_path / "encoder.safetensors.sha256").read_text() == f"{digest}  encoder.safetensors\n"
    with safe_open(str(out), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == "skelssl-encoder" and meta["epoch"] == "5"
    assert json.loads(meta["config"]) == {"backbone": "dste", "preset": "tiny", "stream": "b",
                                          "clip_len": 12, "spatial_channels": 3,
                                          "normalize": "first_frame"}
    assert json.loads(meta["pretrain_config"])["lr"] == 5e-4 and meta["git_commit"] == "abc"
    state = engine.load_checkpoint(ckpt)["model"]
    assert keys == {k[len("encoder."):] for k in state if k.startswith("encoder.")}  # no projectors
    cfg_pt, want = features(ckpt, data)
    cfg_st, got = features(f"{out}#sha256={digest}", data)
    assert cfg_pt == cfg_st and torch.equal(want, got)
    # --pretrained takes the file (and its hash) in an evaluation entry point
    res = action_retrieval.main(["--data", str(data), "--output", str(tmp_path / "knn"),
                                 "--pretrained", f"{out}#sha256={digest}", "--workers", "0",
                                 "--precision", "fp32"])
    assert res["stream"] == "b" and res["clip_len"] == 12
    with pytest.raises(CheckpointError, match="SHA-256 is .* expected 0000"):
        read_checkpoint(f"{out}#sha256={'0' * 64}")
    with pytest.raises(CheckpointError, match="64 hex digits"):
        read_checkpoint(f"{out}#sha256=xyz")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(out.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(bad)
    with pytest.raises(SystemExit):
        export_main([str(ckpt), "--out", str(tmp_path / "x.pt")])  # parser.error


def test_paper_encoder_file_under_a_third_of_last_pt():
    """Sizes from the state dicts of the paper DSTE + projectors with Adam (no training):
    last.pt holds the model, Adam's two moments per parameter and small extras; the encoder
    file holds the encoder's tensors and a small header."""
    torch.manual_seed(0)
    layout = get_layout("ntu25")
    enc = build_encoder("dste", "paper", layout=layout, clip_len=64, channels=3, bodies=2, seed=0)
    model = USDRL(enc)
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    model_bytes = nbytes(model.state_dict().values())
    adam_bytes = 2 * nbytes(p for p in model.parameters())  # exp_avg + exp_avg_sq
    encoder_bytes = nbytes(enc.state_dict().values())
    last_pt = model_bytes + adam_bytes
    assert encoder_bytes < last_pt / 3
    print(f"paper DSTE: last.pt >= {last_pt / 2**20:.0f} MiB, encoder file "
          f"{encoder_bytes / 2**20:.0f} MiB ({last_pt / encoder_bytes:.1f}x smaller)")


def test_exported_file_size_is_the_encoder_tensors(run, tmp_path):
    data, ckpt = run
    out = tmp_path / "enc.safetensors"
    export_encoder(ckpt, out)
    state = engine.load_checkpoint(ckpt)["model"]
    enc_bytes = sum(v.numel() * v.element_size() for k, v in state.items()
                    if k.startswith("encoder."))
    assert enc_bytes <= out.stat().st_size < enc_bytes + 64 * 1024  # + header and metadata
