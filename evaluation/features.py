"""Frozen encoders for evaluation: loading pretrained weights, feature extraction, caching.

- ``read_checkpoint``: a pretrain.py / fine-tune checkpoint (``.pt``) or an encoder file of
  ``python -m models.export`` (``.safetensors``: weights + config); ``FILE#sha256=HEX`` checks
  the file's SHA-256 first.
- ``resolve_encoder_config`` / ``build_eval_encoder``: an evaluation run takes backbone, preset,
  stream, clip length and spatial channels from the pretraining checkpoint's config; a flag
  that contradicts it is an error.
- ``extract``: global features ``(N, Dt + Ds)`` of a whole split (``EvalDataset``: every
  sequence resampled to the clip length, no randomness), stream applied, under autocast, in
  split order. With several processes each one encodes positions ``rank::world`` and the
  shards are all-gathered back into split order.
- ``cached_extract``: the same, stored in ``<cache_dir>/<key>.pt``. The key hashes the
  encoder weights (so any checkpoint, or a from-scratch seed, gets its own entry), the
  dataset checksums, the split, stream, clip length and spatial channels.
- ``ReEncoder``: features of arbitrary dataset positions by re-running the encoder (what
  the original release did on every batch of every linear-probe epoch; used by the tests and
  the benchmark to check the cache gives the same probe).
"""
from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

import engine
from feeders.augment import CLIP_FRACTION
from evaluation.checks import require_finite
from feeders.dataset import EvalDataset, loader_options
from feeders.store import file_sha256, open_store
from feeders.streams import FUSED, resolve_spatial_channels, to_stream
from models.stgcn import STUDY_FLAGS, study_overrides, study_setting
from models.checkpoint import (build_configured_encoder, checkpoint_config, encoder_state,
                               state_mismatch)
from progress import progress_bar

ENCODER_FIELDS = ("backbone", "preset", "stream", "clip_len", "spatial_channels", "normalize")
FALLBACK = {"backbone": "dste", "preset": "paper", "stream": "j", "clip_len": 64,
            "spatial_channels": None, "normalize": "first_frame"}


class CheckpointError(ValueError):
    """A pretrained checkpoint is missing, unreadable or does not fit the requested run."""


# ----------------------------------------------------------------------------- command line
def add_multiclip_arguments(g) -> None:
    """--num-clips / --clip-fraction (multi-clip testing) of action_recognition.py and
    action_retrieval.py, added to the argument group ``g``."""
    g.add_argument("--num-clips", type=int, default=1, metavar="N",
                   help="multi-clip testing: N evenly spaced crops of each test sequence "
                        "(1: the whole sequence); probe / fine-tune average the N softmax "
                        "scores, KNN averages the N features before retrieval")
    g.add_argument("--clip-fraction", type=float, default=CLIP_FRACTION, metavar="F",
                   help="--num-clips > 1: each crop covers this fraction of the sequence")



# ----------------------------------------------------------------------------- checkpoints
def resolve_pretrained(value: str | None, output: Path) -> Path | None:
    """--pretrained: None / ``none`` / ``scratch`` -> None (random init); ``last`` ->
    <output>/last.pt; a number N -> <output>/epoch_NNNN.pt; anything else is a path."""
    if value is None or value.lower() in ("none", "scratch"):
        return None
    if value == "last":
        return Path(output) / "last.pt"
    if value.isdigit():
        return Path(output) / f"epoch_{int(value):04d}.pt"
    return Path(value)


ENCODER_FILE_FORMAT = "skelssl-encoder"  # safetensors metadata "format" of models.export files


def split_sha256(path: str | Path) -> tuple[Path, str | None]:
    """``FILE#sha256=HEX`` -> (FILE, hex in lower case); a plain path -> (path, None)."""
    text = str(path)
    if "#sha256=" not in text:
        return Path(text), None
    file, _, want = text.partition("#sha256=")
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want.lower()):
        raise CheckpointError(f"--pretrained {text}: expected #sha256= and 64 hex digits")
    return Path(file), want.lower()


def read_encoder_file(path: Path) -> dict:
    """A ``models.export`` safetensors file as a checkpoint dict: ``model`` (``encoder.``
    weights), ``config`` (the encoder flags), ``epoch``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {f"encoder.{k}": f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # a truncated or foreign file
        raise CheckpointError(f"--pretrained {path}: not a readable safetensors file "
                              f"({err})") from None
    if meta.get("format") != ENCODER_FILE_FORMAT:
        raise CheckpointError(f"--pretrained {path}: metadata 'format' is {meta.get('format')!r}, "
                              f"expected {ENCODER_FILE_FORMAT!r} (python -m models.export)")
    return {"model": state, "config": json.loads(meta["config"]),
            "epoch": int(meta.get("epoch", 0))}


def read_checkpoint(path: str | Path) -> dict:
    """``engine.load_checkpoint`` (or ``read_encoder_file`` for ``.safetensors``) with a
    CheckpointError naming the file. ``FILE#sha256=HEX`` first checks the file's SHA-256."""
    path, want = split_sha256(path)
    if want is not None:
        if not path.is_file():
            raise CheckpointError(f"--pretrained: checkpoint {path} does not exist")
        got = file_sha256(path)
        if got != want:
            raise CheckpointError(f"--pretrained {path}: SHA-256 is {got}, expected {want}")
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"--pretrained: checkpoint {path} does not exist")
        return read_encoder_file(path)
    try:
        ckpt = engine.load_checkpoint(Path(path))
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(f"--pretrained: {err}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        hint = (" (a released USDRL / UmURL checkpoint: import it first with python -m "
                f"models.convert --from usdrl|umurl --src {path} --out OUT.pt)"
                if isinstance(ckpt, dict) and "state_dict" in ckpt else "")
        raise CheckpointError(f"--pretrained {path}: expected a dict with a 'model' state dict "
                              f"(a pretrain.py checkpoint){hint}")
    return ckpt


def resolve_encoder_config(args, ckpt: dict | None, path=None, store=None,
                           free_fields: tuple[str, ...] = ()) -> dict:
    """Encoder flags for an evaluation run: the checkpoint's values, a flag left unset (None)
    takes them; a flag set to another value raises CheckpointError, except for the fields in
    ``free_fields`` (fine-tuning: ``stream``, the checkpoint is only the starting point). Without
    a checkpoint the flag or ``FALLBACK``. An unset ``spatial_channels`` is resolved from the
    store's layout (2 coordinate channels for 2D pose layouts, whose third channel is a score)."""
    config = checkpoint_config(ckpt) if ckpt is not None else {}
    out = {}
    for field in ENCODER_FIELDS:
        flag = getattr(args, field)
        if field in free_fields and flag is not None:
            out[field] = flag
        elif field in config and config[field] is not None:
            if flag is not None and flag != config[field]:
                raise CheckpointError(
                    f"--{field.replace('_', '-')} {flag} conflicts with checkpoint {path}, "
                    f"which was pretrained with {field}={config[field]!r}; drop the flag")
            out[field] = config[field]
        else:
            out[field] = flag if flag is not None else FALLBACK[field]
    out["encoder_overrides"] = dict(config.get("encoder_overrides") or {})
    if "stream" in free_fields and config.get("stream") is not None \
            and (out["stream"] == FUSED) != (config["stream"] == FUSED):
        raise CheckpointError(
            f"--stream {out['stream']} does not fit checkpoint {path}, pretrained on stream "
            f"{config['stream']!r}: a {FUSED} checkpoint holds a unified encoder (one model for "
            f"joint, motion and bone), which takes only the {FUSED} input, and the other "
            f"streams' encoders do not take it")
    add_study_overrides(out, args, config, path)
    if out["spatial_channels"] is None and store is not None:
        out["spatial_channels"] = resolve_spatial_channels(store.channels, None, store.layout.dims)
    return out


def add_study_overrides(cfg: dict, args, config: dict, path) -> None:
    """Put the ST-GCN study flags given on the command line (models/stgcn.py) into
    ``cfg["encoder_overrides"]``. With a checkpoint (``config`` not empty) the partition, edge
    importance and residual unit are its weights' structure: a flag that differs from the
    checkpoint's value is a CheckpointError; --gcn-dropout may change (no weights)."""
    study = study_overrides(args, cfg["backbone"])
    for keyword, value in study.items():
        if config and keyword != "dropout":
            stored = study_setting(cfg["preset"], cfg["encoder_overrides"], keyword)
            if value != stored:
                flag = next(f for f, kw in STUDY_FLAGS.items() if kw == keyword)
                raise CheckpointError(f"--{flag.replace('_', '-')} {value} conflicts with "
                                      f"checkpoint {path}, whose ST-GCN has {keyword}="
                                      f"{stored!r}; drop the flag")
        cfg["encoder_overrides"][keyword] = value


def setup_eval_run(args, free_fields: tuple[str, ...] = ()):
    """Shared start of the evaluation entry points: open --data, resolve --pretrained and read
    it, take the encoder flags from the checkpoint (set on ``args``; ``free_fields`` may differ
    from it, see ``resolve_encoder_config``), finish the common flags, check that both splits
    exist and differ. Returns ``(store, ckpt or None, cfg)``."""
    store = open_store(args.data)
    args.pretrained = resolve_pretrained(args.pretrained, args.output)
    ckpt = read_checkpoint(args.pretrained) if args.pretrained else None
    cfg = resolve_encoder_config(args, ckpt, args.pretrained, store, free_fields)
    for key, value in cfg.items():
        setattr(args, key, value)
    engine.finish_common_args(args)
    engine.require_split(store, args.split, "--split")
    engine.require_split(store, args.eval_split, "--eval-split")
    engine.require_distinct_splits(args.split, args.eval_split)
    return store, ckpt, cfg


def load_encoder_weights(encoder: nn.Module, ckpt: dict, path, backbone: str) -> None:
    """Strictly load the checkpoint's encoder weights; CheckpointError on any mismatch."""
    state = encoder_state(ckpt)
    problem = state_mismatch(encoder.state_dict(), state)
    if problem:
        raise CheckpointError(f"checkpoint {path} does not hold weights of this {backbone} "
                              f"encoder for this dataset ({problem})")
    encoder.load_state_dict(state)


def build_eval_encoder(cfg: dict, store, seed: int, ckpt: dict | None = None, path=None,
                       **overrides) -> nn.Module:
    """Build ``cfg['backbone']``/``cfg['preset']`` (with the checkpoint's
    ``encoder_overrides``) for the store's layout, for the ``jmb`` stream wrapped in a unified
    encoder (models/unified.py), and load the checkpoint's encoder weights (if any).
    ``overrides`` go to ``build_encoder``."""
    encoder = build_configured_encoder(cfg, layout=store.layout, channels=store.channels,
                                       bodies=store.bodies, seed=seed, **overrides)
    if ckpt is not None:
        load_encoder_weights(encoder, ckpt, path, cfg["backbone"])
    return encoder


# ----------------------------------------------------------------------------- extraction
def stream_transform(stream: str, parents, spatial_channels: int | None):
    """clip (N, C, L, V, M) -> the stream's encoder input, same shape."""
    return partial(to_stream, stream=stream, parents=parents, spatial_channels=spatial_channels)


def gather_in_order(x: torch.Tensor, total: int, info: engine.DistInfo) -> torch.Tensor:
    """Reassemble shards taken as positions ``rank::world`` into (total, ...) split order."""
    if not info.distributed:
        return x
    per_rank = -(-total // info.world_size)
    padded = x.new_zeros(per_rank, *x.shape[1:])
    padded[:x.shape[0]] = x
    padded = padded.to(info.device)
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    # parts[r][j] is position j * world + r
    return torch.stack(parts, dim=1).reshape(per_rank * info.world_size, *x.shape[1:])[:total].cpu()


@torch.no_grad()
def extract_features(encoder: nn.Module, loader, transform: Callable, device: torch.device,
                     dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global features of every clip of an evaluation loader, in loader order.

    loader yields (clip (N, C, L, V, M), label (N,), index (N,)); transform(clip) -> encoder
    input (e.g. the stream conversion). Returns (features (S, Dt + Ds) float32 on the CPU,
    labels (S,) int64). Multi-clip items (N, K, C, L, V, M) give features (S, K, Dt + Ds).
    The encoder is put in eval mode and restored afterwards. A progress bar of the batches on
    a terminal.
    """
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for clip, label, _ in progress_bar(loader, desc="features", total=len(loader), unit="batch",
                                       leave=False):
        clips = clip.flatten(0, 1) if clip.dim() == 6 else clip
        with engine.precision_context(dtype, device):
            out = encoder(transform(clips.to(device, non_blocking=True)))
        feat = out.global_feat.float().cpu()
        feats.append(feat.view(*clip.shape[:2], -1) if clip.dim() == 6 else feat)
        labels.append(label.long())
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def extract(encoder: nn.Module, store, split: str, *, stream: str, clip_len: int,
            spatial_channels: int | None, info: engine.DistInfo, dtype: torch.dtype | None,
            batch_size: int = 256, workers: int = 0, indices=None, normalize: str = "first_frame",
            num_clips: int = 1, clip_fraction: float = CLIP_FRACTION
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 and labels (N,) int64 of the sequences of ``split`` (or of the
    positions ``indices`` within it), in that order. ``num_clips`` K > 1: features (N, K, D) of
    K evenly spaced crops of each sequence (multi-clip testing, EvalDataset)."""
    dataset = EvalDataset(store, split, clip_len, indices=indices, normalize=normalize,
                          spatial_channels=spatial_channels, num_clips=num_clips,
                          clip_fraction=clip_fraction)
    shard = Subset(dataset, range(info.rank, len(dataset), info.world_size))
    loader = DataLoader(shard, batch_size=batch_size, **loader_options(workers, info.device))
    transform = stream_transform(stream, store.layout.parents, spatial_channels)
    encoder.to(info.device)
    feats, labels = extract_features(encoder, loader, transform, info.device, dtype)
    feats = gather_in_order(feats, len(dataset), info)
    check_features(feats, store, split, indices)
    return feats, gather_in_order(labels, len(dataset), info)


def split_names(store, split: str | None, indices=None) -> np.ndarray:
    """Sample names (N,) of ``split`` (None: every sequence), or of the positions ``indices``
    within it, in that order."""
    seq = np.arange(len(store)) if split is None else store.split_indices(split)
    names = np.asarray(store.names)[seq]
    return names if indices is None else names[np.asarray(indices, dtype=np.int64)]


def check_features(feats: torch.Tensor, store, split: str | None, indices=None) -> None:
    """NonFiniteError naming the split and its first samples whose features (N, D) are not
    finite (a broken sequence, a diverged encoder): they must never reach a probe or KNN."""
    require_finite(feats, f"features of split {split} of {store.root}",
                   split_names(store, split, indices))


def weights_digest(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and values of a module's state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(encoder: nn.Module, store, split: str, stream: str, clip_len: int,
              spatial_channels: int | None, normalize: str = "first_frame", num_clips: int = 1,
              clip_fraction: float = CLIP_FRACTION, dtype: torch.dtype | None = None) -> str:
    """A file-name-safe key for the features of (weights, dataset, split, stream, clip_len,
    spatial_channels, normalize, autocast dtype[, num_clips, clip_fraction when
    num_clips > 1]): features extracted in bf16 are not those of fp32."""
    fields = {"weights": weights_digest(encoder),
              "data": store.manifest.get("checksums", {}), "split": split, "stream": stream,
              "clip_len": clip_len, "spatial_channels": spatial_channels, "normalize": normalize,
              "precision": str(dtype or torch.float32)}
    if num_clips > 1:
        fields.update(num_clips=num_clips, clip_fraction=clip_fraction)
    blob = json.dumps(fields, sort_keys=True).encode()
    return f"{split}_{stream}_L{clip_len}_{hashlib.sha256(blob).hexdigest()[:20]}"


def cached_extract(encoder: nn.Module, store, split: str, *, cache_dir: Path | None,
                   info: engine.DistInfo, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``extract`` with a disk cache in ``cache_dir`` (None: no cache). Returns the same."""
    if "indices" in kwargs:
        raise ValueError("cached_extract caches whole splits; call extract for a subset")
    if cache_dir is None:
        return extract(encoder, store, split, info=info, **kwargs)
    key = cache_key(encoder, store, split, kwargs["stream"], kwargs["clip_len"],
                    kwargs["spatial_channels"], kwargs.get("normalize", "first_frame"),
                    kwargs.get("num_clips", 1), kwargs.get("clip_fraction", CLIP_FRACTION),
                    kwargs.get("dtype"))
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            feats, labels = blob["features"], blob["labels"]
        except Exception as err:  # a damaged cache entry is recomputed, never trusted
            engine.log(info, f"features: ignoring unreadable cache {path} ({err})")
        else:
            check_features(feats, store, split)
            engine.log(info, f"features: {split} from cache {path}")
            return feats, labels
    feats, labels = extract(encoder, store, split, info=info, **kwargs)
    if info.is_main:
        engine.save_checkpoint(path, {"features": feats, "labels": labels, "key": key})
    engine.barrier(info)
    return feats, labels


class ReEncoder:
    """``batch_features(positions (B,)) -> (B, D) float32``: run the frozen encoder on those
    positions of ``dataset`` (an EvalDataset) with the stream transform, in eval mode."""

    def __init__(self, encoder: nn.Module, dataset, transform, device: torch.device,
                 dtype: torch.dtype | None):
        self.encoder, self.dataset, self.transform = encoder.eval(), dataset, transform
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        clips = torch.stack([torch.as_tensor(self.dataset[int(i)][0]) for i in positions])
        with engine.precision_context(self.dtype, self.device):
            out = self.encoder(self.transform(clips.to(self.device)))
        return out.global_feat.float().to(positions.device)
