"""scripts/_common.sh and scripts/pretrain.sh: run-name grammar, GPU lists, clear errors."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bash(script: str, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=60)


def parse(name: str, **env):
    return bash(f'set -euo pipefail; source scripts/_common.sh; parse_run_name {name}; '
                'printf "%s\\n" "$RUN_SPLIT" "$RUN_EVAL_SPLIT" "${RUN_ARGS[@]}"', env)


@pytest.mark.parametrize("name,split,stream,backbone", [
    ("ntu60_xs_j_dste", "xsub_train", "j", "dste"),
    ("ntu60_xv_b_stgcn", "xview_train", "b", "stgcn"),
    ("ntu120_xe_bm_msg3d", "xset_train", "bm", "msg3d"),
    ("ucla_xv_jm_sttr", "xview_train", "jm", "sttr"),
    ("kinetics_tv_m_dste", "train", "m", "dste"),
])
def test_run_name_maps_to_flags(name, split, stream, backbone):
    res = parse(name, SKEL_DATA="/datasets")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0] == split and lines[1] == split.replace("train", "val")
    args = lines[2:]
    dataset = name.split("_")[0]
    pairs = dict(zip(args[0:10:2], args[1:10:2]))
    assert pairs == {"--data": f"/datasets/{dataset}", "--split": split, "--stream": stream,
                     "--backbone": backbone, "--output": f"checkpoint/{name}"}


def test_dataset_defaults_follow_the_paper():
    args = parse("ntu60_xs_j_dste").stdout.split()
    assert args[args.index("--batch-size") + 1] == "356"
    assert args[args.index("--epochs") + 1] == "451"
    assert args[args.index("--milestones") + 1] == "351"
    args = parse("pku2_xs_j_dste").stdout.split()
    assert args[args.index("--batch-size") + 1] == "512"
    assert args[args.index("--milestones") + 1] == "801"
    assert parse("demo_xs_j_dste").stdout.split().count("small") == 1
    args = parse("ucla_xv_j_dste").stdout.split()  # the cross-view small set (benchmarks/nwucla.sh)
    assert args[args.index("--normalize") + 1] == "view"
    assert args[args.index("--rotate") + 1] == "60"


@pytest.mark.parametrize("name", ["ntu60_xs_j_dste", "ntu120_xe_b_dste", "pku1_xs_j_dste",
                                  "pku2_xs_j_dste", "ucla_xv_j_dste", "demo_xs_j_dste",
                                  "kinetics_tv_j_stgcn", "penn_tv_j_dste", "utk_xs_j_dste",
                                  "demodet_xs_j_dste", "pku1det_xv_j_dste", "pku2det_xs_j_dste"])
def test_every_dataset_default_is_a_pretrain_flag(name):
    import pretrain
    lines = parse(name, SKEL_DATA="/datasets").stdout.split("\n")
    args = pretrain.build_parser().parse_args([a for a in lines[2:] if a])
    assert args.data.name == name.split("_")[0] and args.stream == name.split("_")[2]


@pytest.mark.parametrize("name,problem", [
    ("ntu60_xs_j", "expected 4 parts"),
    ("ntu60_xs_j_dste_x", "expected 4 parts"),
    ("ntu61_xs_j_dste", "unknown dataset 'ntu61'"),
    ("ntu60_xe_j_dste", "dataset ntu60 has no protocol 'xe'"),
    ("ntu60_xs_q_dste", "unknown stream 'q'"),
    ("ntu60_xs_j_resnet", "unknown backbone 'resnet'"),
])
def test_bad_run_name_explains_the_grammar(name, problem):
    res = bash(f"bash scripts/pretrain.sh cpu {name}")
    assert res.returncode == 2
    assert f"bad run name '{name}': {problem}" in res.stderr
    assert "<dataset>_<protocol>_<stream>_<backbone>" in res.stderr
    assert "backbone: dste sttr stgcn msg3d" in res.stderr


def test_missing_dataset_prints_the_prepare_command(tmp_path):
    res = bash("bash scripts/pretrain.sh cpu ntu120_xe_j_dste", {"SKEL_DATA": str(tmp_path)})
    assert res.returncode == 1
    assert f"{tmp_path}/ntu120/manifest.json is missing" in res.stderr
    assert (f"-m feeders.prepare --format ntu --benchmark ntu120 --src /path/to/nturgb+d_skeletons_120 "
            f"--out {tmp_path}/ntu120") in res.stderr


@pytest.mark.parametrize("gpus", ["gpu0", "cpu0", "0,,1", "cpux"])
def test_bad_gpu_list(gpus):
    res = bash(f"bash scripts/pretrain.sh {gpus} ntu60_xs_j_dste")
    assert res.returncode == 2
    assert f"bad GPUS '{gpus}'" in res.stderr


def test_usage_without_arguments():
    res = bash("bash scripts/pretrain.sh")
    assert res.returncode == 2 and "Usage: bash scripts/pretrain.sh GPUS RUN_NAME" in res.stderr


def test_launch_commands(tmp_path):
    # A stand-in python records how launch runs it: plain for cpu, torchrun for cpuN and GPUs.
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\n'
                    'if [ "$1" = -c ]; then echo "${FAKE_CUDA:-0}"; exit 0; fi\n'
                    'echo "CVD=[${CUDA_VISIBLE_DEVICES-unset}] $*"\n')
    fake.chmod(0o755)

    def launch(gpus, **env):
        res = bash(f'source scripts/_common.sh; PY={fake}; launch {gpus} pretrain.py --x 1', env)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip(), res.stderr

    assert launch("cpu")[0] == "CVD=[] pretrain.py --x 1"
    out, _ = launch("cpu2")
    assert out == "CVD=[] -m torch.distributed.run --standalone --nproc_per_node=2 pretrain.py --x 1"
    out, err = launch("0,1")
    assert "CUDA is not available here; running one CPU process" in err
    assert out == "CVD=[] pretrain.py --x 1"
    out, _ = launch("1,3,4", FAKE_CUDA="8")
    assert out == ("CVD=[1,3,4] -m torch.distributed.run --standalone --nproc_per_node=3 "
                   "pretrain.py --x 1")
    out, _ = launch("0,1", FAKE_CUDA="2", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1",
                    MASTER_PORT="1234")
    assert out == ("CVD=[0,1] -m torch.distributed.run --nnodes=2 --node_rank=1 "
                   "--master_addr=10.0.0.1 --master_port=1234 --nproc_per_node=2 pretrain.py --x 1")


TINY = "--preset tiny --epochs 1 --batch-size 4 --clip-len 16 --workers 0 --save-every 0"


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"SKEL_DATA": str(root / "data"), "SKEL_CHECKPOINTS": str(root / "ckpt"),
            "SKEL_DEMO_SEQUENCES": "24", "OMP_NUM_THREADS": "1"}


def test_pretrain_demo_end_to_end(demo_env):
    # First use generates the demo dataset, trains one epoch of bones with the KNN monitor;
    # the same command with more epochs resumes.
    res = bash(f"bash scripts/pretrain.sh cpu demo_xs_b_dste {TINY} --knn-every 1", demo_env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "generating the synthetic demo dataset" in res.stderr
    assert "stream b" in res.stdout and "KNN-1 top-1" in res.stdout
    run = Path(demo_env["SKEL_CHECKPOINTS"]) / "demo_xs_b_dste"
    assert (run / "last.pt").is_file() and (run / "config.json").is_file()
    res = bash(f"bash scripts/pretrain.sh cpu demo_xs_b_dste {TINY} --epochs 2", demo_env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stdout and "at epoch 1" in res.stdout


def test_pretrain_two_cpu_processes(demo_env):
    # torchrun with 2 gloo processes: GlobalBatchNorm, gathered loss, sharded sampler.
    res = bash(f"bash scripts/pretrain.sh cpu2 demo_xs_j_stgcn {TINY}", demo_env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es) on cpu" in res.stdout
    ckpt = Path(demo_env["SKEL_CHECKPOINTS"]) / "demo_xs_j_stgcn" / "last.pt"
    assert ckpt.is_file()


def test_detect_demodet_end_to_end(tmp_path):
    """pretrain.sh on an untrimmed set pretrains on windows of its streams; detect.sh runs the
    frozen detection on the checkpoint; a trimmed set is refused."""
    env = {"SKEL_DATA": str(tmp_path / "data"), "SKEL_CHECKPOINTS": str(tmp_path / "ckpt"),
           "SKEL_DEMODET_STREAMS": "4", "OMP_NUM_THREADS": "1"}
    res = bash(f"bash scripts/pretrain.sh cpu demodet_xs_j_dste {TINY} --batch-size 16", env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "cutting" in res.stderr and "demodet_windows" in res.stdout
    res = bash("bash scripts/detect.sh cpu demodet_xs_j_dste last --epochs 2 --workers 0", env)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "ckpt" / "demodet_xs_j_dste"
    assert (run / "detection.json").is_file() and (run / "detection_proposals").is_dir()
    res = bash("bash scripts/detect.sh cpu demo_xs_j_dste", env)
    assert res.returncode == 2 and "has no untrimmed streams" in res.stderr
