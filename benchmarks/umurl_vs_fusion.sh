#!/usr/bin/env bash
# UmURL's single model against the fusion of separate joint / motion / bone models, at equal
# pretraining time, on NW-UCLA cross-view (views 1-2 train, view 3 = xview_val test).
# Usage: bash benchmarks/umurl_vs_fusion.sh [--quick] [PATH_TO_NW_UCLA]
#   (default ../shared/data/nw_ucla; it holds all_sqe/ of the CTR-GCN release)
# Steps: convert (as benchmarks/nwucla.sh), pretrain three USDRL models (ucla_xv_{j,m,b}_dste,
# the ucla defaults of scripts/_common.sh, EPOCHS epochs each), pretrain one UmURL model
# (ucla_xv_jmb_dste, --method umurl, 3 x EPOCHS epochs), linear probe and KNN-1 of all four,
# fuse the three linear probes 1:1:1 (evaluation.fusion), print the two reports and the
# measured pretraining wall times.
# Equal pretraining time: a UmURL step encodes 4 views of B sequences, as a USDRL step does (its
# extra motion and bone embedders are two small MLPs), so 3 x the epochs of one separate model
# costs what the three separate models cost together; the script measures and prints both
# totals so the equality is checked, not assumed.
# --quick: the tiny preset, 2 epochs per separate model (6 for UmURL), 5 linear-probe epochs:
# the whole pipeline end to end in minutes on 2 CPU cores; its accuracies mean nothing.
# Full budget: about 3 x 42 + 126 minutes of pretraining on 2 CPU cores (the ucla defaults take
# 42 min 32 s per model there, benchmarks/nwucla.sh), about 4.5 hours with the evaluations.
# EPOCHS (default 120, the ucla defaults) sets the epochs of each separate model (UmURL gets
# 3 x EPOCHS), the lr drop at 5/6 of them: EPOCHS=30 is a quarter of the budget (about 70 min).
# Environment: SKEL_DATA (default runs/nwucla/data: the conversion of benchmarks/nwucla.sh is
# reused), SKEL_CHECKPOINTS (default runs/umurl_vs_fusion[_quick]/checkpoint), GPUS (default cpu),
# WORKERS (default 1). Re-running resumes every stage that has a checkpoint.
set -euo pipefail
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
case "${1:-}" in -h|--help) sed -n '2,23p' "$0"; exit 0 ;; esac
SRC="${1:-$(dirname "${BASH_SOURCE[0]}")/../../shared/data/nw_ucla}"
[ -d "$SRC" ] || { echo "error: NW-UCLA folder '$SRC' not found (expected all_sqe/*.json)" >&2; exit 2; }
SRC="$(cd "$SRC" && pwd)"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUFFIX=""; [ "$QUICK" = 1 ] && SUFFIX=_quick
export SKEL_DATA="${SKEL_DATA:-$REPO/runs/nwucla/data}"
export SKEL_CHECKPOINTS="${SKEL_CHECKPOINTS:-$REPO/runs/umurl_vs_fusion$SUFFIX/checkpoint}"
source "$REPO/scripts/_common.sh"   # PY, cd to the repository root
GPUS="${GPUS:-cpu}"
RUNTIME=(--workers "${WORKERS:-1}")
if [ "$QUICK" = 1 ]; then
    EPOCHS=2; MILESTONE=2; SIZE=(--preset tiny); PROBE=(--epochs 5)
    RUNTIME+=(--threads 1)   # tiny models on a shared CPU: one thread avoids barrier stalls
else
    EPOCHS="${EPOCHS:-120}"; SIZE=(); PROBE=()   # the ucla defaults (recipes.SMALL)
    MILESTONE=$(( EPOCHS * 5 / 6 ))              # 100 of 120, as recipes.SMALL
fi
SEPARATE=(ucla_xv_j_dste ucla_xv_m_dste ucla_xv_b_dste)
UNIFIED=ucla_xv_jmb_dste

START=$SECONDS
stage() { echo; echo "== [$(( (SECONDS - START) / 60 )) min] $*"; }

stage "convert $SRC -> $SKEL_DATA/ucla"
if [ -f "$SKEL_DATA/ucla/manifest.json" ]; then
    echo "already converted"
else
    "$PY" -m feeders.prepare --format nwucla --src "$SRC" --out "$SKEL_DATA/ucla"
fi

SEPARATE_S=0
for run in "${SEPARATE[@]}"; do
    stage "pretrain $run (usdrl, $EPOCHS epochs)"
    t=$SECONDS
    bash scripts/pretrain.sh "$GPUS" "$run" "${SIZE[@]+"${SIZE[@]}"}" --epochs "$EPOCHS" \
        --milestones "$MILESTONE" "${RUNTIME[@]}"
    SEPARATE_S=$(( SEPARATE_S + SECONDS - t ))
done
stage "pretrain $UNIFIED (umurl, $(( 3 * EPOCHS )) epochs)"
t=$SECONDS
bash scripts/pretrain.sh "$GPUS" "$UNIFIED" --method umurl "${SIZE[@]+"${SIZE[@]}"}" \
    --epochs $(( 3 * EPOCHS )) --milestones $(( 3 * MILESTONE )) "${RUNTIME[@]}"
UNIFIED_S=$(( SECONDS - t ))

for run in "${SEPARATE[@]}" "$UNIFIED"; do
    stage "linear probe and KNN-1 of $run"
    bash scripts/recog.sh "$GPUS" "$run" last "${PROBE[@]+"${PROBE[@]}"}" "${RUNTIME[@]}"
    bash scripts/knn.sh "$GPUS" "$run" last "${RUNTIME[@]}"
done
stage "fuse the three separate linear probes 1:1:1"
J_DIR="$SKEL_CHECKPOINTS/${SEPARATE[0]}"
FILES=()
for run in "${SEPARATE[@]}"; do FILES+=("$SKEL_CHECKPOINTS/$run/linear.json"); done
"$PY" -m evaluation.fusion "${FILES[@]}" --output "$J_DIR/fusion_linear.json"

stage "results: NW-UCLA cross-view (test split xview_val)"
echo "UmURL, one model for joint + motion + bone ($SKEL_CHECKPOINTS/$UNIFIED):"
"$PY" -m evaluation.report "$SKEL_CHECKPOINTS/$UNIFIED"
for run in "${SEPARATE[@]}"; do
    echo "USDRL, separate model $run ($SKEL_CHECKPOINTS/$run; the fusion row is of all three):"
    "$PY" -m evaluation.report "$SKEL_CHECKPOINTS/$run"
done
# A resumed stage counts only the time of this call.
echo "pretraining wall time: three separate models $(( SEPARATE_S / 60 )) min $(( SEPARATE_S % 60 )) s," \
     "UmURL $(( UNIFIED_S / 60 )) min $(( UNIFIED_S % 60 )) s"
echo "wall time: $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s"
