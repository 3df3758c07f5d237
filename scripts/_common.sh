# Shared by scripts/*.sh (source it): run names -> flags, GPU lists -> launch commands.
#
# RUN_NAME = <dataset>_<protocol>_<stream>_<backbone>, e.g. ntu60_xs_j_dste
#   dataset : any directory $SKEL_DATA/<dataset> holding a prepared dataset (manifest.json),
#             a name without _; the known ones (ntu60 ntu120 pku1 pku2 ucla demo kinetics penn)
#             may be missing: the scripts then print the command that prepares them; the
#             untrimmed ones (utk demodet pku1det pku2det: streams with per-frame labels) are
#             for detection (scripts/detect.sh)
#   protocol: from the dataset's split names: xs (xsub_train/xsub_val), xv (xview_*), xe (xset_*),
#             tv (train/val), p (any other p_train/p_val pair)
#   stream  : j m b jm bm jmb        (python -m models --list-streams; jmb: --method umurl)
#   backbone: dste sttr stgcn msg3d  (python -m models --list-encoders: every registered encoder)
# It maps to --data $SKEL_DATA/<dataset> --split <training split> --stream --backbone
# --output checkpoint/<RUN_NAME> (python -m recipes resolve RUN_NAME); the per-dataset
# defaults are the Python entry points' own (--defaults auto, recipes.py), so a script and the
# same flags given to the entry point run the same recipe; flags given after the run name win.
#
# GPUS: a comma list of GPU ids (0 or 0,1,2,3): torchrun --nproc_per_node=<count> with
#       CUDA_VISIBLE_DEVICES=<list>; without CUDA a message, then one CPU process.
#       cpu: one plain CPU process. cpuN: torchrun with N CPU processes (gloo).
# Multi-node (GPU lists): every node runs the same command with
#   NNODES=<nodes> NODE_RANK=<this node, 0..NNODES-1> MASTER_ADDR=<node 0 host> MASTER_PORT=<port>
# Environment: SKEL_DATA (dataset root, default data), SKEL_DEMO_SEQUENCES (size of the generated
# demo dataset, default 1200), SKEL_DEMODET_STREAMS (streams of the generated demodet set,
# default 40), SKEL_CHECKPOINTS (default checkpoint).
# Relative paths are relative to the repository root; the scripts run from there.
# Python: the project's .venv (created with the pinned requirements on first use), or
# $SKEL_PYTHON when set.

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"   # ROOT, ensure_venv
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"   # the calling script, before the cd
cd "$ROOT"
if [ -n "${SKEL_PYTHON:-}" ]; then PY="$SKEL_PYTHON"; else ensure_venv || exit 1; fi
DATA_ROOT="${SKEL_DATA:-data}"
CKPT_ROOT="${SKEL_CHECKPOINTS:-checkpoint}"

die() { echo "error: $*" >&2; exit 2; }

# Stream and backbone names come from Python (feeders/streams.py, the encoder registry).
_NAMES="$("$PY" -m models --list-encoders --list-streams)" || die "$PY -m models --list-encoders failed"
{ read -r BACKBONE_NAMES; read -r STREAM_NAMES; } <<< "$_NAMES"

_in_list() { local x; for x in $2; do [ "$x" = "$1" ] && return 0; done; return 1; }

run_name_error() {
    cat >&2 <<EOF
error: bad run name '$1': $2
A run name is <dataset>_<protocol>_<stream>_<backbone>, e.g. ntu60_xs_j_dste:
  dataset : a prepared dataset directory under ${DATA_ROOT} (name without _), or a known one:
            ntu60 ntu120 pku1 pku2 ucla demo kinetics penn utk demodet pku1det pku2det
  protocol: from the dataset's split names: xs (xsub_*), xv (xview_*), xe (xset_*), tv
            (train/val), p (p_train/p_val)
  stream  : $STREAM_NAMES
  backbone: $BACKBONE_NAMES
EOF
    exit 2
}

# parse_run_name NAME: sets RUN_NAME RUN_DATASET RUN_PROTOCOL RUN_SPLIT RUN_EVAL_SPLIT RUN_STREAM
# RUN_BACKBONE RUN_DATA RUN_OUTPUT RUN_PREPARE and the array RUN_DATA_ARGS (the flags above).
# The dataset and protocol are resolved by Python (recipes.resolve_run_name).
parse_run_name() {
    local name="$1" rest resolved
    IFS=_ read -r RUN_DATASET RUN_PROTOCOL RUN_STREAM RUN_BACKBONE rest <<< "$name"
    [ -n "$RUN_BACKBONE" ] && [ -z "$rest" ] \
        || run_name_error "$name" "expected 4 parts separated by _"
    _in_list "$RUN_STREAM" "$STREAM_NAMES" \
        || run_name_error "$name" "unknown stream '$RUN_STREAM'"
    _in_list "$RUN_BACKBONE" "$BACKBONE_NAMES" \
        || run_name_error "$name" "unknown backbone '$RUN_BACKBONE'"
    resolved="$("$PY" -m recipes resolve "$name" --data-root "$DATA_ROOT" 2>&1)" \
        || run_name_error "$name" "${resolved#error: }"
    eval "$resolved"   # RUN_DATASET RUN_PROTOCOL RUN_DATA RUN_SPLIT RUN_EVAL_SPLIT RUN_PREPARE
    RUN_NAME="$name"
    RUN_OUTPUT="$CKPT_ROOT/$RUN_NAME"
    RUN_DATA_ARGS=(--data "$RUN_DATA" --split "$RUN_SPLIT" --stream "$RUN_STREAM"
                   --backbone "$RUN_BACKBONE" --output "$RUN_OUTPUT")
}

# ensure_dataset: generate the demo (and demodet) dataset on first use; for any other missing
# dataset print the command that creates it and exit 1.
ensure_dataset() {
    [ -f "$RUN_DATA/manifest.json" ] && return 0
    if [ "$RUN_DATASET" = demo ]; then
        echo "[data] generating the synthetic demo dataset in $RUN_DATA" >&2
        "$PY" -m feeders.synthetic --out "$RUN_DATA" \
            --num-sequences "${SKEL_DEMO_SEQUENCES:-1200}" >&2
        return 0
    fi
    if [ "$RUN_DATASET" = demodet ]; then
        echo "[data] generating the synthetic untrimmed streams in $RUN_DATA" >&2
        "$PY" -m feeders.synthetic --untrimmed --out "$RUN_DATA" \
            --num-streams "${SKEL_DEMODET_STREAMS:-40}" >&2
        return 0
    fi
    {
        echo "error: dataset '$RUN_DATASET' not found ($RUN_DATA/manifest.json is missing)."
        echo "Create it from the official release (in $ROOT) with:"
        echo "  $PY -m $RUN_PREPARE"
        echo "or point SKEL_DATA at the folder that holds $RUN_DATASET/."
    } >&2
    exit 1
}

# usage_unless MIN_ARGS "$@": print the calling script's header comment and exit 2 when fewer
# than MIN_ARGS arguments were given.
usage_unless() {
    local min="$1"; shift
    [ $# -ge "$min" ] && return 0
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$SCRIPT" >&2
    exit 2
}

# parse_eval_command GPUS RUN_NAME [CKPT | EPOCH] [flags]: the command line of recog.sh, knn.sh,
# finetune.sh and detect.sh. Sets GPUS, the RUN_* of parse_run_name, CKPT (default last) and the
# array FLAGS (the flags after them), and makes sure the dataset exists.
parse_eval_command() {
    usage_unless 2 "$@"
    GPUS="$1"; shift
    check_gpus "$GPUS"
    parse_run_name "$1"; shift
    CKPT=last
    if [ $# -gt 0 ] && [[ "$1" != -* ]]; then CKPT="$1"; shift; fi
    FLAGS=("$@")
    ensure_dataset
}

# check_gpus GPUS: exit with a message unless GPUS is cpu, cpuN (N >= 1) or a list like 0,1,3.
check_gpus() {
    [[ "$1" =~ ^(cpu|cpu[1-9][0-9]*|[0-9]+(,[0-9]+)*)$ ]] \
        || die "bad GPUS '$1': expected cpu (one CPU process), cpuN (N CPU processes) or a GPU id list like 0 or 0,1,2,3"
}

# launch GPUS SCRIPT.py [args...]: run a python entry point on the GPU list (see the header).
launch() {
    local gpus="$1" count; shift
    check_gpus "$gpus"
    case "$gpus" in
        cpu) CUDA_VISIBLE_DEVICES= "$PY" "$@"; return ;;
        cpu[1-9]*)
            count="${gpus#cpu}"
            local threads=$(( $(nproc) / count )); [ "$threads" -ge 1 ] || threads=1
            CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}" \
                "$PY" -m torch.distributed.run --standalone --nproc_per_node="$count" "$@"
            return ;;
    esac
    if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" = 0 ]; then
        echo "warning: GPUs $gpus requested but CUDA is not available here; running one CPU process" >&2
        CUDA_VISIBLE_DEVICES= "$PY" "$@"
        return
    fi
    count=$(awk -F, '{print NF}' <<< "$gpus")
    local rdzv=(--standalone)
    if [ "${NNODES:-1}" -gt 1 ]; then
        rdzv=(--nnodes="$NNODES" --node_rank="${NODE_RANK:-0}"
              --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}")
    fi
    CUDA_VISIBLE_DEVICES="$gpus" "$PY" -m torch.distributed.run "${rdzv[@]}" \
        --nproc_per_node="$count" "$@"
}

# is_untrimmed: whether the run's dataset holds untrimmed streams (per-frame labels,
# frame_labels in its manifest's frame_arrays); call after ensure_dataset.
is_untrimmed() { grep -q '"frame_labels"' "$RUN_DATA/manifest.json"; }

# pretraining_windows: for an untrimmed dataset, pretraining samples are windows of its streams:
# write them once to $SKEL_DATA/<dataset>_windows (feeders.untrimmed: windows of twice the
# recipe's clip length every half clip, so the pretraining crops have room) and point
# RUN_DATA_ARGS' --data there (recipes.identify takes <dataset>_windows for <dataset>). Other
# datasets are left alone.
pretraining_windows() {
    is_untrimmed || return 0
    local clip=64 i flags windows="$DATA_ROOT/${RUN_DATASET}_windows"
    read -ra flags <<< "$("$PY" -m recipes show "$RUN_DATA" --split "$RUN_SPLIT" | tail -n 1)"
    for ((i = 0; i < ${#flags[@]}; i++)); do
        [ "${flags[$i]}" = --clip-len ] && clip="${flags[$((i + 1))]}"
    done
    if [ ! -f "$windows/manifest.json" ]; then
        echo "[data] cutting $RUN_DATA into windows of $((2 * clip)) frames for pretraining: $windows" >&2
        "$PY" -m feeders.untrimmed --src "$RUN_DATA" --out "$windows" --window $((2 * clip)) \
            --stride $((clip / 2)) >&2
    fi
    RUN_DATA_ARGS[1]="$windows"   # RUN_DATA_ARGS starts with --data "$RUN_DATA"
}
