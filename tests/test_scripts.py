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
                'printf "%s\\n" "$RUN_SPLIT" "$RUN_EVAL_SPLIT" "${RUN_DATA_ARGS[@]}"', env)


@pytest.mark.parametrize("name,split,stream,backbone", [
    ("ntu60_xs_j_dste", "xsub_train", "j", "dste"),
    ("ntu60_xv_b_stgcn", "xview_train", "b", "stgcn"),
    ("ntu120_xe_bm_msg3d", "xset_train", "bm", "msg3d"),
    ("ucla_xv_jm_sttr", "xview_train", "jm", "sttr"),
    ("kinetics_tv_m_dste", "train", "m", "dste"),
    ("utk_xs_j_dste", "xsub_train", "j", "dste"),
    ("demodet_xs_j_dste", "xsub_train", "j", "dste"),
    ("pku2det_xv_b_dste", "xview_train", "b", "dste"),
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


def test_scripts_hold_no_per_dataset_numbers():
    """The recipes live in recipes.py: the scripts only map a run name to flags."""
    for script in (ROOT / "scripts").glob("*.sh"):
        text = "\n".join(line for line in script.read_text().splitlines()
                         if not line.lstrip().startswith("#"))   # the code, not the comments
        for number in ("--epochs 120", "--lr 1e-3", "--batch-size 356", "--rotate 60", "LR=0."):
            assert number not in text, (script.name, number)


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
    from feeders.streams import STREAMS
    from models import list_encoders
    assert f"backbone: {' '.join(list_encoders())}" in res.stderr  # the registry's names
    assert f"stream  : {' '.join(STREAMS)}" in res.stderr


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
           "SKEL_DEMODET_STREAMS": "4", "SKEL_DEMO_SEQUENCES": "24", "OMP_NUM_THREADS": "1"}
    res = bash(f"bash scripts/pretrain.sh cpu demodet_xs_j_dste {TINY} --batch-size 16", env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "cutting" in res.stderr and "demodet_windows" in res.stdout
    res = bash("bash scripts/detect.sh cpu demodet_xs_j_dste last --epochs 2 --workers 0", env)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "ckpt" / "demodet_xs_j_dste"
    assert (run / "detection.json").is_file() and (run / "detection_proposals").is_dir()
    res = bash("bash scripts/detect.sh cpu demo_xs_j_dste", env)
    assert res.returncode == 2 and "has no untrimmed streams" in res.stderr


def test_a_dataset_with_a_name_of_its_own_through_every_script(tmp_path):
    """Any prepared directory under $SKEL_DATA is a run name's dataset, its protocols from its
    split names: pretrain, linear probe, KNN, fine-tune, semi-supervised and fusion."""
    import json
    import sys
    env = {"SKEL_DATA": str(tmp_path / "data"), "SKEL_CHECKPOINTS": str(tmp_path / "ckpt"),
           "SKEL_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "feeders.synthetic", "--out",
                          str(tmp_path / "data" / "mydata"), "--num-sequences", "24",
                          "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    res = bash("bash scripts/pretrain.sh cpu mydata_xv_j_dste", env)
    assert res.returncode == 2
    assert "dataset mydata has no protocol 'xv'; its protocols: xs" in res.stderr
    run = "mydata_xs_j_dste"
    fast = "--workers 0 --epochs 1"
    steps = [f"bash scripts/pretrain.sh cpu {run} {fast} --preset tiny --clip-len 16 "
             "--save-every 0",
             f"bash scripts/recog.sh cpu {run} last {fast}",
             f"bash scripts/knn.sh cpu {run} last --workers 0",
             f"bash scripts/finetune.sh cpu {run} last {fast} --lp-epochs 2",
             f"bash scripts/semi.sh cpu {run} 0.5 last {fast} --lp-epochs 2 --batch-size 4",
             f"bash scripts/finetune.sh cpu mydata_xs_b_dste {tmp_path}/ckpt/{run}/last.pt {fast} "
             "--lp-epochs 2",
             f"bash scripts/fusion.sh finetune {run} mydata_xs_b_dste "
             f"--output {tmp_path}/fused.json"]
    for step in steps:
        res = bash(step, env)
        assert res.returncode == 0, (step, res.stderr[-2000:])
    out = tmp_path / "ckpt" / run
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["defaults"]["name"] == "auto-small"            # chosen from its manifest
    assert config["normalize"] == "view" and config["preset"] == "tiny"  # the flag won
    for name in ("linear.json", "knn.json", "finetune.json", "finetune_0.5.json"):
        result = json.loads((out / name).read_text())
        assert result["data"] == f"{tmp_path}/data/mydata" and "top1" in result, name
    assert len(json.loads((tmp_path / "fused.json").read_text())["streams"]) == 2


def shell_python_snippets():
    """(script, snippet) for every Python program written inline in the shell scripts:
    `"$PY" -c '...'` (single-quoted, no shell expansion inside) and `"$PY" - ... <<'EOF'`
    here-documents."""
    import re
    found = []
    for script in sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("benchmarks/*.sh")]):
        text = script.read_text()
        for m in re.finditer(r'"\$PY" -c \'(.*?)\'', text, re.S):
            found.append((script.name, m.group(1)))
        for m in re.finditer(r'"\$PY" - [^\n]*<<\'(\w+)\'\n(.*?)\n\1\n', text, re.S):
            found.append((script.name, m.group(2)))
    return found


def test_inline_python_of_the_shell_scripts_compiles():
    """A syntax error in an inline snippet only shows when a long benchmark reaches it (an
    f-string with a backslash, legal from Python 3.12 only, stopped detection.sh after 16 min)."""
    snippets = shell_python_snippets()
    assert {name for name, _ in snippets} >= {"detection.sh", "_common.sh"}
    for name, source in snippets:
        compile(source, f"{name} (inline python)", "exec")


def test_detection_benchmark_reads_the_encoder_flags_of_a_run(tmp_path):
    """The control run of benchmarks/detection.sh takes the pretrained run's architecture."""
    import json
    import sys
    (tmp_path / "config.json").write_text(json.dumps(
        {"config": {"preset": "small", "clip_len": 32, "normalize": "first_frame"}}))
    source = next(s for name, s in shell_python_snippets()
                  if name == "detection.sh" and '["config"]' in s)
    out = subprocess.run([sys.executable, "-c", source, str(tmp_path / "config.json")],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["--preset", "small", "--clip-len", "32", "--normalize", "first_frame"]


FAKE_PYTHON3 = """#!/bin/sh
# stands in for python3 -m venv DIR: DIR/bin/python, whose "-m pip install" takes a second and
# leaves one line in $SETUP_LOG
mkdir -p "$3/bin"
cat > "$3/bin/python" <<'INNER'
#!/bin/sh
[ "$1 $2 $3" = "-m pip install" ] && { echo "$PPID $*" >> "$SETUP_LOG"; sleep 1; }
exit 0
INNER
chmod +x "$3/bin/python"
"""


def test_two_scripts_started_at_once_set_the_environment_up_once(tmp_path):
    """A fresh clone and two scripts started together: the second waits for the first's setup
    (flock on $VENV.lock) instead of installing into the same folder at the same time."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(FAKE_PYTHON3)
    (fake_bin / "python3").chmod(0o755)
    log = tmp_path / "setup.log"
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}",
           "SKEL_VENV": str(tmp_path / "venv"), "SETUP_LOG": str(log)}
    command = f"source {ROOT}/scripts/env.sh && ensure_venv && echo $PY"
    runs = [subprocess.Popen(["bash", "-c", command], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == [str(tmp_path / "venv" / "bin" / "python")] * 2
    installs = log.read_text().splitlines()
    # one setup: the pip upgrade and the requirements, by one process
    assert len(installs) == 2 and len({line.split()[0] for line in installs}) == 1, installs
    assert "-r" in installs[1] and installs[1].endswith("requirements-dev.txt")
    # a third start finds it ready and installs nothing
    again = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and "[env] setting up" not in again.stderr
    assert len(log.read_text().splitlines()) == 2
