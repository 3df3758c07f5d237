"""Faults on the run side (issue 14): what a hostile or careless user, a killed process or a
broken sample can do to pretraining and evaluation runs, and the protection against each.

- run directories: a folder the suite did not write is never written into; leftovers of
  killed writers are removed, a live writer's never; one writer per run directory and job;
- non-finite features and scores never become numbers (evaluation.checks.require_finite);
  a non-finite loss names the first term that went non-finite;
- resume is honest: changed flags are refused, or applied and recorded with --resume-changed;
- every bad flag or environment problem is one line `prog: error: ...` with exit status 2;
- ranks of a distributed run exit when their launcher dies;
- a CPU checkpoint resumes with a GradScaler, CUDA RNG states only for the devices present;
- kill -9 at a random step and during a checkpoint write, resumed to bitwise-equal weights.
"""
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import action_recognition as ar
import action_retrieval
import engine
import pretrain
from evaluation import fusion
from evaluation.checks import NonFiniteError, require_finite
from evaluation.knn import knn_evaluate
from evaluation.linear import train_linear
from feeders.store import open_store
from feeders.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "demo", num_sequences=24, seed=0)


def flags(data, out, *extra):
    """A tiny pretraining: 12 training sequences, 3 steps per epoch; the entry point's own
    defaults (--defaults none: not the demo recipe), which the expected values below are of."""
    return ["--data", str(data), "--output", str(out), "--backbone", "dste", "--preset", "tiny",
            "--clip-len", "16", "--batch-size", "4", "--workers", "0", "--threads", "1",
            "--seed", "3", "--milestones", "1", "--save-every", "1", "--defaults", "none",
            *extra]


def eval_flags(data, out, *extra):
    return ["--data", str(data), "--output", str(out), "--backbone", "dste", "--preset", "tiny",
            "--clip-len", "16", "--workers", "0", "--precision", "fp32", "--defaults", "none",
            *extra]


def cli_error(capsys, main, argv, prog) -> str:
    """Run `main(argv)` as its command does (engine.run_cli); assert exit status 2 and a
    single stderr line `prog: error: ...`; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        engine.run_cli(lambda: main(argv), prog)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line.strip() for line in re.split(r"[\r\n]+", err) if line.strip()]
    assert "Traceback" not in err and lines[-1].startswith(f"{prog}: error: "), err
    assert sum("error" in line for line in lines) == 1, err  # (tqdm bars end with \r)
    return lines[-1]


def dead_pid() -> int:
    """The PID of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def running(pid: int) -> bool:
    """A process that exists and is not a zombie (PID 1 here need not reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def with_nan_sequence(src: Path, dst_root: Path, split: str, position: int = 0) -> tuple:
    """A copy of dataset `src` whose sequence at `position` of `split` is all NaN (the store
    writer refuses NaN, so the frames are changed after writing). Returns (dir, name)."""
    dst = write_synthetic(dst_root / "nan", num_sequences=24, seed=0)
    store = open_store(dst)
    seq = int(store.split_indices(split)[position])
    offset, length = int(store.offsets[seq]), int(store.lengths[seq])
    frames = np.load(dst / "frames.npy", mmap_mode="r+")
    frames[offset:offset + length] = np.nan
    frames.flush()
    del frames
    return dst, str(store.names[seq])


# ----------------------------------------------------------------------------- run directories
def test_a_folder_the_suite_did_not_write_is_refused(data, tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    err = cli_error(capsys, pretrain.main, flags(data, thesis, "--epochs", "1"), "pretrain.py")
    assert str(thesis) in err and "refusing to write" in err
    err = cli_error(capsys, action_retrieval.main, eval_flags(data, thesis), "action_retrieval.py")
    assert str(thesis) in err
    assert sorted(p.name for p in thesis.iterdir()) == ["chapter1.tex"]  # nothing added
    assert (thesis / "chapter1.tex").read_text() == "years of work"
    # the dataset itself is not a run directory either
    assert str(data) in cli_error(capsys, pretrain.main, flags(data, data), "pretrain.py")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    assert "is not a directory" in cli_error(capsys, pretrain.main, flags(data, a_file),
                                             "pretrain.py")


def test_run_directories_are_recognised(data, tmp_path):
    assert not engine.is_run_dir(tmp_path)
    marked = tmp_path / "marked"
    engine.prepare_run_dir(marked)  # a new directory is created and marked
    assert engine.is_run_dir(marked) and (marked / engine.RUN_MARKER).is_file()
    old_run = tmp_path / "old_run"  # a pretraining from before the marker: its config.json
    old_run.mkdir()
    meta = engine.run_metadata(pretrain.build_parser().parse_args(flags(data, old_run)),
                               engine.DistInfo(0, 1, 0, torch.device("cpu")))
    engine.write_json(old_run / "config.json", meta)
    assert engine.is_run_dir(old_run)
    copied = tmp_path / "copied"  # a downloaded checkpoint in a folder of its own
    copied.mkdir()
    engine.save_checkpoint(copied / "epoch_0100.pt", {"model": {}, "epoch": 100})
    assert engine.is_run_dir(copied)
    fake = tmp_path / "fake"  # files that only have the names
    fake.mkdir()
    (fake / "last.pt").write_text("not a checkpoint")
    (fake / "config.json").write_text('{"lr": 1}')
    assert not engine.is_run_dir(fake)
    with pytest.raises(ValueError, match="did not write"):
        engine.prepare_run_dir(fake)


def test_leftovers_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "run"
    engine.prepare_run_dir(out)
    (out / "features").mkdir()
    gone, alive = dead_pid(), os.getpid()
    stale = [out / f".last.pt.tmp{gone}", out / "features" / f".xsub_val_j.pt.tmp{gone}"]
    live = out / f".epoch_0002.pt.tmp{alive}"
    user = out / "my.tmp123"  # not a temp name of the suite
    for path in (*stale, live, user):
        path.write_bytes(b"partial")
    with engine.claim_run_dir(out, "pretrain", engine.DistInfo(0, 1, 0, torch.device("cpu"))):
        assert not any(p.exists() for p in stale)
        assert live.exists() and user.exists()


# ----------------------------------------------------------------------------- one writer
def _hold(out: Path, job: str, ready) -> None:
    engine.prepare_run_dir(out)
    engine.lock_run(out, job)
    ready.send("locked")
    time.sleep(120)


def hold_lock(out: Path, job: str):
    """Another process (forked: no second torch import) holding <out>/.lock-<job>."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    ready, child_end = context.Pipe()
    proc = context.Process(target=_hold, args=(out, job, child_end), daemon=True)
    proc.start()
    assert ready.poll(60) and ready.recv() == "locked"
    return proc


def stop(proc) -> None:
    proc.kill()  # kill -9: the lock is never released by its holder
    proc.join()


def test_a_second_writer_exits_at_once_naming_the_first(data, tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold_lock(out, "pretrain")
    try:
        tic = time.monotonic()
        err = cli_error(capsys, pretrain.main, flags(data, out, "--epochs", "1"), "pretrain.py")
        assert time.monotonic() - tic < 30
        assert f"PID {holder.pid} on " in err and ", started 20" in err
        assert "another pretrain run" in err
        assert not (out / "last.pt").exists()
        # another job (an evaluation) may write its own files into the same run directory
        res = action_retrieval.main(eval_flags(data, out))
        assert res["top1"] >= 0 and (out / "knn.json").is_file()
    finally:
        stop(holder)
    # the holder died without releasing: its lock is taken over
    pretrain.main(flags(data, out, "--epochs", "1"))
    assert f"taking over the lock of PID {holder.pid}" in capsys.readouterr().out
    assert engine.load_checkpoint(out / "last.pt")["epoch"] == 1


def test_a_second_evaluation_of_the_same_protocol_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold_lock(out, "linear")
    try:
        err = cli_error(capsys, ar.main, eval_flags(data, out, "--epochs", "1"),
                        "action_recognition.py")
        assert f"PID {holder.pid}" in err and "another linear run" in err
    finally:
        stop(holder)


def test_a_file_system_without_locks_warns_and_goes_on(monkeypatch, tmp_path, capsys):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(engine.runs.fcntl, "lockf", no_locks)
    engine.prepare_run_dir(tmp_path / "run")
    engine.lock_run(tmp_path / "run", "pretrain").release()
    assert "has no locks (No locks available); a second writer" in capsys.readouterr().err


# ----------------------------------------------------------------------------- non-finite values
def test_require_finite_names_the_samples():
    scores = np.zeros((8, 3), dtype=np.float32)
    scores[[2, 5], 1] = np.nan
    scores[6, 0] = np.inf
    names = [f"s{i}" for i in range(8)]
    with pytest.raises(NonFiniteError, match=r"^split x: 3 of 8 samples .*: s2, s5, s6;"):
        require_finite(scores, "split x", names)
    with pytest.raises(NonFiniteError, match=r"#2, #5, #6"):
        require_finite(torch.from_numpy(scores), "split x")
    require_finite(np.ones((4, 2)), "fine", None)
    require_finite(np.arange(4), "integers are always finite")


def test_an_all_nan_training_sequence_stops_the_linear_probe(data, tmp_path, capsys):
    nan_data, name = with_nan_sequence(data, tmp_path, "xsub_train", position=3)
    out = tmp_path / "run"
    err = cli_error(capsys, ar.main, eval_flags(nan_data, out, "--epochs", "2"),
                    "action_recognition.py")
    assert "features of split xsub_train" in err and name in err and "1 of 12 samples" in err
    assert not (out / "linear.json").exists() and not (out / "linear_scores.npz").exists()


def test_a_nan_test_sequence_stops_fine_tuning_and_retrieval(data, tmp_path):
    nan_data, name = with_nan_sequence(data, tmp_path, "xsub_val", position=0)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=rf"split xsub_val .*{name}"):
        ar.main(eval_flags(nan_data, out, "--mode", "finetune", "--epochs", "1",
                           "--batch-size", "12"))
    assert not (out / "finetune.json").exists()
    with pytest.raises(NonFiniteError, match=rf"split xsub_val .*{name}"):
        action_retrieval.main(eval_flags(nan_data, out, "--export-embeddings",
                                         str(tmp_path / "emb")))
    assert not (out / "knn.json").exists() and not (tmp_path / "emb").exists()


def test_a_nan_query_or_gallery_sample_stops_knn():
    gen = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(20, 8, generator=gen), torch.randn(6, 8, generator=gen)
    labels, query_labels = torch.arange(20) % 4, torch.arange(6) % 4
    knn_evaluate(queries, query_labels, gallery, labels)  # finite: fine
    queries[4, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"KNN queries: 1 of 6 samples .*: q4"):
        knn_evaluate(queries, query_labels, gallery, labels,
                     query_names=[f"q{i}" for i in range(6)])
    queries[4, 2] = 0.0
    gallery[7] = float("inf")
    with pytest.raises(NonFiniteError, match=r"KNN gallery: 1 of 20 samples .*#7"):
        knn_evaluate(queries, query_labels, gallery, labels, backend="faiss-flat")


def test_fusion_refuses_nan_scores(tmp_path, capsys):
    names, labels = np.array(["a", "b", "c"]), np.array([0, 1, 2])
    good = np.eye(3, dtype=np.float32)
    bad = good.copy()
    bad[1, 2] = np.nan
    fusion.save_scores(tmp_path / "good.npz", names, labels, good)
    with pytest.raises(NonFiniteError, match=r"bad\.npz.*: b"):
        fusion.save_scores(tmp_path / "bad.npz", names, labels, bad)
    assert not (tmp_path / "bad.npz").exists()
    np.savez(tmp_path / "bad.npz", names=names, labels=labels, scores=bad)  # written elsewhere
    out = tmp_path / "fusion.json"
    with pytest.raises(SystemExit) as exit_info:
        fusion.main([str(tmp_path / "good.npz"), str(tmp_path / "bad.npz"), "--output", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bad.npz: scores: 1 of 3 samples" in err and ": b;" in err
    with pytest.raises(SystemExit):  # a non-finite weight
        fusion.main([str(tmp_path / "good.npz"), str(tmp_path / "good.npz"), "--weights", "1,nan"])
    assert "fused scores" in capsys.readouterr().err
    assert not out.exists()


def test_baseline_and_report_refuse_non_finite_values(data, tmp_path, capsys):
    from evaluation import baseline, report

    nan_data, name = with_nan_sequence(data, tmp_path, "xsub_val", position=1)
    for argv in ([str(nan_data)], [str(data), "--test", "xsub_train"], [str(data), "--test", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            baseline.main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"KNN queries: 1 of 12 samples" in err and name in err
    assert "is the gallery split" in err and "--test 'x': dataset" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "linear.json").write_text('{"protocol": {"kind": "linear", "label_fraction": 1.0}, '
                                     '"top1": NaN, "top5": 50.0}')  # json.dumps(nan) writes NaN
    assert report.main([str(run)]) == 2
    assert "'top1' must be a finite number" in capsys.readouterr().err


def test_a_diverging_linear_probe_is_stopped():
    gen = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(16, 4, generator=gen) * 1e3, torch.arange(16) % 2
    with pytest.raises(NonFiniteError, match="non-finite in epoch 1 .*lower --lr"):
        train_linear(lambda idx: feats[idx], labels, 4, 2, epochs=3, lr=1e36, batch_size=4)


def test_a_non_finite_loss_names_the_first_term_computed():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = engine.TrainState(opt, engine.make_scheduler(opt, 2, schedule="step", epochs=3),
                              engine.make_scaler(None, torch.device("cpu")))
    batches = [(torch.ones(2, 2),), (torch.ones(2, 2),)]

    def step_fn(batch, epoch, step):
        loss = model(batch[0]).sum()
        nan = float("nan") if (epoch, step) == (1, 1) else 0.0
        return loss + nan, {"first": loss.detach(), "second": torch.tensor(nan),
                            "third": torch.tensor(nan * 2)}

    info = engine.DistInfo(0, 1, 0, torch.device("cpu"))
    with pytest.raises(engine.NonFiniteLoss, match=r"epoch 1 step 1 .*first non-finite term, "
                                                   r"in the order computed, is second=nan "
                                                   r"\(then also third\)"):
        engine.train(model, step_fn, batches, state, epochs=3, info=info, seed=0,
                     progress=False)
    assert state.epoch == 1


def test_pretraining_names_the_embeddings_when_the_encoder_gives_nan(monkeypatch, data, tmp_path):
    from methods.usdrl import USDRLMethod  # pretrain.py's default --method
    real_forward = USDRLMethod.forward

    def poisoned(self, views):
        z = real_forward(self, views)
        return {d: v * float("nan") if d == "s" else v for d, v in z.items()}

    monkeypatch.setattr(USDRLMethod, "forward", poisoned)
    with pytest.raises(engine.NonFiniteLoss, match=r"epoch 0 step 0 .*is std_s=nan \(then "
                                                   r"also inv_s, varcov_s"):
        pretrain.main(flags(data, tmp_path / "run", "--epochs", "1"))


# ----------------------------------------------------------------------------- honest resume
def test_resume_with_changed_flags_is_refused_or_applied_and_recorded(data, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain.main(flags(data, out, "--epochs", "1"))
    err = cli_error(capsys, pretrain.main, flags(data, out, "--epochs", "2", "--lr", "0.1",
                                                  "--weight-decay", "0.01"), "pretrain.py")
    assert "--lr: 0.0005 -> 0.1" in err and "--weight-decay: 1e-05 -> 0.01" in err
    assert "--resume-changed" in err
    assert engine.load_checkpoint(out / "last.pt")["epoch"] == 1  # untouched
    # exempt flags (--epochs, threads, workers, logging) never need --resume-changed ...
    # ... and with --resume-changed the new values really act, from the resumed epoch on
    state = pretrain.main(flags(data, out, "--epochs", "2", "--lr", "0.1", "--weight-decay",
                                "0.01", "--resume-changed", "--log-every", "5"))
    group = state.optimizer.param_groups[0]
    factor = engine.lr_factor(2.0, schedule="step", epochs=2, milestones=[1], gamma=0.1)
    assert group["initial_lr"] == 0.1 and group["lr"] == pytest.approx(0.1 * factor)
    assert group["weight_decay"] == 0.01 and state.scheduler.base_lrs == [0.1]
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["lr"] == 0.1 and meta["config"]["weight_decay"] == 0.01
    (entry,) = meta["resumes"]
    assert entry["epoch"] == 1 and entry["changed"]["lr"] == [0.0005, 0.1]
    assert entry["changed"]["epochs"] == [1, 2] and entry["changed"]["log_every"] == [10, 5]
    assert engine.load_checkpoint(out / "last.pt")["meta"]["resumes"] == meta["resumes"]
    # the recorded run is now lr 0.1: resuming it with the same flags needs nothing more
    state = pretrain.main(flags(data, out, "--epochs", "3", "--lr", "0.1", "--weight-decay",
                                "0.01"))
    assert state.epoch == 3
    meta = json.loads((out / "config.json").read_text())
    assert [e["epoch"] for e in meta["resumes"]] == [1, 2]


def test_resume_applies_the_new_schedule_exactly():
    """apply_settings: lr = new base lr x lr_factor(epoch) of the new schedule, also when the
    number of steps per epoch changed (another --batch-size); untouched values stay bitwise."""
    def make(lr, steps, milestones):
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
        sched = engine.make_scheduler(opt, steps, schedule="step", epochs=10,
                                      milestones=milestones, gamma=0.5, warmup_epochs=1)
        return model, engine.TrainState(opt, sched, engine.make_scaler(None, torch.device("cpu")))

    model, state = make(1e-3, 4, [3])
    for _ in range(4 * 4):  # four epochs of 4 steps
        model(torch.ones(1, 3)).sum().backward()
        state.optimizer.step()
        state.scheduler.step()
    state.epoch = 4
    ckpt = state.state_dict(model)
    saved_lr = state.optimizer.param_groups[0]["lr"]

    model2, same = make(1e-3, 4, [3])
    settings = engine.optimizer_settings(same.optimizer)
    same.load(model2, ckpt)
    engine.apply_settings(same, settings, 4)
    assert same.optimizer.param_groups[0]["lr"] == saved_lr and same.scheduler.last_epoch == 16

    model3, changed = make(0.1, 2, [4])  # new lr and milestone, half the steps per epoch
    settings = engine.optimizer_settings(changed.optimizer)
    changed.load(model3, ckpt)
    engine.apply_settings(changed, settings, 2)
    want = 0.1 * engine.lr_factor(4.0, schedule="step", epochs=10, milestones=[4], gamma=0.5,
                                  warmup_epochs=1)
    assert changed.optimizer.param_groups[0]["lr"] == want == 0.05
    assert changed.scheduler.last_epoch == 8
    changed.scheduler.step()  # the next steps follow the new schedule
    assert changed.optimizer.param_groups[0]["lr"] == 0.05
    # the optimizer moments are the checkpoint's
    key = next(iter(changed.optimizer.state))
    torch.testing.assert_close(changed.optimizer.state[key]["exp_avg"],
                               ckpt["optimizer"]["state"][0]["exp_avg"])


def test_resume_of_another_model_an_unrecorded_run_or_a_new_flag(data, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain.main(flags(data, out, "--epochs", "1"))
    for extra in ((), ("--resume-changed",)):
        err = cli_error(capsys, pretrain.main, flags(data, out, "--epochs", "2", "--backbone",
                                                      "stgcn", *extra), "pretrain.py")
        assert "another model (--backbone: dste -> stgcn)" in err
    ckpt = engine.load_checkpoint(out / "last.pt")
    del ckpt["meta"]["config"]["rotate"]  # a run from before --rotate existed
    engine.save_checkpoint(out / "last.pt", ckpt)
    err = cli_error(capsys, pretrain.main, flags(data, out, "--epochs", "2", "--rotate", "30"),
                    "pretrain.py")
    assert "would change the run (--rotate: None -> 30.0)" in err
    assert pretrain.main(flags(data, out, "--epochs", "2")).epoch == 2  # at its default: fine
    bare = tmp_path / "bare.pt"
    ckpt = engine.load_checkpoint(out / "last.pt")
    del ckpt["meta"]
    engine.save_checkpoint(bare, ckpt)
    err = cli_error(capsys, pretrain.main, flags(data, tmp_path / "new", "--epochs", "2",
                                                  "--resume", str(bare)), "pretrain.py")
    assert "records no run flags" in err
    # a checkpoint of another backbone without a record still fails in one line
    other = tmp_path / "other"
    pretrain.main(flags(data, other, "--epochs", "1", "--backbone", "stgcn"))
    ckpt = engine.load_checkpoint(other / "last.pt")
    del ckpt["meta"]
    engine.save_checkpoint(bare, ckpt)
    err = cli_error(capsys, pretrain.main, flags(data, tmp_path / "new", "--epochs", "2",
                                                  "--resume", str(bare), "--resume-changed"),
                    "pretrain.py")
    assert f"checkpoint {bare} does not fit this run's model" in err


# ----------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("extra, message", [
    (("--log-every", "0"), "--log-every must be >= 1"),
    (("--split", "nope"), "--split 'nope': dataset .* has no such split; available splits: "
                          "xsub_train, xsub_val"),
    (("--proj-mult", "0"), "--proj-mult must be >= 1"),
    (("--gamma", "0"), "--gamma must be > 0"),
    (("--gamma", "-0.5"), "--gamma must be > 0"),
    (("--knn-every", "-1"), "--knn-every must be >= 0"),
    (("--save-every", "-2"), "--save-every must be >= 0"),
    (("--knn-every", "1", "--eval-split", "xsub_train"), "--eval-split 'xsub_train' is the "
                                                         "training split"),
    (("--knn-every", "1", "--eval-split", "test"), "--eval-split 'test': dataset"),
])
def test_bad_pretraining_flags_are_one_line_errors(data, tmp_path, capsys, extra, message):
    err = cli_error(capsys, pretrain.main, flags(data, tmp_path / "run", *extra), "pretrain.py")
    assert re.search(message, err), err


def test_an_evaluation_on_its_training_split_is_an_error(data, tmp_path, capsys):
    for main, prog in ((ar.main, "action_recognition.py"),
                       (action_retrieval.main, "action_retrieval.py")):
        err = cli_error(capsys, main, eval_flags(data, tmp_path / "run", "--eval-split",
                                                 "xsub_train"), prog)
        assert "is the training split" in err
        err = cli_error(capsys, main, eval_flags(data, tmp_path / "run", "--split", "train"),
                        prog)
        assert "--split 'train'" in err


def test_an_unwritable_output_is_a_one_line_error(monkeypatch, data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = cli_error(capsys, pretrain.main, flags(data, blocker / "run"), "pretrain.py")
    assert f"cannot create --output {blocker / 'run'}" in err  # (tests run as root: no chmod)

    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", read_only)
    err = cli_error(capsys, pretrain.main, flags(data, tmp_path / "ro"), "pretrain.py")
    assert f"cannot write {tmp_path / 'ro' / engine.RUN_MARKER}: Permission denied" in err


def test_a_full_disk_names_the_checkpoint_being_written(data, tmp_path, capsys):
    """The checkpoint's temporary file is made a link to /dev/full: the kernel answers ENOSPC."""
    out = tmp_path / "run"
    engine.prepare_run_dir(out)
    tmp = engine.temp_path(out / "last.pt")
    tmp.symlink_to("/dev/full")
    err = cli_error(capsys, pretrain.main, flags(data, out, "--epochs", "1"), "pretrain.py")
    assert err.endswith(f"cannot write {out / 'last.pt'}: No space left on device")
    assert not (out / "last.pt").exists() and not tmp.exists()


def test_the_command_itself_exits_2_with_one_line():
    res = subprocess.run([sys.executable, "pretrain.py", "--data", "/nonexistent", "--output",
                          "/tmp/x", "--log-every", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == "pretrain.py: error: --log-every must be >= 1 step, got 0"


# ----------------------------------------------------------------------------- distributed
RANK = """
import os, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
import engine
info = engine.init_distributed()
open(os.path.join({out!r}, f"rank{{info.rank}}.pid"), "w").write(str(os.getpid()))
time.sleep(300)
"""


def test_ranks_exit_when_the_launcher_dies(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK.format(root=str(ROOT), out=str(tmp_path)))
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node=2", str(script)], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pid_files = [tmp_path / f"rank{r}.pid" for r in range(2)]
    deadline = time.monotonic() + 120
    while not all(p.is_file() and p.read_text() for p in pid_files):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()
        time.sleep(0.2)
    ranks = [int(p.read_text()) for p in pid_files]
    try:
        assert all(running(pid) for pid in ranks)
        launcher.kill()  # kill -9: the launcher cannot tell its ranks
        launcher.wait()
        tic = time.monotonic()
        while any(running(pid) for pid in ranks) and time.monotonic() - tic < 10:
            time.sleep(0.2)
        assert not any(running(pid) for pid in ranks), "ranks outlived their launcher by 10 s"
    finally:
        for pid in ranks:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- across devices
def test_a_cpu_checkpoint_resumes_with_a_grad_scaler():
    cpu_run = torch.amp.GradScaler("cpu", enabled=False)  # a CPU (bf16) run: disabled scaler
    assert cpu_run.state_dict() == {}
    fp16 = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)  # stands for fp16 on CUDA
    with pytest.raises(RuntimeError, match="source state dict is empty"):
        fp16.load_state_dict({})  # what TrainState.load did before
    engine.load_scaler_state(fp16, cpu_run.state_dict())
    assert fp16.is_enabled() and fp16.get_scale() == 2.0 ** 10
    saved = torch.amp.GradScaler("cpu", init_scale=2.0 ** 7).state_dict()
    engine.load_scaler_state(fp16, saved)
    assert fp16.get_scale() == 2.0 ** 7
    engine.load_scaler_state(cpu_run, saved)  # an fp16 checkpoint resumed on the CPU
    assert not cpu_run.is_enabled()

    # the whole TrainState: a CPU checkpoint into a run with an enabled scaler
    def state_of(scaler):
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return model, engine.TrainState(opt, engine.make_scheduler(opt, 1, schedule="step",
                                                                   epochs=2), scaler)
    model, cpu_state = state_of(torch.amp.GradScaler("cpu", enabled=False))
    cpu_state.epoch = 1
    ckpt = cpu_state.state_dict(model)
    model2, gpu_state = state_of(torch.amp.GradScaler("cpu"))
    gpu_state.load(model2, ckpt)
    assert gpu_state.epoch == 1 and gpu_state.scaler.get_scale() == 2.0 ** 16


def test_cuda_rng_states_are_restored_for_the_devices_present(monkeypatch):
    state = engine.rng_state()
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]  # a run on 4 GPUs
    state["cuda"] = saved
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, s)))
    for present, want in ((2, 2), (4, 4), (8, 4)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: present)
        restored.clear()
        engine.set_rng_state(state)
        assert [d for d, _ in restored] == list(range(want))
        assert all(torch.equal(s, saved[d]) for d, s in restored)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on the CPU: ignored
    restored.clear()
    engine.set_rng_state(state)
    assert restored == []


# ----------------------------------------------------------------------------- kill -9
KILLED_RUN = """
import io, os, signal, sys
sys.path.insert(0, {root!r})
import torch
import engine, pretrain
kind, epoch = sys.argv[1], int(sys.argv[2])
if kind == "step":  # kill -9 in the middle of epoch `epoch`, before step `step`
    step, real_step = int(sys.argv[3]), pretrain.pretrain_step
    def pretrain_step(*args):
        if args[-2:] == (epoch, step):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(*args)
    pretrain.pretrain_step = pretrain_step
else:  # kill -9 half-way through writing last.pt at the end of epoch `epoch`
    real_save = torch.save
    def save(state, f):
        if isinstance(state, dict) and state.get("epoch") == epoch:
            buf = io.BytesIO()
            real_save(state, buf)
            f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(state, f)
    torch.save = save
sys.argv = ["pretrain.py", *sys.argv[4:]]   # run as the program runs (its --threads 1 applied)
engine.run_program(pretrain.parse_args, pretrain.run, "pretrain.py")
"""


def test_kill_9_at_a_random_step_and_mid_checkpoint_resumes_bitwise(data, tmp_path, capsys):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    pretrain.main(flags(data, straight, "--epochs", "3"))
    step = random.Random(14).randrange(3)  # 3 steps per epoch

    def run_killed(*how):
        res = subprocess.run([sys.executable, "-c", KILLED_RUN.format(root=str(ROOT)), *how,
                              *flags(data, killed, "--epochs", "3")], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        return res

    run_killed("step", "1", str(step))
    assert engine.load_checkpoint(killed / "last.pt")["epoch"] == 1
    res = run_killed("save", "2", "-")  # resumes at epoch 1, dies writing epoch 2's last.pt
    assert "resumed from" in res.stdout
    assert engine.load_checkpoint(killed / "last.pt")["epoch"] == 1  # the old one, whole
    leftovers = list(killed.glob(".last.pt.tmp*"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    capsys.readouterr()
    state = pretrain.main(flags(data, killed, "--epochs", "3"))
    assert state.epoch == 3 and not leftovers[0].exists()
    assert "removed 1 temporary file(s) left by killed runs" in capsys.readouterr().out
    want = engine.load_checkpoint(straight / "last.pt")["model"]
    got = engine.load_checkpoint(killed / "last.pt")["model"]
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    first = engine.load_checkpoint(straight / "epoch_0001.pt")["model"]
    assert not all(torch.equal(first[k], want[k]) for k in want)  # the weights did move
