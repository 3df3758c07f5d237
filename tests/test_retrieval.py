"""action_retrieval.py end to end, exported embeddings, and the multi-process feature gather."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.neighbors import KNeighborsClassifier

import action_retrieval
import engine
from evaluation.features import CheckpointError, gather_in_order
from feeders.store import open_store
from feeders.synthetic import write_synthetic
from models import build_encoder
from models.usdrl import USDRL

TINY = ["--workers", "0", "--precision", "fp32"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = write_synthetic(tmp_path_factory.mktemp("syn") / "data", 48, seed=0)
    store = open_store(data)
    enc = build_encoder("stgcn", "tiny", layout=store.layout, clip_len=12, channels=3,
                        bodies=2, seed=5)
    ckpt = tmp_path_factory.mktemp("ckpt") / "last.pt"
    config = {"backbone": "stgcn", "preset": "tiny", "stream": "m", "clip_len": 12}
    engine.save_checkpoint(ckpt, {"model": USDRL(enc).state_dict(), "meta": {"config": config}})
    return data, ckpt


def test_knn_end_to_end_matches_sklearn_on_exported_embeddings(setup, tmp_path):
    data, ckpt = setup
    emb = tmp_path / "emb"
    res = action_retrieval.main(["--data", str(data), "--output", str(tmp_path), "--pretrained",
                                 str(ckpt), "--export-embeddings", str(emb), *TINY])
    saved = json.loads((tmp_path / "knn.json").read_text())
    assert saved["k"] == 1 and saved["top1"] == res["top1"]
    assert (saved["stream"], saved["clip_len"], saved["num_gallery"]) == ("m", 12, 24)
    g = np.load(emb / "xsub_train_embeddings.npy")
    q = np.load(emb / "xsub_val_embeddings.npy")
    assert g.shape == (24, 32) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    store = open_store(data)
    names = (emb / "xsub_val_names.txt").read_text().split()
    assert names == np.asarray(store.names)[store.split_indices("xsub_val")].tolist()
    gl, ql = np.load(emb / "xsub_train_labels.npy"), np.load(emb / "xsub_val_labels.npy")
    sk = KNeighborsClassifier(1, metric="cosine", algorithm="brute").fit(g, gl).predict(q)
    assert res["top1"] == pytest.approx(100 * (sk == ql).mean())
    # k = 3 with faiss: its own file; recall@3 >= top-1 of the vote is not guaranteed, but
    # recall@3 >= recall@1 = top-1 of k = 1 is
    res3 = action_retrieval.main(["--data", str(data), "--output", str(tmp_path), "--pretrained",
                                  str(ckpt), "--k", "3", "--knn-backend", "faiss-flat", *TINY])
    assert json.loads((tmp_path / "knn_k3.json").read_text())["k"] == 3
    assert res3["recall_at_k"] >= res["top1"]


def test_errors(setup, tmp_path):
    data, ckpt = setup
    with pytest.raises(CheckpointError, match="--backbone dste conflicts"):
        action_retrieval.main(["--data", str(data), "--output", str(tmp_path), "--pretrained",
                               str(ckpt), "--backbone", "dste", *TINY])
    with pytest.raises(ValueError, match="--k must be"):
        action_retrieval.main(["--data", str(data), "--output", str(tmp_path), "--pretrained",
                               str(ckpt), "--k", "0", *TINY])


def _gather_worker(rank, world, port, total, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    info = engine.DistInfo(rank, world, 0, torch.device("cpu"))
    positions = torch.arange(rank, total, world)
    shard = torch.stack([positions.float(), -positions.float()], dim=1)  # (n_rank, 2)
    gathered = gather_in_order(shard, total, info)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def test_gather_in_order_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "g.pt"
    # uneven shards (4 + 3); fork: no re-import of torch in the children
    mp.start_processes(_gather_worker, args=(2, port, 7, str(out)), nprocs=2, start_method="fork")
    gathered = torch.load(out, weights_only=True)
    assert gathered[:, 0].tolist() == list(range(7))
    assert torch.equal(gathered[:, 1], -gathered[:, 0])


def test_knn_script(setup, tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    data, ckpt = setup
    root = Path(action_retrieval.__file__).resolve().parent
    shutil.copytree(data, tmp_path / "data" / "demo")
    (tmp_path / "ckpt" / "demo_xs_m_stgcn").mkdir(parents=True)
    shutil.copy(ckpt, tmp_path / "ckpt" / "demo_xs_m_stgcn" / "last.pt")
    env = {**os.environ, "SKEL_DATA": str(tmp_path / "data"),
           "SKEL_CHECKPOINTS": str(tmp_path / "ckpt")}
    res = subprocess.run(["bash", "scripts/knn.sh", "cpu", "demo_xs_m_stgcn", "--k", "3",
                          "--workers", "0"], cwd=root, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    saved = json.loads((tmp_path / "ckpt" / "demo_xs_m_stgcn" / "knn_k3.json").read_text())
    assert saved["k"] == 3 and saved["checkpoint"].endswith("demo_xs_m_stgcn/last.pt")
    assert f"KNN-3 (torch): top-1 {saved['top1']:.2f} %" in res.stdout
