"""engine.WeightEMA (a moving average of the weights) and the fine-tune's --ema-decay."""
import numpy as np
import pytest
import torch
from torch import nn

import action_recognition as ar
import engine
from feeders.synthetic import write_synthetic

TINY = ["--clip-len", "16", "--workers", "0", "--precision", "fp32", "--mode", "finetune",
        "--backbone", "stgcn", "--preset", "tiny", "--batch-size", "6", "--epochs", "2"]


def test_weight_ema_by_hand():
    """avg_t = d_t avg_{t-1} + (1 - d_t) w_t, d_t = min(decay, (1 + t) / (10 + t)); integer
    buffers copied."""
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    ema = engine.WeightEMA(model, 0.2)
    w0 = model[0].weight.detach().clone()
    assert ema.rate() == pytest.approx(2 / 11)   # t = 1: the warm-up's rate
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    model[1].num_batches_tracked += 5
    ema.update(model)
    d1 = 2 / 11
    expected = d1 * w0 + (1 - d1) * torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(ema.weights["0.weight"], expected)
    assert int(ema.weights["1.num_batches_tracked"]) == 5
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-3.0, 0.5]]))
    ema.update(model)   # t = 2: min(0.2, 3 / 12) = 0.2
    expected = 0.2 * expected + 0.8 * torch.tensor([[-3.0, 0.5]])
    torch.testing.assert_close(ema.weights["0.weight"], expected)
    assert ema.updates == 2
    # the average is a copy: the model's own weights are untouched by it
    torch.testing.assert_close(model[0].weight.detach(), torch.tensor([[-3.0, 0.5]]))
    with pytest.raises(ValueError, match="EMA decay must be in"):
        engine.WeightEMA(model, 1.0)


def test_train_state_round_trip_and_a_checkpoint_without_the_average(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = engine.make_scaler(None, torch.device("cpu"))
    state = engine.TrainState(opt, sched, scaler, ema=engine.WeightEMA(model, 0.9))
    with torch.no_grad():
        model.weight.add_(1.0)
    state.ema.update(model)
    saved = state.state_dict(model)
    again = engine.TrainState(opt, sched, scaler, ema=engine.WeightEMA(nn.Linear(3, 2), 0.5))
    again.load(model, saved)
    assert again.ema.updates == 1 and again.ema.decay == 0.9
    torch.testing.assert_close(again.ema.weights["weight"], state.ema.weights["weight"])
    del saved["ema"]
    with pytest.raises(ValueError, match="run.pt .*holds no moving average"):
        again.load(model, saved, tmp_path / "run.pt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "data", 48, seed=0)


def scores(out):
    return np.load(out / "finetune_scores.npz")["scores"]


def test_finetune_reports_the_averaged_weights(data, tmp_path):
    """The average does not change the training (the same last weights), only what is scored;
    a vanishing decay scores the last weights; the average resumes from last.pt."""
    plain = ar.main(["--data", str(data), "--output", str(tmp_path / "plain"), *TINY])
    ar.main(["--data", str(data), "--output", str(tmp_path / "ema"), *TINY,
                        "--ema-decay", "0.5"])
    last_plain = engine.load_checkpoint(tmp_path / "plain" / "finetune" / "last.pt")
    last = engine.load_checkpoint(tmp_path / "ema" / "finetune" / "last.pt")
    for k, v in last_plain["model"].items():
        torch.testing.assert_close(last["model"][k], v, rtol=0, atol=0)
    steps = last["scheduler"]["last_epoch"]
    assert steps > 2 and last["ema"]["updates"] == steps and last["ema"]["decay"] == 0.5
    assert not torch.equal(last["ema"]["weights"]["head.weight"], last["model"]["head.weight"])
    assert not np.allclose(scores(tmp_path / "ema"), scores(tmp_path / "plain"), atol=1e-4)
    tiny = ar.main(["--data", str(data), "--output", str(tmp_path / "tiny"), *TINY,
                    "--ema-decay", "1e-9"])
    np.testing.assert_allclose(scores(tmp_path / "tiny"), scores(tmp_path / "plain"), atol=1e-5)
    assert tiny["top1"] == plain["top1"]
    # a finished run re-run resumes: the average comes back from last.pt (its head zeroed
    # there, every clip gets the bias's scores)
    last["ema"]["weights"]["head.weight"].zero_()
    engine.save_checkpoint(tmp_path / "ema" / "finetune" / "last.pt", last)
    ar.main(["--data", str(data), "--output", str(tmp_path / "ema"), *TINY,
             "--ema-decay", "0.5"])
    again = scores(tmp_path / "ema")
    np.testing.assert_allclose(again, np.broadcast_to(again[:1], again.shape), atol=1e-6)


def test_bad_ema_decay(data, tmp_path):
    with pytest.raises(ValueError, match=r"--ema-decay must be in \[0, 1\)"):
        ar.main(["--data", str(data), "--output", str(tmp_path), *TINY, "--ema-decay", "1"])
