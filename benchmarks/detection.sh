#!/usr/bin/env bash
# Temporal action detection benchmark, the whole pipeline through the user-facing scripts.
# Usage: bash benchmarks/detection.sh [--quick] [PATH_TO_UTKINECT_JOINTS]
#   (default ../shared/data/utkinect/joints)
# (a) synthetic untrimmed streams (demodet_xs_j_dste): pretraining on windows of the training
#     streams (scripts/pretrain.sh), frozen detection (scripts/detect.sh) with the per-frame
#     linear head (the SSL protocol) and with the temporal convolution head (--head tcn), the
#     temporal head on a random (untrained) encoder (<run>/random_encoder: what the head does
#     without pretraining), the learning-free floor (evaluation.detection_floor: per-frame
#     raw-pose 1-NN, its threshold and smoothing chosen by the same cross-validation over the
#     training streams, --select-threshold);
# (b) UTKinect-Action3D cross-subject (utk_xs_j_dste: odd subjects train, even test):
#     conversion (feeders.prepare --format utkinect), pretraining on windows of the training
#     streams, the same frozen rows, fine-tuned detection, the floor;
# (c) dense extraction speed and peak memory over whole streams (benchmarks/detection_bench.py:
#     DSTE small and paper, CPU, and CUDA when present).
# Each part ends with its evaluation.report table. Settings are the scripts' defaults
# (the --defaults auto recipes of recipes.py: frozen probe lr 1.0 on small sets;
# action_detection.py: min length 5, no smoothing, no NMS), fixed before looking at any test
# stream; each frozen run and the floor choose their threshold and smoothing by a
# cross-validation over the training streams in folds of 20 % (--select-threshold 0.2; the
# out-of-fold mAP_a@0.5 is in the JSON's threshold_selection.best_mAP_a@0.5, the
# training-split score that tells the two heads apart); the fine-tuned one (the linear head)
# takes the frozen linear run's threshold and smoothing (--settings-from: chosen on the
# training streams; its own selection would need a fine-tune per fold) and runs $FT_EPOCHS epochs (default 30) on a CPU instead of the
# protocol's 150.
# --quick: the same stages with a tiny encoder, one pretraining epoch, 5 probe epochs and one
# fine-tuning epoch, into runs/detection_quick (checks that everything runs; numbers mean
# nothing). Environment: SKEL_DATA (default runs/detection[_quick]/data), SKEL_CHECKPOINTS
# (default runs/detection[_quick]/checkpoint), GPUS (default cpu), WORKERS (default 1),
# FT_EPOCHS, PARTS (default "synthetic utk speed": the parts to run), PRETRAIN_EXTRA (extra
# pretraining flags, e.g. "--preset tiny --epochs 40" where a small encoder does not fit the
# machine's time). Re-running resumes every stage that has a checkpoint.
set -euo pipefail
QUICK=0
if [ "${1:-}" = --quick ]; then QUICK=1; shift; fi
SRC="${1:-$(dirname "${BASH_SOURCE[0]}")/../../shared/data/utkinect/joints}"
[ -d "$SRC" ] || { echo "error: UTKinect joints folder '$SRC' not found (expected joints_s*_e*.txt)" >&2; exit 2; }
SRC="$(cd "$SRC" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG=detection; [ "$QUICK" = 1 ] && TAG=detection_quick
export SKEL_DATA="${SKEL_DATA:-$REPO/runs/$TAG/data}"
export SKEL_CHECKPOINTS="${SKEL_CHECKPOINTS:-$REPO/runs/$TAG/checkpoint}"
source "$REPO/scripts/_common.sh"   # PY, cd to the repository root
GPUS="${GPUS:-cpu}"
RUNTIME=(--workers "${WORKERS:-1}")
read -r -a PRETRAIN <<< "${PRETRAIN_EXTRA:-}"
DETECT=(--select-threshold 0.2)   # threshold and smoothing chosen on 20 % of the training streams
FINETUNE=(--epochs "${FT_EPOCHS:-30}") SPEED=() TCN=()
PARTS="${PARTS:-synthetic utk speed}"
if [ "$QUICK" = 1 ]; then
    export SKEL_DEMODET_STREAMS=8
    PRETRAIN=(--preset tiny --epochs 1 --batch-size 16 --save-every 0 ${PRETRAIN[@]+"${PRETRAIN[@]}"})
    DETECT=(--epochs 5 --select-threshold 0.2)
    TCN=(--tcn-layers 3 --tcn-hidden 8)
    FINETUNE=(--epochs 1)
    SPEED=(--presets small --lengths 256 1024 --batch-size 16)
fi

START=$SECONDS
stage() { echo; echo "== [$(( (SECONDS - START) / 60 )) min] $*"; }

detection_part() {   # RUN: pretrain, frozen (+ fine-tuned when $2 = finetune), floor, table
    local run="$1" data="$SKEL_DATA/${1%%_*}"
    stage "pretrain $run (windows of the training streams)"
    bash scripts/pretrain.sh "$GPUS" "$run" ${PRETRAIN[@]+"${PRETRAIN[@]}"} "${RUNTIME[@]}"
    "$PY" -m feeders.inspect "$data"
    stage "detection, frozen encoder, per-frame linear head"
    bash scripts/detect.sh "$GPUS" "$run" last ${DETECT[@]+"${DETECT[@]}"} "${RUNTIME[@]}"
    stage "detection, frozen encoder, temporal convolution head"
    bash scripts/detect.sh "$GPUS" "$run" last --head tcn ${DETECT[@]+"${DETECT[@]}"} \
        ${TCN[@]+"${TCN[@]}"} "${RUNTIME[@]}"
    stage "detection, random encoder, temporal convolution head (control)"
    local encoder   # the pretrained encoder's architecture, with random weights
    encoder=$("$PY" -c 'import json, sys; c = json.load(open(sys.argv[1]))["config"]
print("--preset", c["preset"], "--clip-len", c["clip_len"], "--normalize", c["normalize"])' \
        "$SKEL_CHECKPOINTS/$run/config.json")
    read -r -a encoder <<< "$encoder"
    bash scripts/detect.sh "$GPUS" "$run" scratch --head tcn "${encoder[@]}" \
        ${DETECT[@]+"${DETECT[@]}"} ${TCN[@]+"${TCN[@]}"} "${RUNTIME[@]}" \
        --output "$SKEL_CHECKPOINTS/$run/random_encoder"
    if [ "${2:-}" = finetune ]; then
        stage "detection, fine-tuned encoder"
        bash scripts/detect.sh "$GPUS" "$run" last --finetune "${FINETUNE[@]}" "${RUNTIME[@]}" \
            --settings-from "$SKEL_CHECKPOINTS/$run/detection.json"
    fi
    stage "learning-free floor"
    "$PY" -m evaluation.detection_floor --data "$data" --output "$SKEL_CHECKPOINTS/$run" \
        --select-threshold 0.2   # its own settings, chosen on the training streams
    stage "table $run ($(date -u +%Y-%m-%d), $(uname -m), $(nproc) CPU cores)"
    "$PY" -m evaluation.report "$SKEL_CHECKPOINTS/$run" "$SKEL_CHECKPOINTS/$run/random_encoder"
    "$PY" - "$SKEL_CHECKPOINTS/$run" <<'PYEOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
print("cross-validated mAP_a@0.5 on the training streams (the selection's score):")
for path in (run / "detection.json", run / "detection_tcn.json",
             run / "random_encoder" / "detection_tcn.json", run / "detection_floor.json"):
    sel = json.loads(path.read_text())["config"].get("threshold_selection") or {}
    print(f"  {path.relative_to(run)}: {sel.get('best_mAP_a@0.5', float('nan')):.1f} "
          f"(threshold {sel.get('threshold')}, smoothing {sel.get('smooth')})")
PYEOF
}

if _in_list synthetic "$PARTS"; then
    stage "(a) synthetic untrimmed streams"
    detection_part demodet_xs_j_dste
fi
if _in_list utk "$PARTS"; then
    stage "(b) UTKinect-Action3D cross-subject: convert $SRC"
    if [ -f "$SKEL_DATA/utk/manifest.json" ]; then
        echo "already converted"
    else
        "$PY" -m feeders.prepare --format utkinect --src "$SRC" --out "$SKEL_DATA/utk"
    fi
    detection_part utk_xs_j_dste finetune
fi
if _in_list speed "$PARTS"; then
    stage "(c) dense extraction speed and peak memory"
    "$PY" benchmarks/detection_bench.py ${SPEED[@]+"${SPEED[@]}"}
fi
stage "done"
