#!/usr/bin/env bash
# Every CUDA path of the suite on one GPU, in under 8 minutes, as one table:
#   fp16 autocast + GradScaler and bf16 pretraining, --precision auto (bf16 where the GPU has
#   it, else fp16; TF32 on), a CPU-written checkpoint resumed on CUDA, single-GPU torchrun,
#   NCCL + SyncBatchNorm + DDP (benchmarks/gpu_check.py nccl), feature extraction + KNN
#   (action_retrieval.py), a linear probe, exact KNN on the GPU against the CPU, the CUDA
#   columns of benchmarks/pretrain_step.py and benchmarks/encoders.py, and the detection
#   benchmark when benchmarks/detection_bench.py exists.
# Usage: bash benchmarks/gpu_check.sh [--dry-run]
#   --dry-run (any machine, no GPU needed): prints the commands and checks in one python process
#   that every command's flags parse with its entry point's own parser; runs nothing else.
# Environment: GPU_CHECK_DIR (outputs, default checkpoint/gpu_check), SKEL_PYTHON / SKEL_VENV.
# Outputs: $GPU_CHECK_DIR/logs/<check>.log for every check; the table on stdout.
set -uo pipefail
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"   # ROOT, ensure_venv
cd "$ROOT"
if [ -n "${SKEL_PYTHON:-}" ]; then PY="$SKEL_PYTHON"; else ensure_venv || exit 1; fi
W="${GPU_CHECK_DIR:-checkpoint/gpu_check}"
D="$W/data"
mkdir -p "$W/logs"
SMALL=(--data "$D" --preset small --clip-len 32 --batch-size 64 --epochs 1 --workers 4
       --save-every 0 --resume never)
ROWS=()
FAILED=0
PARSE_LIST="$W/logs/dry_run_commands.txt"
[ "$DRY" = 1 ] && : > "$PARSE_LIST"

# check NAME TIMEOUT_S LAUNCH TARGET [FLAGS...]
#   LAUNCH: py (python TARGET), mod (python -m TARGET), trun (torchrun, one GPU), cpu (python
#   TARGET with no GPU visible). --dry-run parses FLAGS with TARGET's own parser instead.
check() {
    local name="$1" limit="$2" launch="$3" target="$4"
    shift 4
    local cmd
    case "$launch" in
        py) cmd=("$PY" "$target" "$@") ;;
        mod) cmd=("$PY" -m "$target" "$@") ;;
        trun) cmd=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1 "$target" "$@") ;;
        cpu) cmd=(env CUDA_VISIBLE_DEVICES= "$PY" "$target" "$@") ;;
    esac
    if [ "$DRY" = 1 ]; then  # one line per command, parsed below in one python process
        printf '%s %q' "$name" "$target" >> "$PARSE_LIST"
        printf ' %q' "$@" >> "$PARSE_LIST"
        printf '\n' >> "$PARSE_LIST"
        echo "$name: ${cmd[*]}"
        return
    fi
    local start=$SECONDS status
    timeout "$limit" "${cmd[@]}" > "$W/logs/$name.log" 2>&1
    status=$?
    local note; note="$(grep -v '^\s*$' "$W/logs/$name.log" | tail -n 1 | cut -c1-110)"
    if [ "$status" = 0 ]; then status=ok; else status="FAIL ($status)"; FAILED=1; fi
    ROWS+=("$(printf '| %-22s | %-9s | %5d | %s |' "$name" "$status" $((SECONDS - start)) "$note")")
}

START=$SECONDS
if [ "$DRY" = 0 ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: CUDA is not available (use --dry-run on a CPU machine)')" || exit 1
    "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}; torch {torch.__version__}, CUDA {torch.version.cuda}, bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}')"
    [ -f "$D/manifest.json" ] || "$PY" -m feeders.synthetic --out "$D" --num-sequences 480 --workers 4 > "$W/logs/data.log" 2>&1 \
        || { echo "gpu_check: generating $D failed (see $W/logs/data.log)" >&2; exit 1; }
fi
check pretrain_fp16         300 py  pretrain.py "${SMALL[@]}" --output "$W/fp16" --precision fp16
check pretrain_bf16         300 py  pretrain.py "${SMALL[@]}" --output "$W/bf16" --precision bf16
check pretrain_auto         300 py  pretrain.py "${SMALL[@]}" --output "$W/auto" --precision auto
check auto_is_bf16_or_fp16   60 py  benchmarks/gpu_check.py precision "$W/auto"
check checkpoint_on_cpu     300 cpu pretrain.py "${SMALL[@]}" --preset tiny --batch-size 16 --output "$W/cpu_to_cuda" --precision fp32
check resumed_on_cuda       300 py  pretrain.py "${SMALL[@]}" --preset tiny --batch-size 16 --output "$W/cpu_to_cuda" --precision fp32 --epochs 2 --resume auto
check torchrun_1gpu         300 trun pretrain.py "${SMALL[@]}" --output "$W/torchrun"
check nccl_syncbn_ddp       180 trun benchmarks/gpu_check.py nccl
check features_knn          180 py  action_retrieval.py --data "$D" --split xsub_train --output "$W/bf16" --pretrained "$W/bf16/last.pt" --workers 4
check linear_probe          180 py  action_recognition.py --mode linear --data "$D" --split xsub_train --output "$W/bf16" --pretrained "$W/bf16/last.pt" --epochs 20 --workers 4
check knn_on_gpu            120 py  benchmarks/gpu_check.py knn
check pretrain_step_bench   300 py  benchmarks/pretrain_step.py --preset small --batch-size 32 --clip-len 64 --precisions fp32 fp16 bf16 auto --steps 3 --no-cpu
check pretrain_step_compiled 300 py benchmarks/pretrain_step.py --preset small --batch-size 32 --clip-len 64 --precisions bf16 --steps 3 --no-cpu --compile
check encoders_bench        300 py  benchmarks/encoders.py --presets small --batch-size 16 --iters 3
if [ -f benchmarks/detection_bench.py ]; then
    check detection_bench   240 py  benchmarks/detection_bench.py --presets small paper --lengths 1000 4000
fi

if [ "$DRY" = 1 ]; then
    "$PY" benchmarks/gpu_check.py parse "$PARSE_LIST"
    exit $?
fi
echo
echo "| check | status | s | last line of output ($W/logs/<check>.log) |"
echo "|---|---|---:|---|"
printf '%s\n' "${ROWS[@]}"
echo "wall time: $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s"
for bench in pretrain_step_bench pretrain_step_compiled encoders_bench; do
    echo; echo "== $bench"; cat "$W/logs/$bench.log"
done
exit "$FAILED"
