#!/usr/bin/env bash
# Multi-stream score fusion of evaluated runs.
# Usage: bash scripts/fusion.sh [TAG] RUN_NAME RUN_NAME ... [--weights W] [--logits] [--output F]
#        bash scripts/fusion.sh DATASET_PROTOCOL [TAG] [--weights W] [--logits] [--output F]
#   bash scripts/fusion.sh ntu60_xs_j_dste ntu60_xs_b_dste ntu60_xs_m_dste   # linear, 1:1:1
#   bash scripts/fusion.sh finetune ntu60_xs_j_stgcn ntu60_xs_b_stgcn ntu60_xs_jm_stgcn \
#       ntu60_xs_bm_stgcn --weights 2,2,1,1                  # pyskl's 4-stream j:b:jm:bm
#   bash scripts/fusion.sh ntu60_xs linear_0.1               # every checkpoint/ntu60_xs_*_*/linear_0.1.json
#   bash scripts/fusion.sh detection demodet_xs_j_dste demodet_xs_b_dste \
#       --output checkpoint/demodet_xs_j_dste/fusion_detection.json   # per-frame, then evaluated
# TAG is the results name of action_recognition.py (linear, finetune, finetune_0.01, ...;
# default linear) or action_detection.py (detection, detection_tcn, detection_finetune: --threshold
# --min-length --smooth --nms override the runs' proposal settings). A DATASET_PROTOCOL prefix
# takes all its runs, ordered by stream j b m jm bm.
# --output checkpoint/<RUN>/fusion_<TAG>.json saves the summary; evaluation.report shows it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
usage_unless 1 "$@"
TAG=linear
RUNS=()
PREFIX=""
while [ $# -gt 0 ] && [[ "$1" != -* ]]; do
    case "$1" in
        linear|finetune|linear_*|finetune_*|detection|detection_tcn|detection_finetune) TAG="$1" ;;
        *_*_*_*) RUNS+=("$1") ;;
        *_*) PREFIX="$1" ;;
        *) die "'$1' is neither a run name, a DATASET_PROTOCOL prefix nor a results tag" ;;
    esac
    shift
done
if [ -n "$PREFIX" ]; then
    for stream in $STREAM_NAMES; do
        for dir in "$CKPT_ROOT/${PREFIX}_${stream}_"*; do
            [ -f "$dir/$TAG.json" ] && RUNS+=("$(basename "$dir")")
        done
    done
    [ ${#RUNS[@]} -gt 0 ] || die "no $CKPT_ROOT/${PREFIX}_<stream>_<backbone>/$TAG.json found"
fi
[ ${#RUNS[@]} -ge 2 ] || die "fusion needs at least two runs, got ${#RUNS[@]}"
FILES=()
for run in "${RUNS[@]}"; do
    parse_run_name "$run"
    [ -f "$RUN_OUTPUT/$TAG.json" ] || die "$RUN_OUTPUT/$TAG.json not found (evaluate $run first)"
    FILES+=("$RUN_OUTPUT/$TAG.json")
done
"$PY" -m evaluation.fusion "${FILES[@]}" "$@"
