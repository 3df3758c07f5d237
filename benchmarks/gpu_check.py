"""CUDA checks of benchmarks/gpu_check.sh that need more than an entry point's command line.

    python benchmarks/gpu_check.py nccl        # under torchrun --nproc_per_node=1
    python benchmarks/gpu_check.py knn
    python benchmarks/gpu_check.py precision RUN_DIR [EXPECTED]
    python benchmarks/gpu_check.py parse LIST   # --dry-run: lines NAME SCRIPT FLAGS... parse?

nccl: an NCCL process group (one GPU), all_reduce / all_gather, the engine's gradient-keeping
gather, torch's SyncBatchNorm kernel with its NCCL statistics exchange (forced on one process,
compared with BatchNorm), and two DDP + SyncBatchNorm + fp16 GradScaler training steps of a small
DSTE with USDRL heads. knn: exact cosine KNN of evaluation.knn on the GPU against the CPU.
precision: RUN_DIR/config.json chose EXPECTED (default: bf16 where the GPU supports it, else
fp16) and TF32 is on. Each prints `ok: ...` and exits 0, or raises.
"""
from __future__ import annotations

import argparse
import json
import runpy
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402


def check_nccl() -> str:
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.modules._functions import SyncBatchNorm as SyncBNFunction

    from feeders.layouts import get_layout
    from models import build_encoder
    from models.usdrl import USDRL, usdrl_loss

    dist.init_process_group("nccl")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    x = torch.arange(4.0, device=device)
    dist.all_reduce(x)
    assert torch.equal(x, torch.arange(4.0, device=device)), x
    parts = [torch.empty(3, device=device)]
    dist.all_gather(parts, torch.ones(3, device=device))
    y = torch.randn(5, 3, device=device, requires_grad=True)
    gathered = engine.distributed._GatherWithGrad.apply(y, 0)  # the cross-process path, forced
    gathered.sum().backward()
    assert torch.equal(gathered, y) and torch.equal(y.grad, torch.ones_like(y))
    # torch's SyncBatchNorm kernel (NCCL all_gather of the statistics) against BatchNorm
    inp = torch.randn(8, 6, 10, device=device, requires_grad=True)
    weight, bias = torch.ones(6, device=device), torch.zeros(6, device=device)
    out = SyncBNFunction.apply(inp, weight, bias, torch.zeros(6, device=device),
                               torch.ones(6, device=device), 1e-5, 0.1, dist.group.WORLD, 1)
    ref = F.batch_norm(inp.detach(), None, None, weight, bias, training=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.square().sum().backward()
    # DDP + SyncBatchNorm + fp16 GradScaler steps of a small DSTE with the USDRL heads
    torch.manual_seed(0)
    layout = get_layout("ntu25")
    model = USDRL(build_encoder("dste", "small", layout=layout, clip_len=32, channels=3,
                                bodies=2, seed=0))
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-4, fused=True)
    scaler = engine.make_scaler(torch.float16, device)
    for _ in range(2):
        views = torch.randn(4 * 8, 3, 32, 25, 2, device=device)
        with engine.precision_context(torch.float16, device):
            z = ddp(views, num_views=4)
        loss, _ = usdrl_loss({d: engine.gather_with_grad(v, 1) for d, v in z.items()})
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        assert torch.isfinite(loss), loss
    dist.destroy_process_group()
    return (f"NCCL {torch.cuda.nccl.version()}, SyncBatchNorm kernel, DDP fp16 steps "
            f"(loss {float(loss):.3g})")


def check_knn() -> str:
    from evaluation.knn import torch_topk

    gen = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(20000, 256, generator=gen), torch.randn(3000, 256, generator=gen)
    sims_cpu, idx_cpu = torch_topk(queries, gallery, k=5)
    torch.cuda.synchronize()
    sims_gpu, idx_gpu = torch_topk(queries.cuda(), gallery.cuda(), k=5)
    assert sims_gpu.device.type == "cpu"  # results come back on the CPU
    torch.testing.assert_close(sims_gpu, sims_cpu, rtol=1e-4, atol=1e-4)
    agree = (idx_gpu[:, 0] == idx_cpu[:, 0]).float().mean().item()
    assert agree > 0.999, agree
    return f"exact cosine top-5 on the GPU = CPU ({100 * agree:.2f} % same nearest neighbour)"


def check_precision(run_dir: Path, expected: str | None) -> str:
    meta = json.loads((run_dir / "config.json").read_text())
    choice = meta["precision_choice"]
    want = expected or engine.cuda_auto_precision(torch.device("cuda"))
    assert choice["precision"] == want, (choice, want)
    assert engine.enable_tf32(torch.device("cuda"), choice["precision"])
    assert torch.backends.cuda.matmul.allow_tf32
    return f"--precision auto chose {choice['precision']} ({choice['source']}); TF32 on"


def check_parse(script: str, flags: list[str]) -> None:
    """Parse `flags` with the script's own parser (build_parser() or parse_args(argv));
    SystemExit (argparse's error, exit 2) when they do not parse."""
    ns = runpy.run_path(str(ROOT / script), run_name="gpu_check_parse")
    if "build_parser" in ns:
        ns["build_parser"]().parse_args(flags)
    elif "parse_args" in ns:
        ns["parse_args"](flags)
    else:
        raise SystemExit(f"{script}: no build_parser/parse_args to check the flags with")


def check_parse_list(path: Path) -> int:
    """Every line `NAME SCRIPT FLAGS...` (shell-quoted) of gpu_check.sh --dry-run: parse the
    flags; returns the number of commands that do not parse."""
    bad = 0
    for line in Path(path).read_text().splitlines():
        name, script, *flags = shlex.split(line)
        try:
            check_parse(script, flags)
            print(f"dry-run ok   {name}")
        except SystemExit as err:
            print(f"dry-run FAIL {name}: {script} {' '.join(flags)} ({err})")
            bad += 1
    print("dry run: every command parses" if not bad else f"dry run: {bad} command(s) do not parse")
    return bad


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=("nccl", "knn", "precision", "parse"),
                        help="which check to run")
    parser.add_argument("rest", nargs=argparse.REMAINDER,
                        help="precision: RUN_DIR [EXPECTED]; parse: a file of lines "
                             "NAME SCRIPT FLAGS...")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.check == "parse":
        sys.exit(1 if check_parse_list(Path(args.rest[0])) else 0)
    if not torch.cuda.is_available():
        raise SystemExit(f"{args.check}: CUDA is not available")
    if args.check == "nccl":
        print("ok:", check_nccl())
    elif args.check == "knn":
        print("ok:", check_knn())
    else:
        expected = args.rest[1] if len(args.rest) > 1 else None
        print("ok:", check_precision(Path(args.rest[0]), expected))


if __name__ == "__main__":
    main()
