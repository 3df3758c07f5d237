"""evaluation.plots: the labelled confusion matrix, t-SNE of a run's embeddings, training
curves from TensorBoard events or log.txt; KNN results as TensorBoard scalars."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import action_retrieval
import engine
from evaluation import plots, recognition
from feeders.store import open_store
from feeders.synthetic import write_synthetic
from models import build_encoder
from models.usdrl import USDRL

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic dataset and a run directory holding a (random) pretrain checkpoint."""
    data = write_synthetic(tmp_path_factory.mktemp("syn") / "data", 48, seed=0)
    store = open_store(data)
    enc = build_encoder("stgcn", "tiny", layout=store.layout, clip_len=12, channels=3,
                        bodies=2, seed=5)
    run_dir = tmp_path_factory.mktemp("run")
    config = {"backbone": "stgcn", "preset": "tiny", "stream": "j", "clip_len": 12,
              "split": "xsub_train"}
    engine.save_checkpoint(run_dir / "last.pt", {"model": USDRL(enc).state_dict(), "epoch": 7,
                                                 "meta": {"config": config}})
    return data, run_dir


def test_confusion_figure_labels_and_cells(tmp_path):
    cm = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 0]])
    names = ["wave", "clap", "kick"]
    recognition.write_confusion_csv(tmp_path / "linear_confusion.csv", cm, names)
    back, back_names = plots.read_confusion_csv(tmp_path / "linear_confusion.csv")
    assert back.tolist() == cm.tolist() and back_names == names
    fig = plots.confusion_figure(cm, names)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    # non-zero cells, row-major: rates 3/4, 1/4, 2/4, 2/4, 1/1 in %
    assert [t.get_text() for t in ax.texts] == ["75", "25", "50", "50", "100"]
    assert "top-1 55.6 % of 9 samples" in ax.get_title()  # (3 + 2 + 0) / 9
    counts = plots.confusion_figure(cm, names, counts=True)
    assert [t.get_text() for t in counts.axes[0].texts] == ["3", "1", "2", "2", "1"]
    out = plots.main(["confusion", str(tmp_path), "--tag", "linear"])
    assert out == tmp_path / "linear_confusion.png" and out.read_bytes()[:8] == PNG


def test_curves_from_tensorboard_and_from_log(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "tb")) as writer:
        for step, value in ((0, 3.0), (10, 2.5), (20, 1.25)):
            writer.add_scalar("train/total", value, step)
        writer.add_scalar("eval/knn1_top1", 42.0, 1)
    scalars = plots.read_tensorboard(tmp_path / "tb")
    assert scalars["train/total"][0].tolist() == [0, 10, 20]
    assert scalars["train/total"][1].tolist() == [3.0, 2.5, 1.25]
    assert scalars["eval/knn1_top1"][1].tolist() == [42.0]
    assert plots.main(["curves", str(tmp_path)]).read_bytes()[:8] == PNG
    log_dir = tmp_path / "logonly"
    for epoch in (1, 2):
        engine.append_log(log_dir, engine.epoch_line(epoch, 2, {"loss": 1.0 / epoch, "inv": 0.5},
                                                     1e-3, 30.0, 60.0 * epoch, 60.0))
    from_log = plots.read_log(log_dir / "log.txt")
    assert from_log["epoch/loss"][0].tolist() == [1, 2]
    assert from_log["epoch/loss"][1].tolist() == [1.0, 0.5]
    assert from_log["epoch/samples/s"][1].tolist() == [30.0, 30.0]
    assert plots.plot_curves(log_dir).read_bytes()[:8] == PNG
    with pytest.raises(FileNotFoundError, match="no TensorBoard scalars"):
        plots.plot_curves(tmp_path / "empty")


def test_tsne_of_a_run(run):
    data, run_dir = run
    torch.set_num_threads(1)
    out = plots.main(["tsne", str(run_dir), "--data", str(data), "--max-points", "20"])
    assert out == run_dir / "tsne_xsub_val.png" and out.read_bytes()[:8] == PNG
    assert list((run_dir / "features").glob("xsub_val_*.pt"))  # through the run's cache
    points = plots.tsne_embed(np.random.default_rng(0).normal(size=(12, 5)), seed=1)
    again = plots.tsne_embed(np.random.default_rng(0).normal(size=(12, 5)), seed=1)
    assert points.shape == (12, 2) and np.array_equal(points, again)  # seeded
    keep = plots.subsample(np.arange(50), 20, seed=0)
    assert len(keep) == 20 and np.all(np.diff(keep) > 0)


def test_knn_writes_tensorboard_scalars(run, tmp_path):
    data, run_dir = run
    res = action_retrieval.main(["--data", str(data), "--output", str(tmp_path), "--pretrained",
                                 str(run_dir / "last.pt"), "--workers", "0", "--precision", "fp32"])
    scalars = plots.read_tensorboard(tmp_path / "knn" / "tb")
    assert scalars["knn/top1"][0].tolist() == [7]  # the checkpoint's epoch
    assert scalars["knn/top1"][1][0] == pytest.approx(res["top1"])
    assert scalars["knn/recall_at_1"][1][0] == pytest.approx(res["recall_at_k"])
