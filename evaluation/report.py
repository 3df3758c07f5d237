"""Print the evaluation results of one or several run directories as one table.

    python -m evaluation.report checkpoint/*            # every run, one table
    python -m evaluation.report checkpoint/ucla_xv_j_dste \\
        [--baseline "1-NN on raw joints (learning-free)=58.6"] [--baseline "P&C linear=84.9"]

Reads every ``*.json`` of each run directory that has a ``protocol`` field (evaluation.protocol:
what action_recognition.py, action_retrieval.py and ``evaluation.fusion --output`` write), not
file names: linear probe, KNN, fine-tuning (semi-supervised with a label fraction) and score
fusions (a row below the protocol they fuse, e.g. "fine-tune, fused: streams j+b"). Each row
shows the run, the protocol, the test top-1 of the last epoch and, when a validation split was
carved from the training split, the test top-1 of the epoch selected on it. --baseline
NAME=TOP1 adds reference rows (numbers computed or published elsewhere) at the end. A JSON
with results but no ``protocol`` (written before the field existed) is skipped with a note on
stderr; no result at all is an error. Detection results (protocol kind ``detection``:
action_detection.py frozen or --finetune, evaluation.detection_floor; and their fusions by
``evaluation.fusion --output``, a row below the protocol they fuse, e.g. "detection, frozen
encoder, fused: streams j+b") get a second table: mAP_a at IoU 0.1 / 0.3 / 0.5 / 0.7, mAP_v,
F1 and 2D-AP (the official PKU-MMD metrics), frame accuracy, edit and F1@50.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from evaluation.protocol import (ProtocolError, check_protocol, is_detection, protocol_name,
                                 protocol_order)


class ReportError(ValueError):
    """A result file or a --baseline value that cannot be read."""


def _number(result: dict, key: str, path: Path) -> float:
    value = result.get(key)
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value)):
        raise ReportError(f"{path}: field '{key}' must be a finite number (top-1 in %), got "
                          f"{value!r}")
    return float(value)


def read_rows(run_dir: Path, skipped: list[str] | None = None) -> list[dict]:
    """Rows {run, protocol, file, top1, top5, selected} of the result JSONs in run_dir (those with
    a ``protocol`` field), in protocol order. top5 is None for KNN; selected is the test top-1 of
    the validation-selected epoch or None. JSONs that hold results but no protocol are appended
    to ``skipped`` (as 'path: reason')."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory")
    found = []
    for path in sorted(run_dir.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(result, dict):
            continue  # not a result file
        if "protocol" not in result:
            if skipped is not None and ("top1" in result or "fused_top1" in result):
                skipped.append(f"{path}: results without a 'protocol' field (re-run the "
                               "evaluation to include it)")
            continue
        try:
            protocol = check_protocol(result["protocol"], f"{path}: field 'protocol'")
        except ProtocolError as exc:
            raise ReportError(str(exc)) from None
        if _is_detection_result(protocol, result):
            continue  # read_detection_rows: a table of its own
        row = (_fusion_row(result, protocol, path) if protocol["kind"] == "fusion"
               else _result_row(result, protocol, path))
        found.append((protocol_order(protocol), {"run": run_dir.name, **row}))
    return [row for _, row in sorted(found, key=lambda item: item[0])]


def _result_row(result: dict, protocol: dict, path: Path) -> dict:
    """The row of an action_recognition.py / action_retrieval.py results JSON."""
    best = result.get("best")
    return {"protocol": protocol_name(protocol), "file": path.name,
            "top1": _number(result, "top1", path),
            "top5": _number(result, "top5", path) if "top5" in result else None,
            "selected": _number(best, "top1", path) if isinstance(best, dict) else None}


def _is_detection_result(protocol: dict, result: dict) -> bool:
    """Detection results, their fusions and fusions of unknown origin holding detection metrics."""
    return is_detection(protocol) or (protocol["kind"] == "fusion" and protocol["of"] is None
                                      and "mAP_a" in result)


def _fusion_name(summary: dict, protocol: dict, path: Path) -> str:
    """'<fused protocol>, fused: streams j+b' (or ': 2 streams') of an evaluation.fusion
    summary."""
    names = summary.get("stream_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        streams = f"streams {'+'.join(names)}"
    elif isinstance(summary.get("streams"), dict):
        streams = f"{len(summary['streams'])} streams"
    else:
        raise ReportError(f"{path}: not an evaluation.fusion summary (no 'streams' field)")
    return f"{protocol_name(protocol)}: {streams}"


def _fusion_row(summary: dict, protocol: dict, path: Path) -> dict:
    """The row of an ``evaluation.fusion --output`` summary."""
    return {"protocol": _fusion_name(summary, protocol, path), "file": path.name,
            "top1": _number(summary, "fused_top1", path),
            "top5": _number(summary, "fused_top5", path) if "fused_top5" in summary else None,
            "selected": None}


def parse_baseline(text: str) -> tuple[str, float]:
    """'NAME=TOP1' -> (NAME, TOP1)."""
    name, sep, value = text.rpartition("=")
    try:
        top1 = float(value)
    except ValueError:
        top1 = None
    if not sep or not name.strip() or top1 is None or not math.isfinite(top1):
        raise ReportError(f"--baseline: expected NAME=TOP1 (e.g. 'P&C linear=84.9'), got {text!r}")
    return name.strip(), top1


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(rows: list[dict], baselines: list[tuple[str, float]] = ()) -> str:
    """A Markdown table: run | protocol | top-1 | top-5 | top-1 (val-selected epoch) | source."""
    lines = ["| run | protocol | top-1 % | top-5 % | top-1 % (epoch chosen on val) | source |",
             "|---|---|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['run']} | {row['protocol']} | {_cell(row['top1'])} "
                     f"| {_cell(row['top5'])} | {_cell(row['selected'])} | {row['file']} |")
    for name, top1 in baselines:
        lines.append(f"| - | {name} | {_cell(top1)} | - | - | reference |")
    return "\n".join(lines)


DETECTION_COLUMNS = ("mAP_a@0.1", "mAP_a@0.3", "mAP_a@0.5", "mAP_a@0.7", "mAP_v@0.5",
                     "F1@0.5", "2D-AP", "frame acc", "edit", "F1@50")


def read_detection_rows(run_dir: Path) -> list[dict]:
    """Rows {run, protocol, file, <DETECTION_COLUMNS>} of the JSONs in run_dir whose protocol is
    a detection one or a fusion of detection runs (mAP values read from the ``mAP_a`` /
    ``mAP_v`` objects keyed by the IoU threshold), frozen, fine-tuned, floor, each fusion below
    the protocol it fuses."""
    found = []
    for path in sorted(Path(run_dir).glob("*.json")):
        protocol = _detection_protocol(path)
        if protocol is None:
            continue
        try:
            result = json.loads(path.read_text())
            seg = result["segmentation"]
            name = (_fusion_name(result, protocol, path) if protocol["kind"] == "fusion"
                    else protocol_name(protocol))
            row = {"run": Path(run_dir).name, "protocol": name,
                   "file": path.name,
                   **{f"mAP_a@{t}": _number(result["mAP_a"], t, path)
                      for t in ("0.1", "0.3", "0.5", "0.7")},
                   "mAP_v@0.5": _number(result["mAP_v"], "0.5", path),
                   "F1@0.5": _number(result, "F1@0.5", path),
                   "2D-AP": _number(result, "2D-AP", path),
                   "frame acc": _number(seg, "accuracy", path),
                   "edit": _number(seg, "edit", path), "F1@50": _number(seg, "F1@50", path)}
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc})") from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise ReportError(f"{path}: not an action_detection.py result (missing {exc})") from None
        found.append((protocol_order(protocol), row))
    return [row for _, row in sorted(found, key=lambda item: item[0])]


def _detection_protocol(path: Path) -> dict | None:
    """The protocol of a detection result JSON (or of a fusion of detection runs), or None for
    any other file."""
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    protocol = result.get("protocol") if isinstance(result, dict) else None
    if not isinstance(protocol, dict) or protocol.get("kind") not in ("detection", "fusion"):
        return None
    try:
        protocol = check_protocol(protocol, f"{path}: field 'protocol'")
    except ProtocolError as exc:
        if protocol.get("kind") == "fusion":
            return None   # read_rows reports it
        raise ReportError(str(exc)) from None
    return protocol if _is_detection_result(protocol, result) else None


def format_detection_table(rows: list[dict]) -> str:
    """A Markdown table of detection rows (values in %)."""
    lines = ["| run | protocol | " + " | ".join(DETECTION_COLUMNS) + " | source |",
             "|---|---|" + "---:|" * len(DETECTION_COLUMNS) + "---|"]
    for row in rows:
        lines.append(f"| {row['run']} | {row['protocol']} | "
                     + " | ".join(_cell(row[c]) for c in DETECTION_COLUMNS) + f" | {row['file']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="run directories holding result JSONs (e.g. checkpoint/*)")
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME=TOP1",
                        help="reference row (repeatable)")
    args = parser.parse_args(argv)
    skipped: list[str] = []
    try:
        baselines = [parse_baseline(text) for text in args.baseline]
        rows = [row for run_dir in args.run_dirs for row in read_rows(run_dir, skipped)]
        detection = [row for run_dir in args.run_dirs for row in read_detection_rows(run_dir)]
        if not rows and not detection:
            raise ReportError(f"no result files (JSONs with a 'protocol' field) in "
                              f"{', '.join(map(str, args.run_dirs))}")
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in skipped:
        print(f"note: skipped {note}", file=sys.stderr)
    if rows or baselines:
        print(format_table(rows, baselines))
    if detection:
        print(("\n" if rows or baselines else "") + format_detection_table(detection))
    return 0


if __name__ == "__main__":
    sys.exit(main())
