"""Encoders from checkpoints: what a checkpoint says about its encoder, and `load_pretrained`.

A checkpoint (pretrain.py's, or one written by `python -m models.convert`) is a dict with

- `model`: a state dict whose encoder entries sit under `<encoder_key>.` (`encoder.` by default);
- `config` (converted checkpoints) or `meta.config` (pretrain.py): the encoder flags `backbone`,
  `preset`, `stream`, `clip_len`, `spatial_channels`, `normalize`, optionally `encoder_overrides`
  (constructor arguments on top of the preset, e.g. `{"hidden": 64}` for a released model whose
  width is no preset's) and the clip geometry `layout`, `channels`, `bodies` (pretrain.py
  checkpoints leave these to the dataset named by `config["data"]`).

    from models import load_pretrained
    encoder = load_pretrained("checkpoint/ntu60_xs_j_dste/last.pt")  # eval mode, on the CPU
    out = encoder(x)  # x (N, C, L, V, M) -> EncoderOutput
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from feeders.store import open_store
from models.registry import build_encoder
from models.unified import encoder_for_stream


class PretrainedError(ValueError):
    """A checkpoint file is missing, unreadable or does not describe/hold its encoder."""


def read_checkpoint_file(path: str | Path) -> dict:
    """torch.load(path, weights_only=True) on the CPU; PretrainedError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise PretrainedError(f"checkpoint {path} could not be loaded: {err}") from None
    if not isinstance(ckpt, dict):
        raise PretrainedError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def checkpoint_config(ckpt: dict) -> dict:
    """The encoder/pretraining flags stored in a checkpoint (``config`` or ``meta.config``), or {}."""
    return ckpt.get("config") or ckpt.get("meta", {}).get("config", {}) or {}


def encoder_state(ckpt: dict) -> dict:
    """Encoder weights of a checkpoint: the entries of ``ckpt["model"]`` under the prefix
    ``<encoder_key>.`` (``encoder`` when the checkpoint names none), or the whole state dict."""
    prefix = f"{ckpt.get('encoder_key', 'encoder')}."
    state = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    return state or ckpt["model"]


def state_mismatch(own: dict, state: dict) -> str:
    """'' when `state` has exactly the keys and shapes of `own`, else the missing / unexpected /
    differently shaped keys (the first four of each)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    return "; ".join(f"{what}: {keys[:4]}{' ...' if len(keys) > 4 else ''}"
                     for what, keys in (("missing", missing), ("unexpected", unexpected),
                                        ("shape differs", wrong_shape)) if keys)


def build_configured_encoder(cfg: dict, *, layout, channels: int, bodies: int, seed: int = 0,
                             **overrides) -> nn.Module:
    """The encoder a config describes: ``build_encoder(cfg["backbone"], cfg["preset"], ...)`` with
    ``cfg["encoder_overrides"]`` (if any) and then ``overrides`` applied, wrapped in a unified
    encoder for the ``jmb`` stream (models/unified.py); weights from ``seed``."""
    kwargs = {**(cfg.get("encoder_overrides") or {}), **overrides}
    encoder = build_encoder(cfg["backbone"], cfg["preset"], layout=layout, clip_len=cfg["clip_len"],
                            channels=channels, bodies=bodies, seed=seed, **kwargs)
    return encoder_for_stream(encoder, cfg.get("stream", "j"), seed)


def clip_geometry(cfg: dict, path) -> dict:
    """``layout``, ``channels``, ``bodies`` of a config, read from its dataset (``cfg["data"]``)
    when the checkpoint does not store them; PretrainedError when neither is available."""
    if all(cfg.get(k) is not None for k in ("layout", "channels", "bodies")):
        return {k: cfg[k] for k in ("layout", "channels", "bodies")}
    if not cfg.get("data"):
        raise PretrainedError(f"checkpoint {path} names neither its clip geometry (layout, "
                              "channels, bodies) nor its dataset (config['data'])")
    try:
        store = open_store(cfg["data"])
    except (FileNotFoundError, ValueError) as err:
        raise PretrainedError(f"checkpoint {path} stores no clip geometry (layout, channels, "
                              f"bodies) and its dataset {cfg['data']} cannot be opened: {err}") from None
    return {"layout": store.layout.name, "channels": store.channels, "bodies": store.bodies}


def load_pretrained(path: str | Path) -> nn.Module:
    """The encoder of checkpoint `path` with its weights, in eval mode, on the CPU.

    PretrainedError naming the file for a missing or unreadable file, a config without an
    encoder, or weights that do not fit (naming the missing / unexpected keys).
    """
    ckpt = read_checkpoint_file(path)
    cfg = checkpoint_config(ckpt)
    missing = [k for k in ("backbone", "preset", "clip_len") if cfg.get(k) is None]
    if missing or not isinstance(ckpt.get("model"), dict):
        raise PretrainedError(f"checkpoint {path}: expected a 'model' state dict and a config "
                              f"naming the encoder (missing: {', '.join(missing) or 'model'})")
    encoder = build_configured_encoder(cfg, **clip_geometry(cfg, path))
    state = encoder_state(ckpt)
    problem = state_mismatch(encoder.state_dict(), state)
    if problem:
        raise PretrainedError(f"checkpoint {path} does not hold weights of its {cfg['backbone']} "
                              f"encoder ({problem})")
    encoder.load_state_dict(state)
    return encoder.eval()
