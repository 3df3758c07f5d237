"""UmURL (METHOD.md section 8): the jmb stream, the unified encoder, the loss by hand and
against the release's direct form, the gather over two processes, and every evaluation from a
UmURL checkpoint (tiny settings on a tiny synthetic store)."""
import argparse
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import engine
import pretrain
from feeders.layouts import NTU25
from feeders.streams import bones, motion, to_stream
from methods.umurl import VIEW_INPUTS, UmURL, UmURLLoss
from models import build_encoder
from models.unified import UnifiedEncoder, encoder_for_stream


def tiny(seed=3, clip_len=8, **kw):
    return build_encoder("dste", "tiny", layout="ntu25", clip_len=clip_len, channels=3,
                         bodies=2, seed=seed, **kw)


def clips(n=3, clip_len=8, seed=1):
    return torch.randn(n, 3, clip_len, 25, 2, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- stream, encoder
def test_jmb_stream_concatenates_joint_motion_bone():
    x = clips()
    got = to_stream(x, "jmb", NTU25.parents)
    assert got.shape == (3, 9, 8, 25, 2)
    torch.testing.assert_close(got, torch.cat([x, motion(x), bones(x, NTU25.parents)], dim=1))


def test_unified_encoder_paths_by_hand():
    """Fused path = mean of the three modality embeddings -> bias-free Linear -> the base's
    streams -> max-pool; the uni-modal path skips the Linear; the joint embedder and the
    streams are the base's own modules."""
    base = tiny()
    enc = UnifiedEncoder(base, seed=3).eval()
    assert enc.t_embed["j"] is base.t_embed and enc.t_stream is base.t_stream
    assert enc.t_fuse.bias is None and enc.s_fuse.bias is None
    assert not torch.equal(enc.t_embed["m"].fc1.weight, enc.t_embed["b"].fc1.weight)
    x = clips()
    j, m, b = x, motion(x), bones(x, NTU25.parents)
    out = enc(to_stream(x, "jmb", NTU25.parents))
    assert out.global_feat.shape == (3, 64) and out.frames.shape == (3, 8, 32)
    assert out.joints.shape == (3, 50, 32)
    from models.base import spatial_tokens, temporal_tokens
    t = sum(enc.t_embed[k](temporal_tokens(v)) for k, v in zip("jmb", (j, m, b))) / 3
    s = sum(enc.s_embed[k](spatial_tokens(v)) for k, v in zip("jmb", (j, m, b))) / 3
    frames = enc.t_stream(t @ enc.t_fuse.weight.T, enc.t_pos)
    joints = enc.s_stream(s @ enc.s_fuse.weight.T, enc.s_pos)
    torch.testing.assert_close(out.frames, frames)
    torch.testing.assert_close(out.global_feat, torch.cat([frames.amax(1), joints.amax(1)], 1))
    # joints alone through the unified encoder = the base encoder (no fusion Linear)
    torch.testing.assert_close(enc.forward_modality(j, "j").global_feat, base.eval()(j).global_feat)
    with pytest.raises(ValueError, match=r"expected shape \(N, C, L, V, M\) = \(N, 9, 8, 25, 2\)"):
        enc(x)
    with pytest.raises(ValueError, match="unknown modality 'jm'"):
        enc.forward_modality(x, "jm")


def test_only_token_encoders_unify_and_only_jmb_gets_it():
    base = tiny()
    assert encoder_for_stream(base, "b") is base
    assert isinstance(encoder_for_stream(base, "jmb"), UnifiedEncoder)
    gcn = build_encoder("stgcn", "tiny", layout="ntu25", clip_len=8, channels=3, bodies=2)
    with pytest.raises(ValueError, match="needs a two-stream token encoder .*got STGCN"):
        encoder_for_stream(gcn, "jmb")


# ----------------------------------------------------------------------------- the loss
def test_umurl_loss_by_hand():
    """B = 2, D = 2: the MSEs and the variance-covariance terms worked out on paper."""
    zj, zuj = torch.tensor([[1., 0], [0, 1]]), torch.tensor([[1., 1], [0, 1]])
    zb = torch.tensor([[0., 0], [2, 2]])
    zm, zum = torch.tensor([[1., 0], [1, 0]]), torch.zeros(2, 2)
    z = {"j": torch.stack([zj, zuj]), "b": torch.stack([zb, zb]), "m": torch.stack([zm, zum])}
    total, terms = UmURLLoss()(z)
    # intra: MSE(zj, zuj) = 1/4, MSE(zb, zb) = 0, MSE(zm, 0) = 2/4
    assert terms["intra"].item() == pytest.approx(0.75)
    # C = [[2/3, 0], [1, 1]]: squared errors (1/9 + 1), (4/9 + 2), (1/9 + 1), each over 4
    assert terms["inter"].item() == pytest.approx((10 / 9 + 22 / 9 + 10 / 9) / 4)
    hinge = lambda var: max(0.0, 1 - math.sqrt(var + 1e-4))  # noqa: E731  (unbiased variances)
    # 5 * mean_j hinge(Var_j) + (1/D) * sum_{j != k} Cov_jk^2 for each of the six
    vc = [5 * hinge(0.5) + 2 * 0.5 ** 2 / 2,     # zj: variances 1/2, 1/2; covariance -1/2
          5 * (hinge(0.5) + hinge(0.0)) / 2,    # zuj: variances 1/2, 0; covariance 0
          5 * hinge(2.0) + 2 * 2.0 ** 2 / 2,    # zb: variances 2, 2; covariance 2
          5 * hinge(2.0) + 2 * 2.0 ** 2 / 2,    # zub = zb
          5 * hinge(0.0), 5 * hinge(0.0)]       # zm, zum: constant columns
    assert terms["varcov"].item() == pytest.approx(sum(vc), rel=1e-6)
    assert total.item() == pytest.approx(5 * (0.75 + 42 / 36) + sum(vc), rel=1e-6)


def _release_loss(z):
    """The UmURL release's loss (its pretrain.py), direct D x D form, as the reference."""
    def vc_reg(x):
        b, d = x.shape
        std_loss = torch.relu(1 - torch.sqrt(x.var(dim=0) + 1e-4)).mean()
        c = x - x.mean(0)
        cov = c.T @ c / (b - 1)
        return 5 * std_loss + (cov.square().sum() - cov.diagonal().square().sum()) / d
    (zj, zuj), (zb, zub), (zm, zum) = z["j"], z["b"], z["m"]
    center = (zj + zb + zm) / 3
    intra = F.mse_loss(zj, zuj) + F.mse_loss(zb, zub) + F.mse_loss(zm, zum)
    inter = F.mse_loss(zj, center) + F.mse_loss(zb, center) + F.mse_loss(zm, center)
    reg = sum(vc_reg(v) for v in (zj, zb, zm, zuj, zub, zum))
    return 5 * (intra + inter) + reg


def _embeddings(b=8, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(2, b, d, generator=g, dtype=torch.float64) * s + o
            for m, s, o in (("j", 1.0, 0.0), ("b", 0.3, 1.0), ("m", 2.0, -1.0))}


def test_umurl_loss_matches_the_release_form_and_runs_in_fp32():
    z = _embeddings()
    total, _ = UmURLLoss()(z)
    assert total.dtype == torch.float64
    torch.testing.assert_close(total, _release_loss(z), rtol=1e-10, atol=1e-10)
    half = {m: v.to(torch.bfloat16) for m, v in z.items()}
    total, terms = UmURLLoss()(half)
    assert total.dtype == torch.float32
    # collapse indicators first (a NaN from the encoder is named by them), then the loss terms
    assert list(terms) == ["std_j", "std_b", "std_m", "intra", "inter", "varcov", "total"]
    with pytest.raises(ValueError, match=r"z\['j'\] must be \(2, B >= 2, D\), got \(4, 8, 6\)"):
        UmURLLoss()({"j": torch.zeros(4, 8, 6)})


WORLD = 2


# ----------------------------------------------------------------------------- the method
def test_views_heads_and_one_encoder_pass():
    """View 0 -> joints, 1 -> bones, 2 -> motion, 3 -> all three fused; projector m sees the
    uni-modal feature of view m and the fused one; one batched encoder pass gives what
    separate passes give."""
    torch.manual_seed(0)
    model = UmURL(UnifiedEncoder(tiny(), seed=3), proj_mult=2).eval()
    assert set(model.proj) == {"j", "m", "b"} and model.proj["j"][-1].out_features == 128
    views = torch.randn(3, 4, 3, 8, 25, 2, generator=torch.Generator().manual_seed(1))
    args = argparse.Namespace(augment=False, rotate=0.0, spatial_channels=3)
    inputs = model.make_inputs(views, torch.Generator(), args, NTU25.parents)
    assert list(inputs) == list(VIEW_INPUTS) == ["j", "b", "m", "jmb"]
    torch.testing.assert_close(inputs["b"], bones(views[:, 1], NTU25.parents))
    torch.testing.assert_close(inputs["m"], motion(views[:, 2]))
    torch.testing.assert_close(inputs["jmb"], to_stream(views[:, 3], "jmb", NTU25.parents))
    z = model(inputs)
    assert {m: tuple(v.shape) for m, v in z.items()} == {m: (2, 3, 128) for m in "jmb"}
    fused = model.encoder(inputs["jmb"]).global_feat
    for m in "jmb":
        uni = model.encoder.forward_modality(inputs[m], m).global_feat
        torch.testing.assert_close(z[m][0], model.proj[m](uni), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(z[m][1], model.proj[m](fused), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def umurl_run(tmp_path_factory):
    from feeders.synthetic import write_synthetic
    root = tmp_path_factory.mktemp("umurl")
    data = write_synthetic(root / "demo", num_sequences=24, seed=0)
    out = root / "run"
    torch.set_num_threads(1)
    pretrain.main(["--method", "umurl", "--data", str(data), "--output", str(out),
                   "--backbone", "dste", "--preset", "tiny", "--clip-len", "16",
                   "--batch-size", "4", "--epochs", "1", "--workers", "0", "--seed", "3",
                   "--knn-every", "1"])
    return data, out


def test_umurl_pretrains_and_names_its_encoder(umurl_run):
    data, out = umurl_run
    ckpt = engine.load_checkpoint(out / "last.pt")
    assert ckpt["meta"]["config"]["method"] == "umurl"
    assert ckpt["meta"]["config"]["stream"] == "jmb" and ckpt["encoder_key"] == "encoder"
    assert {k.split(".")[0] for k in ckpt["model"]} == {"encoder", "proj"}
    assert "encoder.t_embed.b.fc1.weight" in ckpt["model"] and "encoder.t_fuse.weight" in ckpt["model"]


def test_every_evaluation_runs_from_a_umurl_checkpoint(umurl_run, tmp_path):
    """linear, KNN, fine-tune and semi-supervised fine-tune take the fused jmb path of a UmURL
    checkpoint (encoder flags from its config)."""
    import action_recognition
    import action_retrieval
    data, out = umurl_run
    common = ["--data", str(data), "--pretrained", str(out / "last.pt"), "--workers", "0"]
    res = action_recognition.main(["--mode", "linear", "--output", str(tmp_path / "lin"),
                                   "--epochs", "2", "--lr", "0.1", "--batch-size", "8", *common])
    assert res["stream"] == "jmb" and 0.0 <= res["top1"] <= 100.0
    res = action_retrieval.main(["--output", str(tmp_path / "knn"), *common])
    assert res["stream"] == "jmb" and 0.0 <= res["top1"] <= 100.0
    for extra in ([], ["--label-fraction", "0.5"]):
        res = action_recognition.main(["--mode", "finetune", "--output",
                                       str(tmp_path / f"ft{len(extra)}"), "--epochs", "1",
                                       "--batch-size", "4", "--layer-decay", "0.8", *extra,
                                       *common])
        assert res["stream"] == "jmb" and 0.0 <= res["top1"] <= 100.0


def test_method_and_stream_mismatches_are_clear_errors(umurl_run, tmp_path):
    import action_recognition
    from evaluation.features import CheckpointError
    data, out = umurl_run
    base = ["--data", str(data), "--output", str(tmp_path / "x"), "--preset", "tiny",
            "--clip-len", "16", "--batch-size", "4", "--workers", "0"]
    with pytest.raises(ValueError, match="--method umurl learns one model .*--stream must be jmb, got j"):
        pretrain.main(["--method", "umurl", "--stream", "j", *base])
    with pytest.raises(ValueError, match="--method usdrl trains one stream per model; --stream jmb"):
        pretrain.main(["--stream", "jmb", *base])
    with pytest.raises(ValueError, match="--proj-mult must be >= 1, got 0"):
        pretrain.main(["--method", "umurl", "--proj-mult", "0", *base])
    with pytest.raises(ValueError, match="needs a two-stream token encoder"):
        pretrain.main(["--method", "umurl", "--backbone", "stgcn", *base])
    with pytest.raises(CheckpointError, match="--stream j does not fit checkpoint .*unified encoder"):
        action_recognition.main(["--mode", "finetune", "--data", str(data), "--output",
                                 str(tmp_path / "ft"), "--pretrained", str(out / "last.pt"),
                                 "--stream", "j", "--epochs", "1", "--workers", "0"])


def test_benchmark_script_answers_help_and_refuses_a_missing_folder(tmp_path):
    import subprocess
    script = str(engine.ROOT / "benchmarks" / "umurl_vs_fusion.sh")
    out = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "equal" in out.stdout and "--quick" in out.stdout
    out = subprocess.run(["bash", script, "--quick", str(tmp_path / "nope")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "not found" in out.stderr


def _umurl_run(info: engine.DistInfo, global_batch=16, epochs=2):
    """Two epochs of pretrain.pretrain_step with the umurl method on 16 fixed sequences (no
    augmentation, no DropPath: nothing that depends on the rank), SGD; returns the weights.
    Unshuffled, so the gathered batch holds the same samples in the same order every step, and
    in float64: this tiny model on random data turns float32 rounding into gradients several
    % apart (a reshuffled batch did, and so did attention written out as two products), float64
    rounding into 1e-13 of the update."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    torch.manual_seed(0)
    data = torch.randn(16, 4, 3, 8, 25, 2, generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64)
    dataset = TensorDataset(data, torch.arange(len(data)))
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                 shuffle=False, drop_last=True)
    loader = DataLoader(dataset, batch_size=global_batch // info.world_size, sampler=sampler)
    model = UmURL(UnifiedEncoder(tiny(drop_path=0.0), seed=3), proj_mult=2)
    if info.distributed:
        model = engine.convert_batchnorm(model, info.device)
    model = model.double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    state = engine.TrainState(optimizer, engine.make_scheduler(optimizer, len(loader),
                                                               schedule="cosine", epochs=epochs),
                              engine.make_scaler(None, info.device))
    ddp = engine.wrap_ddp(model, info)
    args = argparse.Namespace(augment=False, rotate=0.0, seed=0, spatial_channels=3)
    step_fn = lambda batch, epoch, step: pretrain.pretrain_step(  # noqa: E731
        ddp, args, info, NTU25.parents, None, batch, epoch, step)
    engine.train(ddp, step_fn, loader, state, epochs=epochs, info=info, seed=0, output=None,
                 progress=False)
    return model.state_dict()


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Both two-process checks in one spawn: the gathered loss, then the training run."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    local = {m: v.chunk(WORLD, dim=1)[rank].float().clone().requires_grad_()
             for m, v in _embeddings().items()}
    loss, _ = UmURLLoss()(local)
    loss.backward()
    torch.save({"loss": loss.detach(), "grads": {m: v.grad for m, v in local.items()},
                "weights": _umurl_run(engine.init_distributed())}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_umurl_loss_gathers_over_processes(two_processes):
    """Two gloo processes, half the batch each: both see the whole-batch loss, and each
    gets W x its slice of the single-process input gradient (DDP's mean then gives it)."""
    z = {m: v.float().clone().requires_grad_() for m, v in _embeddings().items()}
    loss, _ = UmURLLoss()(z)
    loss.backward()
    for rank, res in enumerate(two_processes):
        torch.testing.assert_close(res["loss"], loss.detach())
        for m, v in z.items():
            torch.testing.assert_close(res["grads"][m], WORLD * v.grad.chunk(WORLD, dim=1)[rank])


def test_umurl_ddp_steps_match_one_process(two_processes):
    """The umurl method through pretrain_step and engine.train: two processes (gathered loss,
    GlobalBatchNorm projectors, DDP) train the weights one process trains on the whole batch."""
    results = [res["weights"] for res in two_processes]
    single = _umurl_run(engine.DistInfo(0, 1, 0, torch.device("cpu")))
    torch.manual_seed(0)
    init = UmURL(UnifiedEncoder(tiny(drop_path=0.0), seed=3)).double().state_dict()
    assert set(results[0]) == set(single)
    # all weights at once, against how far training moved them: in float64 the difference is
    # 1e-13 of the update; a loss of each process's own half (no gather) misses by 0.9 of it
    keys = [k for k, v in single.items() if v.is_floating_point() and "running" not in k]
    moved = sum((single[k] - init[k]).square().sum() for k in keys).sqrt()
    assert moved > 0.1
    for res in results:
        assert sum((res[k] - single[k]).square().sum() for k in keys).sqrt() < 1e-9 * moved
        assert all(int(res[k]) == int(v) for k, v in single.items() if k.endswith("num_batches_tracked"))
