#!/usr/bin/env bash
# The main job on the embedded synthetic dataset, from a fresh clone, on a CPU:
#   1. sets up .venv with the pinned packages (first run only),
#   2. generates the synthetic demo dataset in ${SKEL_DATA:-data}/demo (first run only),
#   3. pretrains a small DSTE with the USDRL objective (run demo_xs_j_dste),
#   4. linear probe (cached frozen features) and KNN-1 retrieval on the cross-subject split,
#   5. prints a table beside the learning-free raw-coordinate 1-NN floor.
# Usage: bash scripts/demo.sh [GPUS] [extra pretrain.py flags]      (GPUS default: cpu)
# 2-10 minutes on 2 CPU cores, by CPU kind (README). Outputs in checkpoint/demo_xs_j_dste/ (TensorBoard in tb/).
# Re-running resumes the pretraining and reuses the cached features.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
GPUS="${1:-cpu}"
[ $# -gt 0 ] && shift
RUN=demo_xs_j_dste
parse_run_name "$RUN"
START=$SECONDS
ensure_dataset
bash scripts/pretrain.sh "$GPUS" "$RUN" "$@"
bash scripts/recog.sh "$GPUS" "$RUN" last
bash scripts/knn.sh "$GPUS" "$RUN" last
FLOOR="$("$PY" -m evaluation.baseline "$RUN_DATA" --train "$RUN_SPLIT" --test "$RUN_EVAL_SPLIT" --value)"
echo
echo "Synthetic demo, cross-subject split ($RUN_EVAL_SPLIT), $RUN_OUTPUT:"
"$PY" -m evaluation.report "$RUN_OUTPUT" \
    --baseline "raw-coordinate cosine 1-NN (learning-free floor)=$FLOOR"
echo "wall time: $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s"
