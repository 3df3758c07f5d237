#!/usr/bin/env bash
# KNN retrieval of a pretrained run: training split = gallery, test split = queries, cosine.
# Usage: bash scripts/knn.sh GPUS RUN_NAME [CKPT | EPOCH] [extra action_retrieval.py flags]
#   bash scripts/knn.sh 0 ntu60_xs_j_dste              # checkpoint/ntu60_xs_j_dste/last.pt, k=1
#   bash scripts/knn.sh 0 ntu60_xs_j_dste 300 --k 5    # epoch_0300.pt, 5-NN vote
# Writes checkpoint/<RUN_NAME>/knn.json (knn_k<K>.json for k > 1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_eval_command "$@"
launch "$GPUS" action_retrieval.py "${RUN_DATA_ARGS[@]}" \
    --pretrained "$CKPT" "${FLAGS[@]}"
