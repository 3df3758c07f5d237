"""Shareable encoder weights: a checkpoint's encoder as one safetensors file.

    python -m models.export checkpoint/RUN/last.pt --out encoder.safetensors

Writes only the encoder's weights (no projectors, optimizer, scheduler or RNG state; a
pretrain.py ``last.pt`` of the paper DSTE is about 5x larger) with its configuration in the
safetensors metadata: ``format`` = ``skelssl-encoder``, ``config`` (JSON: backbone, preset,
stream, clip_len, spatial_channels, normalize), ``pretrain_config`` (JSON: every flag of the
run), ``epoch``, ``git_commit``, ``source`` (the checkpoint's file name). Then prints the
file's SHA-256 and writes it to ``encoder.safetensors.sha256`` (``sha256sum -c`` format).

Any evaluation takes the file as ``--pretrained encoder.safetensors``; give it as
``--pretrained encoder.safetensors#sha256=HEX`` to have the hash checked before loading.
Both files are written atomically.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import engine
from evaluation.features import (ENCODER_FIELDS, ENCODER_FILE_FORMAT, CheckpointError,
                                 checkpoint_config, encoder_state, read_checkpoint)
from feeders.store import file_sha256


def encoder_metadata(ckpt: dict, source: Path) -> dict[str, str]:
    """The safetensors metadata (str -> str) of a checkpoint's encoder."""
    config = checkpoint_config(ckpt)
    missing = [f for f in ("backbone", "preset") if not config.get(f)]
    if missing:
        raise CheckpointError(f"{source}: the checkpoint records no {' / '.join(missing)} in its "
                              f"config; cannot describe the encoder")
    meta = ckpt.get("meta", {})
    return {"format": ENCODER_FILE_FORMAT,
            "config": json.dumps({f: config.get(f) for f in ENCODER_FIELDS}, sort_keys=True),
            "pretrain_config": json.dumps(config, sort_keys=True, default=str),
            "epoch": str(int(ckpt.get("epoch", 0))),
            "git_commit": str(meta.get("git_commit", "unknown")),
            "source": Path(source).name}


def export_encoder(checkpoint: Path, out: Path) -> str:
    """Write ``out`` (safetensors: encoder weights + metadata) and ``out.sha256``; returns the
    hex SHA-256 of ``out``."""
    from safetensors.torch import save_file

    checkpoint, out = Path(checkpoint), Path(out)
    ckpt = read_checkpoint(checkpoint)
    metadata = encoder_metadata(ckpt, checkpoint)
    # own contiguous copies: safetensors refuses tensors that share memory
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in encoder_state(ckpt).items()}
    engine.atomic_write_bytes_via(out, lambda tmp: save_file(tensors, str(tmp), metadata))
    digest = file_sha256(out)
    engine.atomic_write_bytes_via(out.with_name(out.name + ".sha256"),
                                  lambda tmp: tmp.write_text(f"{digest}  {out.name}\n"))
    return digest


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m models.export",
                                     description="Write a checkpoint's encoder weights and "
                                                 "configuration as one safetensors file.")
    parser.add_argument("checkpoint", type=Path,
                        help="pretrain.py or fine-tuning checkpoint (last.pt, epoch_NNNN.pt, "
                             "best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output file (.safetensors)")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error(f"--out {args.out}: the file name must end in .safetensors")
    digest = export_encoder(args.checkpoint, args.out)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB), sha256 {digest} (also in "
          f"{args.out.name}.sha256)\nuse it as --pretrained '{args.out}#sha256={digest}'")
    return digest


if __name__ == "__main__":
    engine.run_cli(main, "python -m models.export")
