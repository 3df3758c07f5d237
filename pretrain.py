"""Self-supervised pretraining with a method of the registry (methods/, default usdrl).

    python pretrain.py --data data/ntu60 --split xsub_train --stream j --backbone dste \\
        --output checkpoint/ntu60_xs_j_dste [flags]
    python pretrain.py --method umurl --data ... --output ...   (--method M --help: its flags)
    torchrun --nproc_per_node=8 pretrain.py ...   (or scripts/pretrain.sh GPUS RUN_NAME)

One step: views (B, K, C, L, V, M) from PretrainDataset (K = the method's number of views) ->
the method's inputs (its augmentations on the device from a generator seeded by seed, epoch,
step, rank, and its streams) -> the method's forward (encoder and heads) under autocast -> the
method's loss, which gathers the embeddings over processes and runs in fp32.
usdrl: METHOD.md sections 1-5; umurl: section 8 (one model for joint, motion and bone).
The schedule is the dataset's recipe (--defaults auto, recipes.py: the paper's for NTU-sized
sets, the small-set recipe for small ones, printed and recorded in config.json as `defaults`);
flags given on the command line always win.
Writes <output>/config.json, <output>/last.pt every epoch, <output>/epoch_NNNN.pt every
--save-every epochs and TensorBoard logs in <output>/tb. Re-running the same command resumes
from last.pt (--resume auto); a rerun with flags that change the run is refused unless
--resume-changed, which applies and records them. --output must be new, empty or a run
directory of the suite, and only one pretraining writes it at a time.
"""
from __future__ import annotations

import argparse
import itertools
from functools import partial

import torch
from torch.utils.data import DataLoader, default_collate

import engine
import recipes
from evaluation.features import extract
from evaluation.knn import knn_evaluate
from feeders.dataset import PretrainDataset, loader_options, make_sampler
from feeders.store import open_store
from models import build_encoder
from methods import DEFAULT_METHOD, get_method, list_methods
from models.stgcn import add_study_arguments, study_overrides
from models.unified import encoder_for_stream

PROG = "pretrain.py"


def method_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=list_methods(), default=DEFAULT_METHOD,
                        help="pretraining method (methods/); its flags are listed by "
                             "--method NAME --help")


def build_parser(method: str = DEFAULT_METHOD) -> argparse.ArgumentParser:
    """The common flags, --method and the flags of `method`."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    engine.add_common_args(parser)
    method_arg(parser)
    get_method(method).add_arguments(parser)
    g = parser.add_argument_group("optimisation")
    g.add_argument("--weight-decay", type=float, default=1e-5, help="Adam (L2) weight decay")
    g.add_argument("--schedule", choices=("step", "cosine"), default="step", help="lr schedule")
    g.add_argument("--milestones", type=int, nargs="*", default=[351], help="step schedule epochs")
    g.add_argument("--gamma", type=float, default=0.1, help="step schedule factor")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear lr warmup epochs")
    engine.add_lr_scaling_arg(g, "the paper: 356 for NTU pretraining, 512 for PKU-MMD II")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="spatial augmentations of docs/METHOD.md section 1 (--no-augment skips them; temporal crops stay)")
    g.add_argument("--min-crop", type=int, default=None, metavar="FRAMES",
                   help="shortest temporal crop in frames (None: --clip-len, docs/METHOD.md section 1, "
                        "so sequences no longer than a clip are never cropped)")
    g.add_argument("--rotate", type=float, default=0.0,
                   help="also turn each view by its own random rotation, angles about x, y and z "
                        "each up to this many degrees, after the augmentations above (0: off, "
                        "the paper)")
    add_study_arguments(parser)
    g = parser.add_argument_group("monitoring")
    g.add_argument("--save-every", type=int, default=50, help="keep epoch_NNNN.pt every K epochs")
    g.add_argument("--knn-every", type=int, default=0,
                   help="KNN-1 top-1 on --eval-split every N epochs (0: never)")
    g.add_argument("--log-every", type=int, default=10, help="TensorBoard interval in steps")
    return parser


def make_train_loader(dataset, args, info: engine.DistInfo) -> DataLoader:
    """Per-process loader of the global --batch-size, reused every epoch: engine.train calls
    set_epoch on the sampler (a permutation seeded by (seed, epoch)) and on the dataset."""
    if args.batch_size % info.world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the "
                         f"{info.world_size} processes")
    sampler = make_sampler(dataset, shuffle=True, seed=args.seed, epoch=0, drop_last=True,
                           num_replicas=info.world_size, rank=info.rank)
    return DataLoader(dataset, batch_size=args.batch_size // info.world_size, sampler=sampler,
                      drop_last=True, generator=torch.Generator().manual_seed(args.seed),
                      **loader_options(args.workers, info.device))


def pretrain_step(model, args, info: engine.DistInfo, parents, dtype, batch, epoch: int,
                  step: int):
    """One forward pass: batch = (views (B, K, C, L, V, M), index (B,)) -> (loss, scalars).

    model: the method (a methods.Method), possibly wrapped in DDP. `scalars` are the loss
    module's terms in its order (engine.train names the first non-finite one): the methods put
    their collapse indicators std_<...> first."""
    method = engine.unwrap(model)
    views = batch[0].to(info.device, non_blocking=True)
    gen = engine.step_generator(args.seed, epoch, step, info.rank)
    inputs = method.make_inputs(views, gen, args, parents)
    with engine.precision_context(dtype, info.device):
        z = model(inputs)
    loss, terms = method.loss(z)  # gathers over processes, fp32
    return loss, {name: v.detach() for name, v in terms.items()}


TRIAL_SCREEN_SAMPLES = 8   # the precision trial's first step in each precision: a screen


def precision_trial(model, optimizer, loader, args, info: engine.DistInfo, parents,
                    precisions=("fp32", "bf16")) -> dict:
    """samples/s of this run's own pretraining step in each of `precisions` (those the product
    screen kept, engine.cached_trial) on its first batch (engine.trial_speeds: weights,
    optimizer state and RNG streams are restored after; the batch is read through the
    sampler's seeded order without touching the loader). A screen step on its first
    TRIAL_SCREEN_SAMPLES samples in each precision comes first: a precision over 8x slower
    there is not timed on the whole batch."""
    first = list(itertools.islice(iter(loader.sampler), loader.batch_size))
    batch = default_collate([loader.dataset[i] for i in first])
    few = default_collate([loader.dataset[i] for i in first[:TRIAL_SCREEN_SAMPLES]])
    per_process = len(first)
    def step_loss(dtype, batch=batch):
        return pretrain_step(model, args, info, parents, dtype, batch, 0, 0)[0]

    engine.log(info, f"precision auto: timing {' and '.join(precisions)} training steps ...")
    speeds = engine.trial_speeds(step_loss, model, optimizer, per_process, precisions=precisions,
                                 screen_loss=partial(step_loss, batch=few))
    engine.log(info, "precision trial: " + ", ".join(f"{k} {v:.1f} samples/s"
                                                     for k, v in speeds.items()))
    return speeds


def knn_monitor(encoder, store, args, info: engine.DistInfo, dtype) -> dict:
    """KNN-1 (cosine) top-1 of --eval-split against --split, whole sequences resampled; run by
    rank 0 alone (so its features are not sharded over the processes)."""
    alone = engine.DistInfo(0, 1, 0, info.device)
    kw = dict(stream=args.stream, clip_len=args.clip_len, normalize=args.normalize,
              spatial_channels=args.spatial_channels, info=alone, dtype=dtype,
              batch_size=args.batch_size, workers=args.workers)
    gallery, gallery_labels = extract(encoder, store, args.split, **kw)
    queries, query_labels = extract(encoder, store, args.eval_split, **kw)
    return {"knn1_top1": knn_evaluate(queries, query_labels, gallery, gallery_labels, k=1)["top1"]}


def check_args(args) -> None:
    """ValueError naming the first pretraining flag with an impossible value."""
    if not 0.0 <= args.rotate <= 180.0:
        raise ValueError(f"--rotate must be in [0, 180] degrees, got {args.rotate}")
    if args.min_crop is not None and args.min_crop < 1:
        raise ValueError(f"--min-crop must be >= 1 frame, got {args.min_crop}")
    if args.gamma <= 0:
        raise ValueError(f"--gamma must be > 0 (the step schedule's lr factor), got {args.gamma}")
    if args.log_every < 1:
        raise ValueError(f"--log-every must be >= 1 step, got {args.log_every}")
    engine.check_nonnegative(args, "save_every", "knn_every", "warmup_epochs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Two passes: --method first (an unknown name is a usage error), then every flag with
    that method's flags added; then the --defaults recipe filled in (recipes.apply_defaults)."""
    first = argparse.ArgumentParser(prog=PROG, add_help=False)
    method_arg(first)
    method = first.parse_known_args(argv)[0].method
    parser = build_parser(method)
    args = parser.parse_args(argv)
    check_args(args)   # the flags given, before the dataset is opened for its recipe
    recipes.apply_defaults(parser, args, argv, "pretrain")
    return engine.finish_common_args(args)


def main(argv: list[str] | None = None) -> engine.TrainState | None:
    """Pretrain with the flags `argv` (library use: this process's settings are left alone)."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> engine.TrainState | None:
    """Pretrain with parsed flags (``parse_args``): claim --output, then ``pretrain``."""
    # the study flags become the checkpoint's encoder_overrides (restored by every evaluation)
    args.encoder_overrides = study_overrides(args, args.backbone)
    if args.print_config:
        return recipes.print_config(args)
    info = engine.init_distributed()
    store = open_store(args.data)
    engine.require_split(store, args.split, "--split")
    if args.knn_every:  # fail now, not after the first epoch
        engine.require_split(store, args.eval_split, "--eval-split")
        engine.require_distinct_splits(args.split, args.eval_split)
    with engine.claim_run_dir(args.output, "pretrain", info):
        return pretrain(args, store, info)


def pretrain(args, store, info: engine.DistInfo) -> engine.TrainState:
    """The run itself, once the flags are checked and --output is ours."""
    method_cls = get_method(args.method)
    torch.manual_seed(args.seed)  # head initialisation (the encoder takes the seed itself)
    parents = store.layout.parents
    dataset = PretrainDataset(store, args.split, args.clip_len, args.seed, num_views=method_cls.num_views,
                              normalize=args.normalize, spatial_channels=args.spatial_channels,
                              min_crop=args.min_crop)
    args.spatial_channels = dataset.spatial_channels  # resolved from the layout's dims
    loader = make_train_loader(dataset, args, info)
    if len(loader) == 0:
        raise ValueError(f"split {args.split} of {args.data} has {len(dataset)} sequences, fewer "
                         f"than one batch of {args.batch_size}: lower --batch-size")
    encoder = build_encoder(args.backbone, args.preset, layout=store.layout,
                            clip_len=args.clip_len, channels=store.channels,
                            bodies=store.bodies, seed=args.seed, **args.encoder_overrides)
    model = method_cls.from_args(encoder_for_stream(encoder, args.stream, args.seed), args)
    if info.distributed:
        model = engine.convert_batchnorm(model, info.device)
    model.to(info.device)

    lr = engine.apply_lr_scaling(args)
    # fused: one kernel over all parameters (about 7x faster than foreach on this CPU)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay,
                                 fused=True)
    scheduler = engine.make_scheduler(optimizer, len(loader), schedule=args.schedule,
                                      epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                                      milestones=args.milestones, gamma=args.gamma)
    ckpt_path = engine.resume_path(args.resume, args.output)
    ckpt = engine.load_checkpoint(ckpt_path) if ckpt_path is not None else None
    choice = engine.choose_precision(
        args.precision, info.device, recorded=engine.recorded_choice(ckpt), info=info,
        workload=f"pretrain {args.backbone}/{args.preset} clip {args.clip_len} batch "
                 f"{args.batch_size // info.world_size}",
        trial=partial(precision_trial, model, optimizer, loader, args, info, parents))
    dtype = engine.autocast_dtype(choice["precision"], info.device)
    engine.enable_tf32(info.device, choice["precision"])
    state = engine.TrainState(optimizer, scheduler, engine.make_scaler(dtype, info.device))
    meta = {**engine.run_metadata(args, info), "precision_choice": choice}
    meta = engine.resume_run(state, model, args, meta, info, len(loader), args.output,
                             default_of=build_parser(args.method).get_default, ckpt=ckpt)
    if info.is_main:
        engine.write_json(args.output / "config.json", meta)
    engine.log(info, f"pretraining ({args.method}) {args.backbone}/{args.preset} on {args.data} "
               f"{args.split} ({len(dataset)} sequences, stream {args.stream}), "
               f"{info.world_size} process(es) on {info.device}, "
               f"{engine.describe_precision(choice)}, lr {lr:g}"
               + (f" (--lr {args.lr:g} at batch {args.lr_scale_base}, scaled to batch "
                  f"{args.batch_size})" if args.lr_scale_base else "")
               + f", epochs {state.epoch}..{args.epochs}")

    ddp_model = engine.wrap_ddp(model, info)
    step_fn = partial(pretrain_step, ddp_model, args, info, parents, dtype)

    def on_epoch_end(epoch: int) -> dict:
        if not (args.knn_every and (epoch + 1) % args.knn_every == 0 and info.is_main):
            return {}
        metrics = knn_monitor(getattr(model, model.encoder_key), store, args, info, dtype)
        engine.log(info, f"epoch {epoch + 1}: KNN-1 top-1 {metrics['knn1_top1']:.2f} %")
        return metrics

    return engine.train(ddp_model, step_fn, loader, state, epochs=args.epochs, info=info,
                        seed=args.seed, output=args.output, save_every=args.save_every,
                        extra_state={"meta": meta, "encoder_key": model.encoder_key},
                        on_epoch_end=on_epoch_end,
                        log_every=args.log_every)


if __name__ == "__main__":
    engine.run_program(parse_args, run, PROG)
