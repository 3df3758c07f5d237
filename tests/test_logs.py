"""Readable logs: <output>/log.txt (one line per epoch with every loss term, lr, samples/s,
elapsed, ETA; start / resume / stop events), no tqdm bar when output is redirected."""
from __future__ import annotations

import re
import sys

import pytest
import torch
from torch import nn

import engine
import pretrain
from feeders.synthetic import write_synthetic
from progress import progress_bar

EPOCH_LINE = re.compile(r"^\S+ \S+  epoch (\d+)/(\d+)  (.*)  lr (\S+)  samples/s (\S+)  "
                        r"elapsed (\S+)  eta (\S+)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "demo", num_sequences=16, seed=0)


def test_pretrain_log_txt_and_plain_stdout(data, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    common = ["--data", str(data), "--output", str(out), "--backbone", "dste", "--preset", "tiny",
              "--clip-len", "8", "--batch-size", "4", "--workers", "0", "--precision", "fp32",
              "--milestones", "1", "--defaults", "none"]   # the parser's lr 5e-4
    pretrain.main(common + ["--epochs", "1"])
    pretrain.main(common + ["--epochs", "2"])  # resumes
    stdout = capsys.readouterr()
    assert "\r" not in stdout.out + stdout.err  # not a terminal: lines, no bar
    lines = (out / "log.txt").read_text().splitlines()
    events = [line.split("  ", 1)[1] for line in lines]
    assert re.match(r"start: 1 epochs, \d+ steps per epoch, 1 process\(es\) on cpu", events[0])
    assert events[2].startswith("stop: epoch 1 of 1 done")
    assert events[3].startswith("resume at epoch 1 of 2")
    assert events[5].startswith("stop: epoch 2 of 2 done")
    for line, epoch in ((lines[1], 1), (lines[4], 2)):
        match = EPOCH_LINE.match(line)
        assert match, line
        assert (int(match[1]), int(match[2])) == (epoch, epoch)
        terms = dict(t.split(" ") for t in match[3].split("  "))
        for name in ("loss", "inv", "varcov", "xcorr", "inv_i", "xcorr_t", "std_s"):
            assert name in terms and float(terms[name]) == float(terms[name])  # a number
        assert float(match[4]) == pytest.approx(5e-4 * 0.1 ** (epoch - 1), rel=0.01) and float(match[5]) > 0
        assert match[7] == "0s"  # the last epoch of each run
        assert line.split("  ", 1)[1] in stdout.out  # the same line on stdout


def test_epoch_means_eta_and_stop_event(tmp_path):
    """The logged loss is the epoch mean of the step losses (hand values); a stop by an
    exception is logged with its reason."""
    model = nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    state = engine.TrainState(opt, engine.make_scheduler(opt, 3, schedule="step", epochs=3),
                              engine.make_scaler(None, torch.device("cpu")))
    info = engine.DistInfo(0, 1, 0, torch.device("cpu"))
    loader = [(torch.ones(2, 1),)] * 3

    def step_fn(batch, epoch, step):
        if epoch == 2:
            raise KeyboardInterrupt("stopped by hand")
        loss = model(batch[0]).sum() * 0 + (step + 1) + 10 * epoch  # 1, 2, 3 then 11, 12, 13
        return loss, {"term": torch.tensor(float(step))}

    with pytest.raises(KeyboardInterrupt):
        engine.train(model, step_fn, loader, state, epochs=3, info=info, seed=0,
                     output=tmp_path, progress=False)
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert " epoch 1/3  loss 2  term 1  lr 0 " in lines[1]
    assert " epoch 2/3  loss 12  term 1  lr 0 " in lines[2]
    assert "stopped at epoch 2 of 3 after" in lines[3] and "KeyboardInterrupt: stopped by hand" in lines[3]
    assert (tmp_path / "last.pt").is_file()


def test_format_duration_and_progress_bar_only_on_a_terminal(monkeypatch):
    assert [engine.format_duration(s) for s in (4.2, 83, 3725)] == ["4s", "1m23s", "1h02m05s"]
    items = [1, 2, 3]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress_bar(items, desc="x") is items  # redirected: the iterable itself
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(items, desc="x")
    assert bar is not items and list(bar) == items and hasattr(bar, "set_postfix")
    assert progress_bar(items, enable=False) is items
