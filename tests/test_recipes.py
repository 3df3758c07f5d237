"""recipes.py: the recipe table, dataset identity, the recipe chosen from a manifest, the view
rule (cross-view 3D data only), explicit flags winning, run names of any dataset."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import recipes
from feeders.store import Record, StoreWriter

ROOT = Path(__file__).resolve().parents[1]


def make_store(path, *, layout="kinect20", classes=3, channels=3, views=(1, 2, 3),
               splits=("xview_train", "xview_val"), source_format="unknown", per_class=4,
               length=20, declared=None):
    """A tiny dataset: ``classes * per_class`` sequences of ``length`` frames, view ids cycling
    through ``views``; the first half of the sequences in every training split (a name ending
    in ``train``), the rest in the others."""
    from feeders.layouts import get_layout
    joints = get_layout(layout).num_joints
    rng = np.random.default_rng(0)
    n = classes * per_class
    with StoreWriter(path, layout, classes, [f"c{i}" for i in range(classes)], channels=channels,
                     bodies=1, source_format=source_format) as writer:
        for i in range(n):
            data = rng.standard_normal((length, 1, joints, channels)).astype(np.float32)
            writer.add(Record(f"s{i}", i % classes, data, view=views[i % len(views)]))
        first, second = list(range(n // 2)), list(range(n // 2, n))
        writer.close({name: first if name.endswith("train") else second for name in splits})
    if declared:
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["benchmark"] = declared
        (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def facts(**kw):
    base = dict(directory="mine", split="xsub_train", source_format="pyskl", declared=None,
                layout="kinect20", num_classes=27, dims=3, num_train=431, median_length=60.0,
                views=1, splits=("xsub_train", "xsub_val"))
    return recipes.DataFacts(**{**base, **kw})


# ----------------------------------------------------------------------------- identity
@pytest.mark.parametrize("kw,name", [
    (dict(source_format="ntu", num_classes=60, layout="ntu25"), "ntu60"),
    (dict(source_format="ntu", num_classes=120, layout="ntu25"), "ntu120"),
    (dict(source_format="nwucla", directory="whatever"), "ucla"),
    (dict(source_format="penn", directory="pennaction"), "penn"),
    (dict(source_format="pku", directory="pku2", layout="ntu25", num_classes=51), "pku2"),
    (dict(source_format="synthetic", directory="demo", layout="ntu25", num_classes=12), "demo"),
    (dict(directory="ntu60", layout="ntu25", num_classes=60), "ntu60"),   # pyskl, name agrees
    (dict(declared="ucla"), "ucla"),
])
def test_identity_from_the_manifest_and_the_directory(kw, name):
    assert recipes.identify(facts(**kw))[0] == name


@pytest.mark.parametrize("kw,why", [
    (dict(), "'mine' is not a dataset the table knows"),
    (dict(directory="penn"), "is named like a known dataset, but its manifest (kinect20, 27 "
                             "classes) is not penn's (penn13, 15 classes)"),
    (dict(source_format="pku", directory="pkummd", layout="ntu25", num_classes=51),
     "the phase is not recorded"),
    (dict(source_format="synthetic", directory="mydata", layout="ntu25", num_classes=12),
     "a synthetic set under a name of its own"),
])
def test_no_silent_wrong_identity(kw, why):
    name, reason = recipes.identify(facts(**kw))
    assert name is None and why in reason


# ----------------------------------------------------------------------------- choice
def test_small_set_recipe_chosen_from_the_manifest():
    # an NW-UCLA-sized set gets exactly the NW-UCLA schedule: 1020 / 64 = 15 steps x 120 epochs
    kind, values, _ = recipes.choose(facts(num_train=1020, median_length=31))
    assert kind == "small" and values == recipes.SMALL
    # the 431-sequence Kinect set: 6 steps an epoch, the same 1800 steps
    _, values, why = recipes.choose(facts())
    assert (values["batch_size"], values["epochs"], values["milestones"]) == (64, 300, [250])
    assert "431 training sequences" in why
    # 40 sequences: batch 8 (5 steps an epoch); short sequences: 16-frame clips
    _, values, _ = recipes.choose(facts(num_train=40, median_length=18))
    assert (values["batch_size"], values["epochs"], values["clip_len"]) == (8, 360, 16)
    kind, values, _ = recipes.choose(facts(num_train=40_000))
    assert kind == "paper" and values == recipes.PAPER


@pytest.mark.parametrize("kw,cross_view", [
    (dict(views=3), True),                                          # views in the index
    (dict(views=0, splits=("xview_train", "xview_val")), True),     # a cross-view protocol
    (dict(views=1), False),                                         # one frontal camera
    (dict(views=0), False),                                         # no view recorded
    (dict(views=3, dims=2, layout="penn13"), False),                # 2D: no facing direction
])
def test_view_rule_from_the_data(kw, cross_view):
    f = facts(**kw)
    assert f.cross_view is cross_view
    expected = recipes.CROSS_VIEW if cross_view else recipes.SINGLE_VIEW
    for name in ("ucla", "penn", "small"):   # the name of the recipe does not decide it
        kind = recipes.KNOWN[name].kind if name in recipes.KNOWN else name
        pre = recipes.pretrain_values(kind, f)
        assert {k: pre[k] for k in expected} == expected
    tune = recipes.eval_values("small", None, f, "finetune")
    assert tune["rotate"] == (90.0 if cross_view else 0.0)   # about y only, cross-view
    assert tune.get("rotate_axes") == ("y" if cross_view else None)
    assert recipes.eval_values("small", None, f, "semi")["rotate"] == (60.0 if cross_view else 0.0)


def test_resolve_on_constructed_manifests(tmp_path):
    cross = make_store(tmp_path / "cams", views=(1, 2, 3))
    frontal = make_store(tmp_path / "frontal", views=(1,), splits=("xsub_train", "xsub_val"))
    flat = make_store(tmp_path / "flat", layout="penn13", channels=2, splits=("train", "val"))
    r = recipes.resolve("auto", cross, "xview_train", "pretrain")
    assert r.name == "auto-small" and r.values["normalize"] == "view" and r.values["rotate"] == 60
    assert "cross-view 3D" in r.reason
    for data, split in ((frontal, "xsub_train"), (flat, "train")):
        r = recipes.resolve("auto", data, split, "pretrain")
        assert (r.values["normalize"], r.values["rotate"]) == ("first_frame", 0.0), data
        assert "no view normalisation or rotation" in r.reason
        assert recipes.resolve("auto", data, split, "finetune").values["rotate"] == 0.0
    # the known small sets keep the table's schedule; NTU-60 xview its linear lr
    ucla = make_store(tmp_path / "ucla", source_format="nwucla", classes=10, per_class=2)
    r = recipes.resolve("auto", ucla, "xview_train", "pretrain")
    assert r.name == "ucla" and r.values["epochs"] == 120 and r.values["milestones"] == [100]
    ntu = make_store(tmp_path / "ntu", layout="ntu25", classes=60, per_class=1,
                     source_format="ntu", splits=("xview_train", "xview_val", "xsub_train"))
    assert recipes.resolve("auto", ntu, "xview_train", "pretrain").values == recipes.PAPER
    assert recipes.resolve("auto", ntu, "xview_train", "linear").values == {"lr": 0.03}
    assert recipes.resolve("auto", ntu, "xsub_train", "linear").values == {"lr": 0.006}
    assert recipes.resolve("none", ntu, "xsub_train", "pretrain").values == {}
    with pytest.raises(recipes.RecipeError, match="unknown recipe 'ucal'"):
        recipes.resolve("ucal", ntu, "xsub_train", "pretrain")
    with pytest.raises(recipes.RecipeError, match="--split 'xset_train': dataset .* no such"):
        recipes.resolve("auto", ntu, "xset_train", "pretrain")


# ----------------------------------------------------------------------------- entry points
def test_explicit_flags_win_even_at_their_default_value(tmp_path, capsys):
    import pretrain
    data = make_store(tmp_path / "mine", views=(1,), splits=("xsub_train", "xsub_val"))
    base = ["--data", str(data), "--output", str(tmp_path / "run")]
    args = pretrain.parse_args(base)
    assert (args.preset, args.batch_size, args.normalize) == ("small", 2, "first_frame")
    # 356 and paper are pretrain.py's own defaults: given explicitly, they still win
    args = pretrain.parse_args(base + ["--batch-size", "356", "--preset", "paper"])
    assert (args.batch_size, args.preset, args.clip_len) == (356, "paper", 16)  # short clips
    assert args.defaults["kept"] == ["batch_size", "preset"]
    assert "batch_size" not in args.defaults["set"] and args.defaults["set"]["clip_len"] == 16
    assert "[defaults] auto-small" in capsys.readouterr().out
    args = pretrain.parse_args(base + ["--defaults", "none"])
    assert (args.batch_size, args.preset, args.defaults["set"]) == (356, "paper", {})
    args = pretrain.parse_args(base + ["--defaults", "ntu60"])
    assert (args.batch_size, args.epochs) == (356, 451)


def test_bad_defaults_flag_is_a_usage_error(tmp_path):
    data = make_store(tmp_path / "mine")
    res = subprocess.run([sys.executable, "pretrain.py", "--data", str(data), "--split",
                          "xview_train", "--output", str(tmp_path / "r"), "--defaults", "big"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "pretrain.py: error: --defaults: unknown recipe 'big'" in res.stderr
    assert "Traceback" not in res.stderr


def test_evaluation_recipes(tmp_path):
    import action_recognition
    import action_retrieval  # noqa: F401  (its --defaults is the same add_defaults_arg)
    data = make_store(tmp_path / "mine", per_class=8)
    base = ["--data", str(data), "--split", "xview_train", "--output", str(tmp_path / "r")]
    args = action_recognition.parse_args(base + ["--mode", "linear", "--pretrained", "x.pt"])
    assert (args.lr, args.batch_size, args.epochs) == (1.0, 2, 160)
    assert args.preset is None   # a checkpoint's encoder flags are its own
    args = action_recognition.parse_args(base + ["--mode", "finetune", "--lr", "3e-4"])
    # from scratch: the pretraining recipe's encoder flags, and no LP-FT (no features to probe)
    assert (args.lr, args.lp_epochs, args.rotate, args.shear) == (3e-4, 0, 90.0, 1.0)
    assert (args.preset, args.clip_len, args.normalize) == ("small", 16, "view")
    args = action_recognition.parse_args(base + ["--mode", "finetune", "--pretrained", "x.pt"])
    assert (args.lr, args.lp_epochs, args.rotate, args.shear) == (1e-3, 160, 90.0, 1.0)
    assert args.rotate_axes == "y"   # cross-view: about the vertical axis only
    assert args.head_init == "random"   # cross-view: the probe serves the guard only
    args = action_recognition.parse_args(base + ["--mode", "finetune", "--label-fraction", "0.5",
                                                 "--pretrained", "x.pt"])
    assert (args.epochs, args.batch_size) == (40, 16)
    args = action_recognition.parse_args(base + ["--mode", "finetune", "--defaults", "none"])
    assert (args.lr, args.lp_epochs, args.rotate, args.epochs) == (3e-4, 0, 0.0, 100)


# ----------------------------------------------------------------------------- run names
@pytest.mark.parametrize("splits,expected", [
    (("xsub_train", "xsub_val", "xview_train", "xview_val"), {"xs": "xsub", "xv": "xview"}),
    (("xset_train", "xset_val", "train"), {"xe": "xset"}),   # train without val: no tv
    (("train", "val", "fold1_train", "fold1_val", "a_b_train", "a_b_val"),
     {"tv": "", "fold1": "fold1"}),
])
def test_protocols_from_split_names(tmp_path, splits, expected):
    data = make_store(tmp_path / "mine", splits=splits)
    got = recipes.protocols(data)
    want = {p: (f"{s}_train", f"{s}_val") if s else ("train", "val") for p, s in expected.items()}
    assert got == want


def test_run_name_of_any_dataset(tmp_path):
    make_store(tmp_path / "mine", splits=("fold1_train", "fold1_val", "train", "val"))
    got = recipes.resolve_run_name("mine_fold1_j_dste", str(tmp_path))
    assert (got["RUN_SPLIT"], got["RUN_EVAL_SPLIT"]) == ("fold1_train", "fold1_val")
    with pytest.raises(recipes.RecipeError, match="dataset mine has no protocol 'xs'; its "
                                                  "protocols: fold1 tv"):
        recipes.resolve_run_name("mine_xs_j_dste", str(tmp_path))
    with pytest.raises(recipes.RecipeError, match="unknown dataset 'yours'.*prepared datasets "
                                                  f"under {tmp_path}: mine"):
        recipes.resolve_run_name("yours_xs_j_dste", str(tmp_path))
    # a known dataset not prepared yet: its protocols and the command that prepares it
    got = recipes.resolve_run_name("ntu120_xe_j_dste", str(tmp_path))
    assert got["RUN_SPLIT"] == "xset_train" and "--benchmark ntu120" in got["RUN_PREPARE"]


def bash(script, env):
    return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_script_and_entry_point_run_the_same_recipe(tmp_path):
    """bash scripts/pretrain.sh cpu ucla_xv_j_dste == python pretrain.py --data .../ucla."""
    make_store(tmp_path / "data" / "ucla", source_format="nwucla", classes=10, per_class=2)
    env = {"SKEL_DATA": str(tmp_path / "data"), "SKEL_CHECKPOINTS": str(tmp_path / "ckpt"),
           "SKEL_PYTHON": sys.executable}
    script = bash("bash scripts/pretrain.sh cpu ucla_xv_j_dste --print-config", env)
    assert script.returncode == 0, script.stderr
    direct = subprocess.run(
        [sys.executable, "pretrain.py", "--data", f"{tmp_path}/data/ucla", "--split",
         "xview_train", "--output", f"{tmp_path}/ckpt/ucla_xv_j_dste", "--print-config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert direct.returncode == 0, direct.stderr

    def config(out):
        return json.loads(out[out.index("{"):])
    a, b = config(script.stdout), config(direct.stdout)
    assert a == b
    assert a["defaults"]["name"] == "ucla" and a["epochs"] == 120 and a["normalize"] == "view"


def test_the_table_holds_the_measured_recipes(tmp_path):
    """The values that were in scripts/_common.sh (docs/experiments.md has the measurements)."""
    f = facts(num_train=1020, views=3)
    assert recipes.pretrain_values("paper", f) == {"preset": "paper", "batch_size": 356,
                                                   "lr": 5e-4, "epochs": 451, "milestones": [351]}
    assert {k: recipes.pretrain_values("pku2", f)[k] for k in ("batch_size", "epochs",
                                                               "milestones")} == {
        "batch_size": 512, "epochs": 1201, "milestones": [801]}
    assert recipes.pretrain_values("small", f) == {
        "preset": "small", "clip_len": 32, "batch_size": 64, "lr": 1e-3, "epochs": 120,
        "milestones": [100], "normalize": "view", "rotate": 60.0}
    demo = recipes.pretrain_values("demo", f)
    assert (demo["epochs"], demo["milestones"], demo["threads"], demo["normalize"]) == (
        10, [8], 0, "first_frame")
    grid = [0.03, 0.1, 0.3, 1.0]
    assert recipes.eval_values("small", None, f, "linear") == {
        "lr": 1.0, "batch_size": 64, "standardize": True, "probe_lr_grid": grid}
    assert recipes.eval_values("small", None, f, "finetune") == {
        "epochs": 50, "lr": 1e-3, "warmup_epochs": 2.0, "batch_size": 64, "shear": 1.0,
        "rotate": 90.0, "lp_epochs": 160, "lp_lr": 1.0, "standardize": True,
        "probe_lr_grid": grid, "head_init": "random", "rotate_axes": "y"}
    # single-view data keeps LP-FT's start from the probe, in both fine-tunes; cross-view data
    # starts the semi-supervised fine-tune from a random head too
    single = recipes.eval_values("small", None, facts(), "finetune")
    assert single["rotate"] == 0.0 and "head_init" not in single
    assert "head_init" not in recipes.eval_values("small", None, facts(), "semi")
    assert recipes.eval_values("small", None, f, "semi")["head_init"] == "random"
    assert recipes.eval_values("small", None, f, "semi")["batch_size"] == 16
    assert recipes.eval_values("pku2", recipes.KNOWN["pku2"], f, "linear") == {"lr": 0.01}
    assert recipes.eval_values("paper", recipes.KNOWN["ntu60"], f, "finetune") == {}


@pytest.mark.parametrize("kind", ["paper", "pku2", "small", "demo", "auto-small"])
def test_every_recipe_value_is_a_flag_of_its_entry_point(kind):
    import action_recognition
    import pretrain
    f = facts(views=3)
    base = ["--data", "d", "--output", "o"]
    args = pretrain.build_parser().parse_args(base + recipes.as_flags(
        recipes.pretrain_values(kind, f)))
    assert args.epochs == recipes.pretrain_values(kind, f)["epochs"]
    known = recipes.KNOWN.get({"paper": "ntu60", "pku2": "pku2"}.get(kind, "ucla"))
    for purpose, mode in (("linear", "linear"), ("finetune", "finetune"), ("semi", "finetune")):
        values = recipes.eval_values(kind, known, f, purpose)
        args = action_recognition.build_parser().parse_args(
            base + ["--mode", mode] + recipes.as_flags(values))
        assert all(getattr(args, k) == v for k, v in values.items()), (kind, purpose)


def test_boolean_recipe_values_are_switches():
    """A True/False recipe value is the flag / its --no- form (BooleanOptionalAction), never
    `--flag True`, which argparse would refuse."""
    assert recipes.as_flags({"standardize": True, "probe_lr_grid": [0.1, 1.0]}) == [
        "--standardize", "--probe-lr-grid", "0.1", "1.0"]
    assert recipes.as_flags({"standardize": False}) == ["--no-standardize"]


def test_a_given_probe_lr_turns_the_recipes_lr_grid_off(tmp_path, capsys):
    """The small-set recipe chooses the probe's lr from --probe-lr-grid unless the lr is given:
    --lr (linear) or --lp-lr (fine-tune) on the command line keeps that lr."""
    import action_recognition as ar
    from feeders.synthetic import write_synthetic
    data = write_synthetic(tmp_path / "mine", 24, seed=0)
    base = ["--data", str(data), "--output", "unused"]
    assert ar.parse_args(base).probe_lr_grid == [0.03, 0.1, 0.3, 1.0]
    given = ar.parse_args(base + ["--lr", "0.5"])
    assert given.probe_lr_grid is None and given.lr == 0.5
    assert "--probe-lr-grid is not applied" in capsys.readouterr().out
    tuned = ar.parse_args(base + ["--mode", "finetune", "--pretrained", "none", "--lp-epochs",
                                  "5", "--lp-lr", "0.2"])
    assert tuned.probe_lr_grid is None and tuned.lp_lr == 0.2
    assert ar.parse_args(base + ["--mode", "finetune", "--lp-lr", "0.2",
                                 "--probe-lr-grid", "0.1"]).probe_lr_grid == [0.1]


def test_benchmark_cuts_labelled_segments_into_clips(tmp_path):
    """benchmarks/recipes_bench.py: UTKinect-style untrimmed streams -> one clip per labelled
    run (background 0 dropped, class = label - 1), each in its stream's split."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("recipes_bench",
                                                  ROOT / "benchmarks" / "recipes_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    labels = [np.array([0, 1, 1, 0, 2, 2, 2]), np.array([2, 2, 0, 0, 1])]
    with StoreWriter(tmp_path / "streams", "kinect20", 3, ["background", "a", "b"], channels=3,
                     bodies=1) as writer:
        for i, lab in enumerate(labels):
            data = np.arange(len(lab) * 60, dtype=np.float32).reshape(len(lab), 1, 20, 3) + i
            writer.add(Record(f"s{i}", 1, data, subject=i + 1,
                              frame_arrays={"frame_labels": lab.astype(np.int32)}))
        writer.close({"xsub_train": [0], "xsub_val": [1]})
    from feeders.store import open_store
    clips = open_store(bench.segments_as_clips(tmp_path / "streams", tmp_path / "clips"))
    assert clips.class_names == ["a", "b"]
    assert clips.labels.tolist() == [0, 1, 1, 0] and clips.lengths.tolist() == [2, 3, 2, 1]
    assert clips.split_indices("xsub_train").tolist() == [0, 1]
    assert clips.split_indices("xsub_val").tolist() == [2, 3]
    streams = open_store(tmp_path / "streams")
    assert np.array_equal(clips.sequence(1), streams.sequence(0)[4:7])
    assert clips.subjects.tolist() == [1, 1, 2, 2]
