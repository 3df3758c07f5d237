#!/usr/bin/env bash
# USDRL pretraining from a run name.
# Usage: bash scripts/pretrain.sh GPUS RUN_NAME [extra pretrain.py flags]
#   bash scripts/pretrain.sh 0,1,2,3 ntu60_xs_j_dste
#   bash scripts/pretrain.sh cpu demo_xs_b_dste --epochs 5
# GPUS and RUN_NAME are described in scripts/_common.sh. The schedule is pretrain.py's
# --defaults auto recipe for the dataset (recipes.py; printed at the start, recorded in
# config.json). On an untrimmed dataset (utk, demodet, pku1det, pku2det) the samples are windows
# of its streams ($SKEL_DATA/<dataset>_windows, the same recipe). Re-running the same command
# resumes from checkpoint/<RUN_NAME>/last.pt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
usage_unless 2 "$@"
GPUS="$1"; shift
check_gpus "$GPUS"
parse_run_name "$1"; shift
ensure_dataset
pretraining_windows   # untrimmed datasets pretrain on windows of their streams
launch "$GPUS" pretrain.py "${RUN_DATA_ARGS[@]}" "$@"
