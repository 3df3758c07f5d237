"""python -m models.convert: released checkpoints imported exactly, and models.load_pretrained."""
import json

import pytest
import torch

import action_recognition
import action_retrieval
from evaluation.report import main as report_main
from feeders.layouts import get_layout
from feeders.streams import to_stream
from feeders.synthetic import write_synthetic
from models import load_pretrained
from models.base import sinusoidal_encoding, spatial_tokens, temporal_tokens
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


def test_every_entry_point_takes_the_import_as_pretrained(imported, tmp_path, capsys):
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
    finetune = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert finetune["pretrained_stream"] == "j"
    # every result carries its protocol, and the report reads the three runs into one table
    assert saved["protocol"] == {"kind": "knn", "k": 1}
    assert finetune["protocol"] == {"kind": "finetune", "label_fraction": 1.0}
    linear = json.loads((tmp_path / "lin" / "linear.json").read_text())
    assert linear["protocol"] == {"kind": "linear", "label_fraction": 1.0}
    capsys.readouterr()
    assert report_main([str(tmp_path / d) for d in ("ft", "knn", "lin")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[:2] for line in lines[2:]] == [
        ["| ft", "fine-tune"], ["| knn", "KNN-1"], ["| lin", "linear probe"]]


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


def test_the_release_file_itself_is_refused_with_the_import_command(release, tmp_path):
    from evaluation.features import CheckpointError
    data = write_synthetic(tmp_path / "data", 16, seed=0)
    with pytest.raises(CheckpointError, match=r"checkpoint_0450.pth.tar: expected a dict with a "
                                              r"'model' state dict .* python -m models.convert --from"):
        action_retrieval.main(["--data", str(data), "--pretrained", str(release[0]),
                               "--output", str(tmp_path / "o")])


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


# ----------------------------------------------------------------------------- UmURL
class _ReleaseEmbedding(torch.nn.Module):
    """The UmURL release's modality embedding: t_embedding / s_embedding Sequentials."""

    def __init__(self, t_in, s_in, hidden):
        super().__init__()
        def mlp(n):
            return torch.nn.Sequential(torch.nn.Linear(n, hidden), torch.nn.LayerNorm(hidden),
                                       torch.nn.ReLU(), torch.nn.Linear(hidden, hidden))
        self.t_embedding, self.s_embedding = mlp(t_in), mlp(s_in)


class _ReleaseUmURL(torch.nn.Module):
    """The release's module tree and forward (HuiGuanLab/UmURL, METHOD.md section 8), written
    from its state-dict names with torch's TransformerEncoder: the reference for the importer."""

    def __init__(self, t_in, s_in, hidden, clip_len):
        super().__init__()
        self.backbone = torch.nn.Module()
        for m in "jbm":
            setattr(self.backbone, f"{m}_emb", _ReleaseEmbedding(t_in, s_in, hidden))
        fusion = torch.nn.Module()
        fusion.t_fusion = torch.nn.Sequential(torch.nn.Linear(hidden, hidden, bias=False))
        fusion.s_fusion = torch.nn.Sequential(torch.nn.Linear(hidden, hidden, bias=False))
        self.backbone.mm_fusion = fusion
        enc = torch.nn.Module()
        enc.pe = torch.nn.Module()
        enc.pe.register_buffer("pe", sinusoidal_encoding(200, hidden)[None])
        layer = torch.nn.TransformerEncoderLayer(hidden, 1, hidden, dropout=0.0, batch_first=True)
        enc.t_tr = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        enc.s_tr = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.backbone.ma_encoder = enc
        for m in "jbm":
            setattr(self, f"{m}_projector", torch.nn.Sequential(
                torch.nn.Linear(2 * hidden, 2 * hidden), torch.nn.BatchNorm1d(2 * hidden)))
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():  # move every weight off its initial value (norms included)
            for p in self.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=generator))

    def fused(self, jmb):
        """The release's mm_forward on x (N, 3C, L, V, M) = joint, motion, bone -> (N, 2H)."""
        b = self.backbone
        parts = dict(zip("jmb", jmb.chunk(3, dim=1)))
        t = sum(getattr(b, f"{m}_emb").t_embedding(temporal_tokens(parts[m])) for m in "jbm") / 3
        s = sum(getattr(b, f"{m}_emb").s_embedding(spatial_tokens(parts[m])) for m in "jbm") / 3
        t, s = b.mm_fusion.t_fusion(t), b.mm_fusion.s_fusion(s)
        enc = b.ma_encoder
        t = enc.t_tr(t + enc.pe.pe[:, :t.shape[1]])
        return torch.cat([t.amax(1), enc.s_tr(s).amax(1)], dim=1)


def test_umurl_release_import_computes_the_release_fused_feature(tmp_path):
    hidden, clip_len = 16, 12
    ref = _ReleaseUmURL(2 * 25 * 3, clip_len * 3, hidden, clip_len).eval()
    src = _write(tmp_path / "umurl.pth.tar", {f"module.{k}": v for k, v in ref.state_dict().items()})
    out = tmp_path / "umurl.pt"
    convert_main(["--from", "umurl", "--src", str(src), "--out", str(out)])
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["config"]["backbone"] == "sttr" and ckpt["config"]["stream"] == "jmb"
    assert ckpt["config"]["encoder_overrides"] == {"hidden": hidden, "depth": 1}
    assert (ckpt["config"]["clip_len"], ckpt["config"]["bodies"]) == (clip_len, 2)
    encoder = load_pretrained(out)
    x = torch.randn(3, 3, clip_len, 25, 2, generator=torch.Generator().manual_seed(0))
    x[2, ..., 1] = 0  # one body
    jmb = to_stream(x, "jmb", get_layout("ntu25").parents, 3)
    with torch.no_grad():
        got, want = encoder(jmb).global_feat, ref.fused(jmb)
    assert (got - want).abs().max() < 1e-5

    data = write_synthetic(tmp_path / "data", 16, seed=0)
    knn = action_retrieval.main(["--data", str(data), "--pretrained", str(out), "--workers", "0",
                                 "--precision", "fp32", "--output", str(tmp_path / "knn")])
    assert json.loads((tmp_path / "knn" / "knn.json").read_text())["stream"] == "jmb"
    assert 0.0 <= knn["top1"] <= 100.0

    state = {f"module.{k}": v for k, v in ref.state_dict().items()
             if k != "backbone.mm_fusion.s_fusion.0.weight"}
    with pytest.raises(SystemExit, match="missing key 'backbone.mm_fusion.s_fusion.0.weight'"):
        convert_main(["--from", "umurl", "--src", str(_write(tmp_path / "bad.pth.tar", state)),
                      "--out", str(tmp_path / "bad.pt")])


def test_load_pretrained_reads_a_pretrain_checkpoint_geometry_from_its_dataset(tmp_path):
    import engine
    from models import build_encoder

    data = write_synthetic(tmp_path / "data", 16, seed=0)
    encoder = build_encoder("stgcn", "tiny", layout="ntu25", clip_len=12, channels=3, bodies=2, seed=4)
    config = {"backbone": "stgcn", "preset": "tiny", "stream": "j", "clip_len": 12, "data": str(data)}
    engine.save_checkpoint(tmp_path / "last.pt", {"model": USDRL(encoder).state_dict(),
                                                  "meta": {"config": config}})
    loaded = load_pretrained(tmp_path / "last.pt")
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(),
                                                 loaded.state_dict().values()))
    config["data"] = str(tmp_path / "gone")
    engine.save_checkpoint(tmp_path / "moved.pt", {"model": USDRL(encoder).state_dict(),
                                                   "meta": {"config": config}})
    with pytest.raises(PretrainedError, match=r"moved.pt stores no clip geometry .*gone cannot be opened"):
        load_pretrained(tmp_path / "moved.pt")
