#!/usr/bin/env bash
# End-to-end fine-tuning of a pretrained run (or training from scratch).
# Usage: bash scripts/finetune.sh GPUS RUN_NAME [CKPT | EPOCH | scratch] [extra flags]
#   bash scripts/finetune.sh 0,1 ntu60_xs_j_dste                # from checkpoint/<RUN>/last.pt
#   bash scripts/finetune.sh 0 ntu60_xs_j_dste scratch          # random init, the dataset's preset
#   bash scripts/finetune.sh 0 ntu60_xs_j_dste last --layer-decay 0.8 --val-fraction 0.05
#   bash scripts/finetune.sh 0 ntu60_xs_b_dste checkpoint/ntu60_xs_j_dste/last.pt
#       # the joint pretraining fine-tuned on bone input (only fine-tuning may change the
#       # stream), then: bash scripts/fusion.sh finetune ntu60_xs_j_dste ntu60_xs_b_dste
# Defaults (action_recognition.py --help): AdamW lr 3e-4, wd 0.05, batch 64, 100 epochs,
# 5 warmup epochs then cosine, label smoothing 0.1; small sets (ucla, penn, demo, any small
# set of your own; the --defaults auto recipe of recipes.py, chosen without the test split):
# a 160-epoch linear probe of the head first (LP-FT), then lr 1e-3, 50 epochs, 2 warmup,
# --shear 1.0, and on cross-view 3D data --rotate 90 --rotate-axes y (semi.sh: --rotate 60).
# `scratch` takes the preset, clip length
# and normalisation of the dataset's pretraining recipe. --val-fraction F also reports a "best" epoch chosen on F of the training
# split (never the test split). Writes checkpoint/<RUN_NAME>/finetune.json;
# training state in checkpoint/<RUN_NAME>/finetune/ (re-running resumes).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_eval_command "$@"
launch "$GPUS" action_recognition.py --mode finetune "${RUN_DATA_ARGS[@]}" \
    --pretrained "$CKPT" "${FLAGS[@]}"
