"""Summarise a dataset directory written by ``feeders.prepare``.

    python -m feeders.inspect data/ntu60 [--json] [--verify]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from feeders.store import Store, StoreError, open_store
from feeders.untrimmed import LABELS_KEY, summarize_untrimmed


def summarize(store: Store) -> dict:
    """Counts, shapes and frames-per-sequence statistics of a store."""
    summary = {
        "path": str(store.root),
        "num_sequences": len(store),
        "num_classes": store.num_classes,
        "splits": {name: int(idx.size) for name, idx in store.splits.items()},
        "layout": store.layout.name,
        "layout_source": store.manifest.get("layout_source", "format"),
        "channels": store.channels,
        "joints": store.joints,
        "bodies": store.bodies,
        "frames": {"min": int(store.lengths.min()), "median": float(np.median(store.lengths)),
                   "max": int(store.lengths.max()), "total": int(store.lengths.sum())},
        "dtype": store.manifest["dtype"],
        "source_format": store.manifest["source_format"],
        "frame_arrays": store.frame_array_names,
    }
    if LABELS_KEY in store.frame_array_names:   # untrimmed streams: instances, background
        summary["untrimmed"] = summarize_untrimmed(store)
    return summary


def format_text(summary: dict) -> str:
    f = summary["frames"]
    splits = "\n".join(f"  {name:<14} {count}" for name, count in summary["splits"].items())
    lines = [
        f"dataset      {summary['path']} (from {summary['source_format']})",
        f"sequences    {summary['num_sequences']}",
        f"classes      {summary['num_classes']}",
        f"layout       {summary['layout']} ({summary['layout_source']})  C={summary['channels']} V={summary['joints']} "
        f"M={summary['bodies']}  {summary['dtype']}",
        f"frames/seq   min {f['min']}  median {f['median']:g}  max {f['max']}  "
        f"(total {f['total']})",
        f"splits       {len(summary['splits']) or 'none'}",
    ]
    if summary["splits"]:
        lines.append(splits)
    if summary["frame_arrays"]:
        lines.append(f"frame arrays {', '.join(summary['frame_arrays'])}")
    for name, part in summary.get("untrimmed", {}).items():
        per_class = " ".join(f"{n}:{c}" for n, c in part["per_class"].items())
        lines.append(f"instances    {name:<14} {part['instances']}  background "
                     f"{100 * part['background_share']:.1f} % of frames  ({per_class})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m feeders.inspect",
                                     description="Summarise a prepared dataset directory.")
    parser.add_argument("path", help="dataset directory")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--verify", action="store_true", help="also check sha256 checksums")
    args = parser.parse_args(argv)
    try:
        store = open_store(args.path, verify=args.verify)
    except StoreError as e:
        parser.error(str(e))
    summary = summarize(store)
    print(json.dumps(summary, indent=1) if args.json else format_text(summary))


if __name__ == "__main__":
    main()
