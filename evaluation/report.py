"""Print the evaluation results of a run directory as one table.

    python -m evaluation.report checkpoint/ucla_xv_j_dste \\
        [--baseline "1-NN on raw joints (learning-free)=58.6"] [--baseline "P&C linear=84.9"]

Reads the result JSONs that action_recognition.py and action_retrieval.py write into the run
directory: linear.json / linear_<F>.json (linear probe), knn.json / knn_k<K>.json (KNN),
finetune.json / finetune_<F>.json (fine-tuning, F = label fraction), and the score fusions
that ``evaluation.fusion --output <run dir>/fusion_<tag>.json`` writes (a row below the
protocol <tag>, e.g. "fine-tune, streams j+b fused"). Detection results (detection.json,
detection_finetune.json of action_detection.py, detection_floor.json of
evaluation.detection_floor) get a second table: mAP_a at IoU 0.1 / 0.3 / 0.5 / 0.7, mAP_v,
F1 and 2D-AP (the official PKU-MMD metrics), frame accuracy, edit and F1@50. Each row shows the test top-1 of the last
epoch and, when a validation split was carved from the training split, the test top-1 of the
epoch selected on it. --baseline NAME=TOP1 adds reference rows (numbers
computed or published elsewhere) below the run's rows. Missing result files are skipped;
a directory without any is an error.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

# file stem -> (row order, protocol name); the fraction / k is parsed from the stem.
_PATTERNS = (
    (re.compile(r"^linear$"), 0),
    (re.compile(r"^linear_(?P<fraction>[0-9.e-]+)$"), 1),
    (re.compile(r"^knn$"), 2),
    (re.compile(r"^knn_k(?P<k>[0-9]+)$"), 3),
    (re.compile(r"^finetune$"), 4),
    (re.compile(r"^finetune_(?P<fraction>[0-9.e-]+)$"), 5),
)
_NAMES = {0: "linear probe", 1: "linear probe", 2: "KNN-1", 3: "KNN", 4: "fine-tune",
          5: "fine-tune"}


class ReportError(ValueError):
    """A result file or a --baseline value that cannot be read."""


def _protocol(stem: str) -> tuple[tuple, str] | None:
    """(sort key, protocol name) of a result file stem, None when it is not a result file."""
    if stem.startswith("fusion_"):
        parsed = _protocol(stem[len("fusion_"):])
        return None if parsed is None else ((*parsed[0][:2], 1), parsed[1])
    for pattern, order in _PATTERNS:
        match = pattern.match(stem)
        if match is None:
            continue
        groups = match.groupdict()
        if "fraction" in groups:
            fraction = float(groups["fraction"])
            return (order, -fraction, 0), f"{_NAMES[order]}, {100 * fraction:g} % labels"
        if "k" in groups:
            return (order, int(groups["k"]), 0), f"KNN-{int(groups['k'])}"
        return (order, 0.0, 0), _NAMES[order]
    return None


def _number(result: dict, key: str, path: Path) -> float:
    value = result.get(key)
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value)):
        raise ReportError(f"{path}: field '{key}' must be a finite number (top-1 in %), got "
                          f"{value!r}")
    return float(value)


def read_rows(run_dir: Path, allow_empty: bool = False) -> list[dict]:
    """Rows {protocol, file, top1, top5, selected} of the result JSONs in run_dir, in table order.

    top5 is None for KNN; selected is the test top-1 of the validation-selected epoch or None.
    A directory without any is an error unless ``allow_empty`` (it holds detection results).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a directory")
    found = []
    for path in sorted(run_dir.glob("*.json")):
        parsed = _protocol(path.stem)
        if parsed is None:
            continue
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(result, dict):
            raise ReportError(f"{path}: expected a JSON object, got {type(result).__name__}")
        key, protocol = parsed
        if path.stem.startswith("fusion_"):
            found.append((key, _fusion_row(result, protocol, path)))
            continue
        best = result.get("best")
        found.append((key, {
            "protocol": protocol, "file": path.name,
            "top1": _number(result, "top1", path),
            "top5": _number(result, "top5", path) if "top5" in result else None,
            "selected": _number(best, "top1", path) if isinstance(best, dict) else None,
        }))
    if not found and not allow_empty:
        raise ReportError(f"{run_dir}: no result files (linear*.json, knn*.json, finetune*.json)")
    return [row for _, row in sorted(found, key=lambda item: item[0])]


def _fusion_row(summary: dict, protocol: str, path: Path) -> dict:
    """The row of an ``evaluation.fusion --output`` summary."""
    names = summary.get("stream_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        streams = f"streams {'+'.join(names)} fused"
    elif isinstance(summary.get("streams"), dict):
        streams = f"{len(summary['streams'])} streams fused"
    else:
        raise ReportError(f"{path}: not an evaluation.fusion summary (no 'streams' field)")
    return {"protocol": f"{protocol}, {streams}", "file": path.name,
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
    """A Markdown table: protocol | top-1 | top-5 | top-1 (val-selected epoch) | source."""
    lines = ["| protocol | top-1 % | top-5 % | top-1 % (epoch chosen on val) | source |",
             "|---|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['protocol']} | {_cell(row['top1'])} | {_cell(row['top5'])} "
                     f"| {_cell(row['selected'])} | {row['file']} |")
    for name, top1 in baselines:
        lines.append(f"| {name} | {_cell(top1)} | - | - | reference |")
    return "\n".join(lines)


# detection result stem -> row name, in table order (action_detection.py, evaluation.detection_floor)
_DETECTION = {"detection": "detection, frozen encoder",
              "detection_finetune": "detection, fine-tuned encoder",
              "detection_floor": "detection floor (per-frame raw 1-NN, learning-free)"}
DETECTION_COLUMNS = ("mAP_a@0.1", "mAP_a@0.3", "mAP_a@0.5", "mAP_a@0.7", "mAP_v@0.5",
                     "F1@0.5", "2D-AP", "frame acc", "edit", "F1@50")


def read_detection_rows(run_dir: Path) -> list[dict]:
    """Rows {protocol, file, <DETECTION_COLUMNS>} of the detection JSONs in run_dir (mAP values
    read from the ``mAP_a`` / ``mAP_v`` objects keyed by the IoU threshold)."""
    rows = []
    for stem, protocol in _DETECTION.items():
        path = Path(run_dir) / f"{stem}.json"
        if not path.is_file():
            continue
        try:
            result = json.loads(path.read_text())
            seg = result["segmentation"]
            row = {"protocol": protocol, "file": path.name,
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
        rows.append(row)
    return rows


def format_detection_table(rows: list[dict]) -> str:
    """A Markdown table of detection rows (values in %)."""
    lines = ["| protocol | " + " | ".join(DETECTION_COLUMNS) + " | source |",
             "|---|" + "---:|" * len(DETECTION_COLUMNS) + "---|"]
    for row in rows:
        lines.append(f"| {row['protocol']} | "
                     + " | ".join(_cell(row[c]) for c in DETECTION_COLUMNS) + f" | {row['file']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory holding the result JSONs")
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME=TOP1",
                        help="reference row (repeatable)")
    args = parser.parse_args(argv)
    try:
        baselines = [parse_baseline(text) for text in args.baseline]
        detection = read_detection_rows(args.run_dir) if args.run_dir.is_dir() else []
        rows = read_rows(args.run_dir, allow_empty=bool(detection))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rows or not detection:
        print(format_table(rows, baselines))
    if detection:
        print(("\n" if rows else "") + format_detection_table(detection))
    return 0


if __name__ == "__main__":
    sys.exit(main())
