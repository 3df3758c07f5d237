"""python -m models.convert: released checkpoints imported exactly, and models.load_pretrained."""
import json

import pytest
import torch

import action_recognition
import action_retrieval
from feeders.layouts import get_layout
from feeders.streams import to_stream
from feeders.synthetic import write_synthetic
from models import load_pretrained
from models.checkpoint import PretrainedError
from models.convert import main as convert_main
from models.usdrl import USDRL

STREAMS = {"joint": "j", "bone": "b", "motion": "m"}


@pytest.fixture(scope="module")
def release(shared_fixtures):
    folder = shared_fixtures / "usdrl_release"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder / "checkpoint_0450.pth.tar", folder / "expected.pt"


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "usdrl.pt"
    convert_main(["--from", "usdrl", "--src", str(release[0]), "--out", str(out)])
    return out


def test_the_import_reads_the_configuration_from_the_tensors(imported, release):
    ckpt = torch.load(imported, weights_only=True)
    assert ckpt["config"] == {"backbone": "dste", "preset": "paper", "encoder_overrides": {"hidden": 64},
                              "clip_len": 64, "layout": "ntu25", "channels": 3, "bodies": 2,
                              "spatial_channels": 3, "proj_mult": 2, "stream": "j",
                              "normalize": "first_frame"}
    assert ckpt["source"]["format"] == "usdrl" and ckpt["source"]["epoch"] == 451
    # the projector bias in front of each BatchNorm is folded into its running mean
    theirs = torch.load(release[0], weights_only=True)["state_dict"]
    for name in ("t_proj", "s_proj", "i_proj"):
        for linear, bn in (("0", "1"), ("3", "4")):
            assert torch.equal(ckpt["model"][f"{name}.{bn}.running_mean"],
                               theirs[f"module.{name}.{bn}.running_mean"] - theirs[f"module.{name}.{linear}.bias"])
            assert f"{name}.{linear}.bias" not in ckpt["model"]


def test_imported_model_computes_what_the_release_computes(imported, release):
    encoder = load_pretrained(imported)
    assert not encoder.training and encoder.feature_dim == 128
    ckpt = torch.load(imported, weights_only=True)
    model = USDRL(encoder, proj_mult=ckpt["config"]["proj_mult"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    expected = torch.load(release[1], weights_only=True)
    parents = get_layout("ntu25").parents
    with torch.no_grad():
        for modality, stream in STREAMS.items():
            out = encoder(to_stream(expected["x"], stream, parents, 3))
            got = {"global": out.global_feat, "dense_t": out.frames, "dense_s": out.joints,
                   "z_t": model.t_proj(out.temporal), "z_s": model.s_proj(out.spatial),
                   "z_i": model.i_proj(out.global_feat)}
            for key, value in got.items():
                want = expected[f"{modality}/{key}"]
                assert value.shape == want.shape
                assert (value - want).abs().max() < 1e-5, f"{modality}/{key}"


def test_every_entry_point_takes_the_import_as_pretrained(imported, tmp_path):
    data = write_synthetic(tmp_path / "data", 16, seed=0)
    common = ["--data", str(data), "--pretrained", str(imported), "--workers", "0",
              "--precision", "fp32"]
    knn = action_retrieval.main([*common, "--output", str(tmp_path / "knn")])
    assert 0.0 <= knn["top1"] <= 100.0
    saved = json.loads((tmp_path / "knn" / "knn.json").read_text())
    assert saved["clip_len"] == 64 and saved["stream"] == "j"
    action_recognition.main([*common, "--output", str(tmp_path / "lin"), "--epochs", "1",
                             "--batch-size", "8", "--no-cache"])
    assert (tmp_path / "lin" / "linear.json").is_file()
    action_recognition.main([*common, "--output", str(tmp_path / "ft"), "--mode", "finetune",
                             "--epochs", "1", "--batch-size", "4", "--stream", "b"])
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["pretrained_stream"] == "j"


def _write(path, state):
    torch.save({"epoch": 1, "state_dict": state, "optimizer": {}}, path)
    return path


def test_bad_release_files_name_the_file_and_the_keys(release, tmp_path, capsys):
    theirs = torch.load(release[0], weights_only=True)["state_dict"]
    out = str(tmp_path / "out.pt")

    def fails(src, *extra):
        with pytest.raises(SystemExit) as err:
            convert_main(["--from", "usdrl", "--src", str(src), "--out", out, *extra])
        return err.value.code if isinstance(err.value.code, int) else str(err.value.code)

    missing = {k: v for k, v in theirs.items() if k != "module.backbone.s_tr1.DSA.wt2.bias"}
    msg = fails(_write(tmp_path / "missing.pth.tar", missing))
    assert "missing.pth.tar: not a usdrl release checkpoint: missing key 'backbone.s_tr1.DSA.wt2.bias'" in msg
    extra = {**theirs, "module.backbone.extra.weight": torch.zeros(2)}
    msg = fails(_write(tmp_path / "extra.pth.tar", extra))
    assert "extra.pth.tar: unexpected keys for a usdrl release checkpoint: ['backbone.extra.weight']" in msg
    unshared = dict(theirs)
    unshared["module.backbone.t_tr.DSA.attn.out_proj.bias"] = unshared["module.backbone.t_tr.DSA.attn.out_proj.bias"] + 1
    assert "backbone.t_tr.CA.attn and backbone.t_tr.DSA.attn differ" in fails(
        _write(tmp_path / "unshared.pth.tar", unshared))
    assert "nope.pth.tar does not exist" in fails(tmp_path / "nope.pth.tar")
    (tmp_path / "garbage.pth.tar").write_bytes(b"not a checkpoint")
    assert "garbage.pth.tar could not be loaded" in fails(tmp_path / "garbage.pth.tar")
    assert "50 spatial tokens are not a whole number of bodies of the 17 joints" in fails(
        release[0], "--layout", "coco17")
    assert fails(release[0], "--layout", "ntu26") == 2
    assert "unknown layout 'ntu26'" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()  # nothing half-written


def test_load_pretrained_errors_name_the_file(imported, tmp_path):
    with pytest.raises(PretrainedError, match="nope.pt does not exist"):
        load_pretrained(tmp_path / "nope.pt")
    ckpt = torch.load(imported, weights_only=True)
    del ckpt["model"]["encoder.s_pos"]
    torch.save(ckpt, tmp_path / "short.pt")
    with pytest.raises(PretrainedError, match=r"short.pt does not hold weights of its dste encoder "
                                              r"\(missing: \['s_pos'\]\)"):
        load_pretrained(tmp_path / "short.pt")
    torch.save({"model": {}}, tmp_path / "noconfig.pt")
    with pytest.raises(PretrainedError, match="noconfig.pt: expected a 'model' state dict and a config"):
        load_pretrained(tmp_path / "noconfig.pt")
