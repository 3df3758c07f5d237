"""KNN action retrieval with frozen global features (METHOD section 5).

    python action_retrieval.py --pretrained checkpoint/RUN/last.pt --data data/ntu60 \\
        --split xsub_train --output checkpoint/RUN [--k 1] [--knn-backend torch]
    (or scripts/knn.sh GPUS RUN_NAME [CKPT | EPOCH])

Gallery = the training split (--split), queries = the test split (--eval-split). Features
are the frozen encoder's global features (whole sequences resampled to --clip-len, stream
applied), cached like the linear probe's, L2-normalised; search is exact cosine similarity
(evaluation.knn: blocked torch matrix product by default, faiss IndexFlatIP with
--knn-backend faiss-flat, approximate IVF / HNSW indexes with faiss-ivf / faiss-hnsw).
With k > 1 the label is a majority vote of the k neighbours, ties going to the class with the
highest summed similarity. Reports top-1 (of the vote) and recall@k (a same-class sample among
the k neighbours) and writes <output>/knn.json (k = 1) or <output>/knn_k<K>.json, and the same
two numbers as TensorBoard scalars in <output>/knn/tb (knn_k<K>/tb) at the checkpoint's epoch.
Encoder flags default to the --pretrained checkpoint's config, as in action_recognition.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import engine
import recipes
from evaluation.checks import require_finite
from evaluation.features import (add_multiclip_arguments, build_eval_encoder, cached_extract,
                                 setup_eval_run)
from evaluation.protocol import make_protocol
from evaluation.knn import BACKENDS, knn_evaluate, l2_normalize
from models.stgcn import add_study_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="KNN retrieval with frozen features.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    engine.add_common_args(parser)
    add_study_arguments(parser)
    parser.set_defaults(backbone=None, preset=None, stream=None, clip_len=None, normalize=None)
    g = parser.add_argument_group("retrieval")
    g.add_argument("--pretrained", default=None,
                   help="pretrain.py checkpoint: a path, `last` (<output>/last.pt), an epoch "
                        "number N (<output>/epoch_NNNN.pt), an encoder file of models.export "
                        "(.safetensors; FILE#sha256=HEX checks its hash) or none (random init); "
                        "None: none")
    g.add_argument("--k", type=int, default=1, help="neighbours (majority vote)")
    g.add_argument("--knn-backend", choices=BACKENDS, default="torch",
                   help="exact: torch, faiss-flat; approximate: faiss-ivf, faiss-hnsw")
    g.add_argument("--block-size", type=int, default=1024,
                   help="queries per block of the torch search (memory: block x gallery)")
    g.add_argument("--eval-batch-size", type=int, default=256, help="feature extraction batch")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache; None: <output>/features")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    add_multiclip_arguments(g)
    g.add_argument("--export-embeddings", type=Path, default=None, metavar="DIR",
                   help="write L2-normalised <split>_embeddings.npy, <split>_names.txt and "
                        "<split>_labels.npy for gallery and queries")
    return parser


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, array)
    engine.atomic_write_bytes_via(path, write)


def export_embeddings(out_dir: Path, split: str, feats, labels, names) -> None:
    """Write normalised embeddings (N, D) float32, labels (N,) int64 and names (atomically);
    non-finite features are refused (NonFiniteError naming the samples)."""
    require_finite(feats, f"embeddings of split {split}", names)
    save_npy(out_dir / f"{split}_embeddings.npy", l2_normalize(feats).numpy().astype(np.float32))
    save_npy(out_dir / f"{split}_labels.npy", labels.numpy().astype(np.int64))
    engine.atomic_write_bytes_via(out_dir / f"{split}_names.txt",
                                  lambda tmp: tmp.write_text("\n".join(names) + "\n"))


def write_tensorboard(tb_dir: Path, result: dict, step: int) -> None:
    """Scalars knn/top1 and knn/recall_at_k at ``step`` (the checkpoint's epoch), so the runs of
    several checkpoints draw a curve in TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tb_dir)) as writer:
        writer.add_scalar("knn/top1", result["top1"], step)
        writer.add_scalar(f"knn/recall_at_{result['k']}", result["recall_at_k"], step)


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, with the --defaults recipe filled in (recipes.apply_defaults)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    scratch = args.pretrained is None or args.pretrained.lower() in ("none", "scratch")
    recipes.apply_defaults(parser, args, argv, "knn", scratch=scratch)
    return args


def main(argv=None) -> dict | None:
    """KNN retrieval with the flags `argv` (library use: this process's settings are left
    alone)."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> dict | None:
    """KNN retrieval with parsed flags: check them, claim --output, then ``retrieve``."""
    if args.print_config:
        return recipes.print_config(args)
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if args.num_clips < 1 or not 0.0 < args.clip_fraction <= 1.0:
        raise ValueError(f"--num-clips must be >= 1 and --clip-fraction in (0, 1], got "
                         f"{args.num_clips} and {args.clip_fraction}")
    info = engine.init_distributed()
    store, ckpt, cfg = setup_eval_run(args)
    name = "knn" if args.k == 1 else f"knn_k{args.k}"
    with engine.claim_run_dir(args.output, name, info):
        return retrieve(args, store, ckpt, cfg, info, name)


def retrieve(args, store, ckpt, cfg, info, name: str) -> dict | None:
    """Features, search and outputs once the flags are checked and --output is ours."""
    precision = engine.evaluation_precision(args.precision, info.device, ckpt, info)
    engine.log(info, engine.describe_precision(precision))
    dtype = engine.autocast_dtype(precision["precision"], info.device)
    encoder = build_eval_encoder(cfg, store, args.seed, ckpt, args.pretrained)
    cache = None if args.no_cache else (args.cache_dir or Path(args.output) / "features")
    kw = dict(stream=cfg["stream"], clip_len=cfg["clip_len"], normalize=cfg["normalize"],
              spatial_channels=cfg["spatial_channels"], info=info, dtype=dtype,
              batch_size=args.eval_batch_size, workers=args.workers, cache_dir=cache)
    gallery, gallery_labels = cached_extract(encoder, store, args.split, **kw)
    queries, query_labels = cached_extract(encoder, store, args.eval_split, **kw,
                                           num_clips=args.num_clips,
                                           clip_fraction=args.clip_fraction)
    if queries.dim() == 3:  # multi-clip: the queries' crop features averaged before retrieval
        queries = queries.mean(dim=1)
    if not info.is_main:
        return None
    names = np.asarray(store.names)
    res = knn_evaluate(queries, query_labels, gallery, gallery_labels, k=args.k,
                       backend=args.knn_backend, block_size=args.block_size,
                       query_names=names[store.split_indices(args.eval_split)],
                       gallery_names=names[store.split_indices(args.split)])
    result = {"protocol": make_protocol("knn", k=args.k), "top1": res["top1"], "k": args.k,
              "recall_at_k": res["recall_at_k"], "backend": args.knn_backend,
              "num_clips": args.num_clips, "clip_fraction": args.clip_fraction,
              "checkpoint": str(args.pretrained) if args.pretrained else "scratch",
              "data": str(args.data), "gallery_split": args.split,
              "query_split": args.eval_split, "num_gallery": len(gallery),
              "num_queries": len(queries), **cfg, "defaults": args.defaults,
              "precision": precision}
    engine.write_json(Path(args.output) / f"{name}.json", result)
    write_tensorboard(Path(args.output) / name / "tb", result,
                      int(ckpt.get("epoch", 0)) if ckpt is not None else 0)
    if args.export_embeddings is not None:
        for split, feats, labels in ((args.split, gallery, gallery_labels),
                                     (args.eval_split, queries, query_labels)):
            export_embeddings(args.export_embeddings, split, feats, labels,
                              names[store.split_indices(split)])
    print(f"KNN-{args.k} ({args.knn_backend}): top-1 {res['top1']:.2f} %, recall@{args.k} "
          f"{res['recall_at_k']:.2f} % ({len(queries)} queries, {len(gallery)} gallery)")
    return result


if __name__ == "__main__":
    engine.run_program(parse_args, run, "action_retrieval.py")
