# Shared by scripts/*.sh (source it): run names -> flags, GPU lists -> launch commands.
#
# RUN_NAME = <dataset>_<protocol>_<stream>_<backbone>, e.g. ntu60_xs_j_dste
#   dataset : ntu60 ntu120 pku1 pku2 ucla demo kinetics penn   (directory $SKEL_DATA/<dataset>)
#             untrimmed streams for detection (scripts/detect.sh): utk (UTKinect-Action3D),
#             demodet (synthetic), pku1det pku2det (PKU-MMD --task detection)
#   protocol: xs (xsub) xv (xview) xe (xset) tv (train/val of kinetics, penn)
#   stream  : j m b jm bm
#   backbone: dste sttr stgcn msg3d
# It maps to --data $SKEL_DATA/<dataset> --split <protocol>_train --stream --backbone
# --output checkpoint/<RUN_NAME>, plus the per-dataset defaults of `dataset_defaults`; flags given
# after the run name come last and win.
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

DATASETS="ntu60 ntu120 pku1 pku2 ucla demo kinetics penn utk demodet pku1det pku2det"
UNTRIMMED_DATASETS="utk demodet pku1det pku2det"   # whole streams with per-frame labels
STREAM_NAMES="j m b jm bm"
BACKBONE_NAMES="dste sttr stgcn msg3d"

die() { echo "error: $*" >&2; exit 2; }

_in_list() { local x; for x in $2; do [ "$x" = "$1" ] && return 0; done; return 1; }

# Protocols each dataset has.
_protocols_of() {
    case "$1" in
        ntu60|pku1|pku2|pku1det|pku2det) echo "xs xv" ;;
        utk|demodet) echo "xs" ;;
        ntu120) echo "xs xe" ;;
        ucla) echo "xv" ;;
        demo) echo "xs" ;;
        kinetics|penn) echo "tv" ;;
    esac
}

run_name_error() {
    cat >&2 <<EOF
error: bad run name '$1': $2
A run name is <dataset>_<protocol>_<stream>_<backbone>, e.g. ntu60_xs_j_dste:
  dataset : $DATASETS
  protocol: xs (xsub), xv (xview), xe (xset), tv (train/val); per dataset:
            ntu60 pku1 pku2: xs xv | ntu120: xs xe | ucla: xv | demo: xs | kinetics penn: tv
            pku1det pku2det: xs xv | utk demodet: xs
  stream  : $STREAM_NAMES
  backbone: $BACKBONE_NAMES
EOF
    exit 2
}

# parse_run_name NAME: sets RUN_NAME RUN_DATASET RUN_PROTOCOL RUN_SPLIT RUN_EVAL_SPLIT RUN_STREAM
# RUN_BACKBONE RUN_DATA RUN_OUTPUT, the array RUN_DATA_ARGS (the flags above) and RUN_ARGS (those
# plus the dataset's pretraining defaults).
parse_run_name() {
    local name="$1" rest
    IFS=_ read -r RUN_DATASET RUN_PROTOCOL RUN_STREAM RUN_BACKBONE rest <<< "$name"
    [ -n "$RUN_BACKBONE" ] && [ -z "$rest" ] || run_name_error "$name" "expected 4 parts separated by _"
    _in_list "$RUN_DATASET" "$DATASETS" || run_name_error "$name" "unknown dataset '$RUN_DATASET'"
    _in_list "$RUN_PROTOCOL" "$(_protocols_of "$RUN_DATASET")" \
        || run_name_error "$name" "dataset $RUN_DATASET has no protocol '$RUN_PROTOCOL'"
    _in_list "$RUN_STREAM" "$STREAM_NAMES" || run_name_error "$name" "unknown stream '$RUN_STREAM'"
    _in_list "$RUN_BACKBONE" "$BACKBONE_NAMES" || run_name_error "$name" "unknown backbone '$RUN_BACKBONE'"
    case "$RUN_PROTOCOL" in
        xs) RUN_SPLIT=xsub_train ;; xv) RUN_SPLIT=xview_train ;;
        xe) RUN_SPLIT=xset_train ;; tv) RUN_SPLIT=train ;;
    esac
    RUN_EVAL_SPLIT="${RUN_SPLIT%train}val"
    RUN_NAME="$name"
    RUN_DATA="$DATA_ROOT/$RUN_DATASET"
    RUN_OUTPUT="$CKPT_ROOT/$RUN_NAME"
    RUN_DATA_ARGS=(--data "$RUN_DATA" --split "$RUN_SPLIT" --stream "$RUN_STREAM"
                   --backbone "$RUN_BACKBONE" --output "$RUN_OUTPUT")
    RUN_ARGS=("${RUN_DATA_ARGS[@]}")
    dataset_defaults "$RUN_DATASET"
    RUN_ARGS+=("${DATASET_DEFAULTS[@]}")
}

# dataset_defaults DATASET: sets the array DATASET_DEFAULTS (pretraining schedule per dataset).
# NTU/PKU-I/Kinetics: the paper (batch 356, Adam 5e-4, 451 epochs, x0.1 at 351); PKU-II: batch
# 512, 1201 epochs, step at 801. Small sets (NW-UCLA 1020 training clips, median 31 frames;
# Penn Action): sized to pretrain in 40-45 minutes on 2 CPU cores (benchmarks/nwucla.sh): the
# small DSTE with bf16 autocast (about 50 clips/s of 4 views there, 2.4x fp32), 32-frame clips
# (about the median length), batch 64, Adam 1e-3 for 120 epochs (1800 steps), x0.1 at epoch 100.
# Pretraining length, judged by fine-tuning on view 1 and testing on view 2 of xview_train
# (benchmarks/nwucla_select.py schedule; joint / bone input / the two fused, top-1 %): 60
# epochs (x0.1 at 50) 74.8 / 74.8 / 77.4; 120 (x0.1 at 100) 76.8 / 74.2 / 81.2; 180 (x0.1 at
# 150) 77.8 / 75.8 / 81.0, which would take the NW-UCLA script to about 85 minutes: 120 kept.
# NW-UCLA is a cross-view benchmark of 3D skeletons: its clips are also turned to face the camera
# (--normalize view), which lifts raw 1-NN from view 1 to view 2 of xview_train from 51.8 to
# 61.7 % (tests/test_nwucla.py; the test view 3 is not looked at). Penn Action is 2D: centred only.
# NW-UCLA also pretrains with every view turned by a random rotation of up to 60 degrees about
# each axis (pretrain.py --rotate 60, as the fine-tuning does), judged on view 1 -> view 2 of
# xview_train (KNN-1 / linear probe / fine-tune joint / bone input / fused, top-1 %): without
# 71.6 / 72.8 / 76.8 / 74.2 / 81.2, with 74.0 / 75.0 / 77.4 / 74.8 / 81.0; adding shorter
# temporal crops (--min-crop 16, half the clip) lost a little (fine-tune 75.8 / 75.0 / 80.8).
# On the test view (benchmarks/nwucla.sh, reported after the choice): linear 85.1 -> 87.5, KNN-1
# 83.6 -> 86.9, fine-tune fused 90.5 -> 91.4. A larger encoder for the same pretraining time
# (--preset base, hidden 512, 2.9x the step time: 45 epochs, x0.1 at 38, 44 min) fine-tuned
# worse on view 2: joint / bone input / fused 75.0 / 73.0 / 79.0 against 77.4 / 74.8 / 81.0.
dataset_defaults() {
    case "$1" in
        ntu60|ntu120|pku1|kinetics|pku1det)
            DATASET_DEFAULTS=(--preset paper --batch-size 356 --lr 5e-4 --epochs 451 --milestones 351) ;;
        pku2|pku2det)
            DATASET_DEFAULTS=(--preset paper --batch-size 512 --lr 5e-4 --epochs 1201 --milestones 801) ;;
        ucla)
            DATASET_DEFAULTS=(--preset small --clip-len 32 --batch-size 64 --lr 1e-3 --epochs 120
                              --milestones 100 --normalize view --rotate 60) ;;
        penn)
            DATASET_DEFAULTS=(--preset small --clip-len 32 --batch-size 64 --lr 1e-3 --epochs 120
                              --milestones 100) ;;
        # UTKinect-Action3D (10 training streams, about 7.6k frames; pretraining on its windows,
        # see pretraining_windows): the small-set recipe of ucla at 20 epochs, sized for a
        # shared 2-core CPU (benchmarks/detection.sh).
        utk)
            DATASET_DEFAULTS=(--preset small --clip-len 32 --batch-size 64 --lr 1e-3 --epochs 20
                              --milestones 16 --rotate 60) ;;
        demodet)
            DATASET_DEFAULTS=(--preset small --clip-len 32 --batch-size 64 --lr 1e-3 --epochs 10
                              --milestones 8 --threads 1 --workers 1) ;;
        demo)  # sized for the README's first command: about 6 minutes on 2 CPU cores
            DATASET_DEFAULTS=(--preset small --clip-len 32 --batch-size 64 --lr 1e-3 --epochs 10
                              --milestones 8 --threads 1 --workers 1) ;;
    esac
}

# finetune_defaults DATASET full|semi: sets FINETUNE_DEFAULTS, the fine-tuning schedule of
# finetune.sh (full) and semi.sh for small sets (demo, ucla, penn: about 1k training clips):
# AdamW 1e-3, 2 warmup epochs, per-clip shear 1.0 then rotation up to 60 degrees about each axis;
# full: 50 epochs of batch 64 on the whole training split; semi: 40 epochs of batch 16 (10 % of
# NW-UCLA is 102 clips). Chosen without the test split, by fine-tuning on view 1 of NW-UCLA
# xview_train and evaluating on its view 2 (`python benchmarks/nwucla_select.py`, 120 pretraining
# epochs; last-epoch view-2 top-1 %): no augmentation 72.6, shear 1.0 74.4, rotate 15 75.2,
# rotate 30 74.4, shear 1.0 + rotate 15 76.0 / 75.8 (seed 1), + rotate 30 75.2, + rotate 60
# 76.8 / 76.8 (seed 1), + rotate 90 75.6; with rotate 15: lr 3e-4 76.0, 100 epochs 75.4, 10 %
# held out 75.0 (so no hold-out: add --val-fraction 0.1 for a "best" epoch chosen on the training
# split); with rotate 60: drop path 0.2 76.6, layer decay 0.8 77.2, no label smoothing 75.2 (within
# a clip or two of 76.8: left at the defaults); --flip 0.5 (seeds 0 / 1): joint 78.0 / 76.6
# against 76.8 / 76.8, bone input 75.8 / 76.8 against 74.2 / 75.6, joint + bone fused 80.2 / 81.3
# against 81.2 / 80.2 (the fused number benchmarks/nwucla.sh reports does not move: left off);
# batch 32 / 16 (2x / 4x the steps): joint 74.6 / 77.0, bone input 76.2 / 74.2, fused 80.4 / 79.8
# against 81.2 at batch 64 (kept). From the --rotate 60 pretraining: --min-crop 16 (temporal
# crops down to half the clip) joint 76.2 against 77.4, layer decay 0.8 joint / bone input /
# fused 76.8 / 74.4 / 80.6 against 77.4 / 74.8 / 81.0 (both left off). More fine-tunes fused,
# joint + bone with seeds 0 and 1: 81.5; seeds 0-1 with and without --flip 0.5 (8 fine-tunes):
# 81.7, against 81.0 for the pair (16 more minutes in benchmarks/nwucla.sh for under a point:
# left off).
# action_recognition.py's own defaults (AdamW 3e-4, batch 64, 100 epochs, 5 warmup, no shear or
# rotation) are for NTU-sized sets. Flags given on the command line come later and win.
finetune_defaults() {
    FINETUNE_DEFAULTS=()
    case "$1/$2" in
        demo/full|ucla/full|penn/full)
            FINETUNE_DEFAULTS=(--epochs 50 --lr 1e-3 --warmup-epochs 2 --batch-size 64 --shear 1.0
                               --rotate 60) ;;
        demo/semi|ucla/semi|penn/semi)
            FINETUNE_DEFAULTS=(--epochs 40 --lr 1e-3 --warmup-epochs 2 --batch-size 16 --shear 1.0
                               --rotate 60) ;;
    esac
}

# scratch_encoder_flags: sets SCRATCH_FLAGS, the encoder flags of the dataset's pretraining
# defaults (preset, clip length, normalisation) for a run without a checkpoint to inherit them from.
scratch_encoder_flags() {
    SCRATCH_FLAGS=()
    local i
    for ((i = 0; i < ${#DATASET_DEFAULTS[@]}; i++)); do
        case "${DATASET_DEFAULTS[$i]}" in
            --preset|--clip-len|--normalize) SCRATCH_FLAGS+=("${DATASET_DEFAULTS[$i]}" "${DATASET_DEFAULTS[$((i + 1))]}") ;;
        esac
    done
}

# The command that creates a dataset directory from its official release.
prepare_command() {
    local out="$DATA_ROOT/$1"
    case "$1" in
        ntu60) echo "$PY -m feeders.prepare --format ntu --benchmark ntu60 --src /path/to/nturgb+d_skeletons --out $out --workers 8" ;;
        ntu120) echo "$PY -m feeders.prepare --format ntu --benchmark ntu120 --src /path/to/nturgb+d_skeletons_120 --out $out --workers 8" ;;
        pku1) echo "$PY -m feeders.prepare --format pku --src /path/to/PKU-MMD-phase1 --out $out --workers 8" ;;
        pku2) echo "$PY -m feeders.prepare --format pku --src /path/to/PKU-MMD-phase2 --out $out --workers 8" ;;
        ucla) echo "$PY -m feeders.prepare --format nwucla --src /path/to/NW-UCLA/all_sqe --out $out" ;;
        kinetics) echo "$PY -m feeders.prepare --format kinetics --src /path/to/kinetics-skeleton --out $out --workers 8" ;;
        penn) echo "$PY -m feeders.prepare --format penn --src /path/to/Penn_Action --out $out" ;;
        demo) echo "$PY -m feeders.synthetic --out $out" ;;
        utk) echo "$PY -m feeders.prepare --format utkinect --src /path/to/UTKinect/joints --out $out" ;;
        pku1det) echo "$PY -m feeders.prepare --format pku --task detection --src /path/to/PKU-MMD-phase1 --out $out --workers 8" ;;
        pku2det) echo "$PY -m feeders.prepare --format pku --task detection --src /path/to/PKU-MMD-phase2 --out $out --workers 8" ;;
        demodet) echo "$PY -m feeders.synthetic --untrimmed --out $out" ;;
    esac
}

# ensure_dataset: generate the demo dataset on first use; for any other missing dataset print
# the command that creates it and exit 1.
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
        echo "  $(prepare_command "$RUN_DATASET")"
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

# pretraining_windows: for an untrimmed dataset (UNTRIMMED_DATASETS), pretraining samples are
# windows of its streams: write them once to $SKEL_DATA/<dataset>_windows (feeders.untrimmed:
# windows of twice the dataset's clip length every half clip, so the pretraining crops have
# room) and point RUN_ARGS' --data there. Other datasets are left alone.
pretraining_windows() {
    _in_list "$RUN_DATASET" "$UNTRIMMED_DATASETS" || return 0
    local clip=64 i windows="$DATA_ROOT/${RUN_DATASET}_windows"
    for ((i = 0; i < ${#DATASET_DEFAULTS[@]}; i++)); do
        [ "${DATASET_DEFAULTS[$i]}" = --clip-len ] && clip="${DATASET_DEFAULTS[$((i + 1))]}"
    done
    if [ ! -f "$windows/manifest.json" ]; then
        echo "[data] cutting $RUN_DATA into windows of $((2 * clip)) frames for pretraining: $windows" >&2
        "$PY" -m feeders.untrimmed --src "$RUN_DATA" --out "$windows" --window $((2 * clip)) \
            --stride $((clip / 2)) >&2
    fi
    RUN_ARGS[1]="$windows"   # RUN_ARGS starts with --data "$RUN_DATA"
}
