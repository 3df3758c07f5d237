#!/usr/bin/env bash
# Linear probe of a pretrained run (frozen encoder, cached features, 160 epochs).
# Usage: bash scripts/recog.sh GPUS RUN_NAME [CKPT | EPOCH] [extra action_recognition.py flags]
#   bash scripts/recog.sh 0 ntu60_xs_j_dste            # checkpoint/ntu60_xs_j_dste/last.pt
#   bash scripts/recog.sh 0 ntu60_xs_j_dste 300        # checkpoint/ntu60_xs_j_dste/epoch_0300.pt
#   bash scripts/recog.sh cpu demo_xs_j_dste path/to/other.pt --val-fraction 0.1
# Writes checkpoint/<RUN_NAME>/linear.json (+ _scores.npz, _confusion.csv). Per-dataset lr from
# the --defaults auto recipe (recipes.py; docs/METHOD.md section 5): 0.006 NTU-60 xsub and NTU-120,
# 0.03 NTU-60 xview, 0.01 PKU-MMD II; small sets (ucla, penn, demo, any small set of your own):
# lr 1.0 at batch 64.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_eval_command "$@"
launch "$GPUS" action_recognition.py --mode linear "${RUN_DATA_ARGS[@]}" \
    --pretrained "$CKPT" "${FLAGS[@]}"
