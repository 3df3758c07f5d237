#!/usr/bin/env bash
# Temporal action detection and segmentation on untrimmed streams (action_detection.py).
# Usage: bash scripts/detect.sh GPUS RUN_NAME [CKPT | EPOCH | scratch] [extra flags]
#   bash scripts/detect.sh cpu demodet_xs_j_dste                # frozen checkpoint/<RUN>/last.pt
#   bash scripts/detect.sh 0 utk_xs_j_dste last --finetune --epochs 30
#   bash scripts/detect.sh 0 pku1det_xs_j_dste 300 --threshold 0.3 --smooth 5
# RUN_NAME's dataset must hold untrimmed streams: utk (feeders.prepare --format utkinect),
# demodet (generated on first use), pku1det / pku2det (feeders.prepare --format pku --task
# detection). Pretrain first with scripts/pretrain.sh on the same run name (its samples are
# windows of the training streams). Frozen encoder by default (window features cached in
# checkpoint/<RUN>/features; the probe's lr from the --defaults auto recipe, recipes.py: 1.0 on
# small sets such as utk / demodet); --finetune trains it too. `scratch` takes the preset, clip
# length and normalisation of the dataset's pretraining recipe. One process: a GPU list uses its
# first GPU, cpuN runs one CPU process. Writes checkpoint/<RUN_NAME>/detection.json (or
# detection_tcn.json with --head tcn, detection_finetune.json with --finetune), <tag>_proposals/<video>.txt (label,start,end,confidence) and
# <tag>_scores.npz; evaluation.report shows the detection table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_eval_command "$@"
is_untrimmed || die "dataset '$RUN_DATASET' has no untrimmed streams (no frame_labels in \
$RUN_DATA/manifest.json); detection runs on e.g. utk demodet pku1det pku2det"
DEVICE="${GPUS%%,*}"
[[ "$DEVICE" == cpu* ]] && DEVICE=cpu
launch "$DEVICE" action_detection.py "${RUN_DATA_ARGS[@]}" --pretrained "$CKPT" "${FLAGS[@]}"
