#!/usr/bin/env bash
# Semi-supervised evaluation: fine-tuning on a stratified FRACTION of the labelled training set.
# Usage: bash scripts/semi.sh GPUS RUN_NAME FRACTION [CKPT | EPOCH] [extra flags]
#   bash scripts/semi.sh 0 ntu60_xs_j_dste 0.01                 # 1 %, from last.pt
#   bash scripts/semi.sh 0 ntu60_xs_j_dste 0.1 300 --seed 1     # 10 %, epoch_0300.pt, other draw
#   bash scripts/semi.sh 0 ntu60_xs_j_dste 0.1 last --mode linear   # linear probe on 10 %
# The subset (at least one sample per class) is drawn from --seed; the chosen sample names are
# saved in checkpoint/<RUN_NAME>/finetune_<FRACTION>_labelled.txt next to finetune_<FRACTION>.json.
# Schedule: the --defaults auto recipe (recipes.py; small sets: finetune.sh's with 40 epochs of
# batch 16), last epoch reported.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
usage_unless 3 "$@"
GPUS="$1"; shift
check_gpus "$GPUS"
parse_run_name "$1"; shift
FRACTION="$1"; shift
[[ "$FRACTION" =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "FRACTION must be a number in (0, 1], got '$FRACTION'"
CKPT=last
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then CKPT="$1"; shift; fi
ensure_dataset
launch "$GPUS" action_recognition.py --mode finetune --label-fraction "$FRACTION" \
    "${RUN_DATA_ARGS[@]}" --pretrained "$CKPT" "$@"
