#!/usr/bin/env bash
# Temporal action detection and segmentation on untrimmed streams (action_detection.py).
# Usage: bash scripts/detect.sh GPUS RUN_NAME [CKPT | EPOCH | scratch] [extra flags]
#   bash scripts/detect.sh cpu demodet_xs_j_dste                # frozen checkpoint/<RUN>/last.pt
#   bash scripts/detect.sh 0 utk_xs_j_dste last --finetune --epochs 30
#   bash scripts/detect.sh 0 pku1det_xs_j_dste 300 --threshold 0.3 --smooth 5
# RUN_NAME's dataset must hold untrimmed streams: utk (feeders.prepare --format utkinect),
# demodet (generated on first use), pku1det / pku2det (feeders.prepare --format pku --task
# detection). Pretrain first with scripts/pretrain.sh on the same run name (its samples are
# windows of the training streams). Frozen encoder by default (small sets utk / demodet: lr 1.0) (window features cached in
# checkpoint/<RUN>/features); --finetune trains it too. One process: a GPU list uses its first
# GPU, cpuN runs one CPU process. Writes checkpoint/<RUN_NAME>/detection.json (or
# detection_finetune.json), <tag>_proposals/<video>.txt (label,start,end,confidence) and
# <tag>_scores.npz; evaluation.report shows the detection table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
usage_unless 2 "$@"
GPUS="$1"; shift
check_gpus "$GPUS"
parse_run_name "$1"; shift
_in_list "$RUN_DATASET" "$UNTRIMMED_DATASETS" \
    || die "dataset '$RUN_DATASET' has no untrimmed streams; detection runs on: $UNTRIMMED_DATASETS"
CKPT=last
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then CKPT="$1"; shift; fi
EXTRA=()
[ "$CKPT" = scratch ] && { scratch_encoder_flags; EXTRA=(${SCRATCH_FLAGS[@]+"${SCRATCH_FLAGS[@]}"}); }
# Small sets (utk, demodet) probe the frozen features with lr 1.0, as recog.sh does for small
# sets (batch 64; chosen on a validation split of NW-UCLA xview_train, see benchmarks/nwucla.sh);
# the probe's own default is HiCLR's 0.01. Flags given after the run name win.
LR=()
case " $* " in *" --finetune "*) ;; *) case "$RUN_DATASET" in utk|demodet) LR=(--lr 1.0) ;; esac ;; esac
DEVICE="${GPUS%%,*}"
[[ "$DEVICE" == cpu* ]] && DEVICE=cpu
ensure_dataset
launch "$DEVICE" action_detection.py "${RUN_DATA_ARGS[@]}" --pretrained "$CKPT" \
    ${LR[@]+"${LR[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} "$@"
