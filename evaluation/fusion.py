"""Multi-stream score fusion.

Per-sample test scores are stored by ``action_recognition.py`` in a sidecar ``.npz`` next to
its results JSON (the JSON's ``scores_file`` field names it): arrays ``names`` (N,) str,
``labels`` (N,) int64 and ``scores`` (N, classes) float32 logits.

    python -m evaluation.fusion A.json B.json C.json D.json --weights 2,2,1,1 \\
        [--output RUN_DIR/fusion_finetune.json]

accepts results JSONs or ``.npz`` score files, refuses files whose sample names (or their
order), labels or class counts differ or whose scores are not finite (NaN or inf: the error
names the first samples), and prints every stream's top-1 and the fused top-1.
Fusion adds ``weight * softmax(logits)`` per stream (``--logits``: adds raw logits instead).
Default weights are equal (1:1:1 for three streams); pyskl's 4-stream convention is
joint:bone:joint-motion:bone-motion = 2:2:1:1. ``--output`` writes the summary (every
stream's top-1, their ``stream`` fields when read from results JSONs, the fused top-1 and top-5,
and ``protocol``: a fusion of the inputs' common protocol, or of none when they differ or are
bare .npz files); inside a run directory ``evaluation.report`` shows it as a row.

Detection runs (``action_detection.py``, ``evaluation.detection_floor``): their results JSON
(protocol kind "detection") or bare ``<tag>_scores.npz`` (``names`` (S,), ``lengths`` (S,),
``scores`` (sum T, K + 1) per-frame probabilities with column 0 = background, ``labels``
(sum T,) per-frame labels) are fused per frame:

    python -m evaluation.fusion RUN_J/detection.json RUN_B/detection.json [--weights 1,1] \
        [--threshold T --min-length N --smooth W --nms IOU|none] \
        [--output RUN_J/fusion_detection.json]

The fused probabilities are the weighted mean of the streams' (weights normalised to sum 1);
proposals and every metric come from ``evaluation.detection.evaluate_streams``, the ground
truth from the per-frame labels. The proposal settings are the inputs' recorded flags
(``config``) when they agree; a flag given here overrides them; inputs that disagree (or a bare
.npz, which records none) need the flag. Inputs must hold the same streams in the same order
with the same lengths, per-frame labels and class count, and finite scores; detection and
classification inputs do not mix. ``--output X/<tag>.json`` writes what ``action_detection.py``
writes (``evaluation.detection.write_results``): ``<tag>.json`` (the metrics, the inputs and
their metrics under the same settings, weights, settings, ``protocol`` = a fusion of the inputs'
common detection protocol or of none), ``<tag>_scores.npz`` (the fused per-frame
probabilities) and ``<tag>_proposals/<video>.txt`` (the official format); ``evaluation.report``
shows it in the detection table.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from evaluation.checks import require_finite
from evaluation.protocol import make_protocol


class ScoreFile(NamedTuple):
    path: str
    names: np.ndarray    # (N,) str
    labels: np.ndarray   # (N,) int64
    scores: np.ndarray   # (N, classes) float32 logits
    stream: str | None = None  # the results JSON's `stream` field (None for a bare .npz)
    protocol: dict | None = None  # the results JSON's `protocol` field (None for a bare .npz)


def save_scores(path: str | Path, names, labels, scores) -> None:
    """Atomically write a score file ``path`` (.npz); shapes (N,), (N,), (N, classes)."""
    path = Path(path)
    names = np.asarray(names).astype(str)
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or not len(names) == len(labels) == scores.shape[0]:
        raise ValueError(f"{path}: need names (N,), labels (N,), scores (N, C); got "
                         f"{names.shape}, {labels.shape}, {scores.shape}")
    require_finite(scores, f"scores for {path}", names)

    def write(f) -> None:
        np.savez(f, names=names, labels=labels, scores=scores)
    atomic_write(path, write)


def atomic_write(path: Path, write) -> None:
    """``write(file object)`` into ``.<name>.tmp<PID>`` next to ``path``, then rename it into
    place (engine.temp_path's naming, so the run directory's cleanup knows a killed writer's
    leftover); an OSError (full disk, read-only directory) becomes a ValueError naming path."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict:
    """A results JSON as a dict, or a ValueError naming ``path``."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a results JSON (an object expected)")
    return meta


def load_npz(npz_path: Path, need: set[str]) -> dict:
    """The arrays of a score ``.npz`` (at least ``need``), or a ValueError naming it."""
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{npz_path}: cannot read score file ({err})") from None
    missing = need - set(arrays)
    if missing:
        raise ValueError(f"{npz_path}: missing arrays {sorted(missing)}")
    return arrays


def load_scores(path: str | Path) -> ScoreFile:
    """Read a score ``.npz`` or a results ``.json`` whose ``scores_file`` names one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such score file")
    npz_path, stream, protocol = path, None, None
    if path.suffix == ".json":
        meta = read_json(path)
        if "scores_file" not in meta:
            raise ValueError(f"{path}: results JSON has no 'scores_file' field "
                             "(per-sample scores are needed for fusion)")
        npz_path = path.parent / meta["scores_file"]
        stream, protocol = meta.get("stream"), meta.get("protocol")
    arrays = load_npz(npz_path, {"names", "labels", "scores"})
    out = ScoreFile(str(path), arrays["names"].astype(str), arrays["labels"].astype(np.int64),
                    arrays["scores"].astype(np.float32), stream, protocol)
    if out.scores.ndim != 2 or not len(out.names) == len(out.labels) == out.scores.shape[0]:
        raise ValueError(f"{npz_path}: inconsistent shapes names {out.names.shape}, "
                         f"labels {out.labels.shape}, scores {out.scores.shape}")
    require_finite(out.scores, f"{npz_path}: scores", out.names)
    return out


def check_aligned(files: list[ScoreFile]) -> None:
    """Raise ValueError unless all files list the same samples, in the same order, with the
    same labels and class count."""
    ref = files[0]
    for other in files[1:]:
        pair = f"{ref.path} and {other.path}"
        if len(other.names) != len(ref.names):
            raise ValueError(f"{pair} hold different numbers of samples "
                             f"({len(ref.names)} vs {len(other.names)})")
        differ = np.flatnonzero(other.names != ref.names)
        if differ.size:
            i = differ[0]
            what = ("the same samples in a different order"
                    if set(other.names) == set(ref.names) else "different samples")
            raise ValueError(f"{pair} hold {what}: first mismatch at position {i} "
                             f"({str(ref.names[i])!r} vs {str(other.names[i])!r})")
        if not np.array_equal(other.labels, ref.labels):
            raise ValueError(f"{pair} disagree on the labels of the same samples")
        if other.scores.shape[1] != ref.scores.shape[1]:
            raise ValueError(f"{pair} have different class counts "
                             f"({ref.scores.shape[1]} vs {other.scores.shape[1]})")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fuse(files: list[ScoreFile], weights: list[float] | None = None,
         use_softmax: bool = True) -> np.ndarray:
    """Weighted sum of per-stream scores -> (N, C). Equal weights by default."""
    check_aligned(files)
    weights = [1.0] * len(files) if weights is None else list(weights)
    if len(weights) != len(files):
        raise ValueError(f"{len(weights)} weights given for {len(files)} score files")
    total = np.zeros_like(files[0].scores, dtype=np.float64)
    for w, f in zip(weights, files):
        total += w * (softmax(f.scores) if use_softmax else f.scores)
    require_finite(total, f"fused scores (weights {weights})", files[0].names)
    return total


def topk(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Top-k accuracy in % of scores (N, C) against labels (N,): the label among the k highest
    scores (ties: the lower class first); k is capped at C."""
    k = min(k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return 100.0 * float((best == labels[:, None]).any(axis=1).mean())


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    return topk(scores, labels, 1)


def parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers, got {text!r}") from None


# ----------------------------------------------------------------------------- detection runs
SETTINGS = ("threshold", "min_length", "smooth", "nms")   # action_detection.py's proposal flags


def settings_from(path: Path) -> dict:
    """The proposal settings recorded in a detection result's ``config``; ValueError naming
    the file and the missing field otherwise."""
    config = read_json(Path(path)).get("config")   # ValueError naming the file
    missing = [k for k in SETTINGS if not isinstance(config, dict) or k not in config]
    if missing:
        raise ValueError(f"--settings-from {path}: its config has no {', '.join(missing)} "
                         "(expected a detection result of action_detection.py)")
    return {k: config[k] for k in SETTINGS}


class FrameScores(NamedTuple):
    """The per-frame scores of one detection run's test streams (``<tag>_scores.npz``)."""
    path: str
    names: np.ndarray    # (S,) str, the test streams
    lengths: np.ndarray  # (S,) int64, frames of each stream
    scores: np.ndarray   # (sum T, K + 1) float32 probabilities, column 0 = background
    labels: np.ndarray   # (sum T,) int64 per-frame labels, 0 = background
    stream: str | None = None     # the run's input stream (j, b, ...); None for a bare .npz
    protocol: dict | None = None  # the results JSON's `protocol`; None for a bare .npz
    settings: dict | None = None  # the run's recorded SETTINGS (None or {}: none recorded)

    def split(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``(sum T, ...)`` in this file's frame order -> stream name -> ``(T, ...)``."""
        ends = np.cumsum(self.lengths)
        return {str(n): frames[e - t:e] for n, t, e in zip(self.names, self.lengths, ends)}


def is_detection(path: str | Path) -> bool | None:
    """Whether ``path`` is a detection input: a JSON with protocol kind "detection" or a .npz
    holding ``lengths``; None for a file that cannot be read (its loader names it)."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            protocol = read_json(path).get("protocol")
            return isinstance(protocol, dict) and protocol.get("kind") == "detection"
        with np.load(path, allow_pickle=False) as z:
            return "lengths" in z.files
    except (ValueError, OSError, EOFError):
        return None


def load_frame_scores(path: str | Path) -> FrameScores:
    """Read a detection ``<tag>_scores.npz`` or the results JSON next to it (its ``scores``
    field names the file; its ``config`` holds the proposal settings)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such score file")
    npz_path, stream, protocol, settings = path, None, None, {}
    if path.suffix == ".json":
        meta = read_json(path)
        if not isinstance(meta.get("scores"), str):
            raise ValueError(f"{path}: detection results JSON has no 'scores' field (the "
                             "per-frame scores file is needed for fusion)")
        npz_path = path.parent / Path(meta["scores"]).name   # written next to the JSON
        config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        encoder = meta.get("encoder") if isinstance(meta.get("encoder"), dict) else {}
        stream = encoder.get("stream", config.get("stream"))
        protocol, settings = meta.get("protocol"), {k: config[k] for k in SETTINGS if k in config}
    z = load_npz(npz_path, {"names", "lengths", "scores", "labels"})
    out = FrameScores(str(path), z["names"].astype(str), z["lengths"].astype(np.int64),
                      z["scores"].astype(np.float32), z["labels"].astype(np.int64), stream,
                      protocol, settings)
    if (out.names.ndim != 1 or out.lengths.shape != out.names.shape or out.scores.ndim != 2
            or out.scores.shape[1] < 2 or out.labels.ndim != 1 or (out.lengths < 1).any()
            or not out.lengths.sum() == len(out.scores) == len(out.labels)):
        raise ValueError(f"{npz_path}: inconsistent shapes names {out.names.shape}, lengths "
                         f"{out.lengths.shape} (sum {int(out.lengths.sum())}), scores "
                         f"{out.scores.shape}, labels {out.labels.shape}; expected (S,), (S,), "
                         "(sum T, K + 1), (sum T,)")
    if len(set(out.names)) != len(out.names):
        raise ValueError(f"{npz_path}: stream names repeat")
    finite = np.array([np.isfinite(p).all() for p in out.split(out.scores).values()])
    require_finite(np.where(finite, 0.0, np.nan), f"{npz_path}: per-frame scores",
                   out.names)   # one value per stream: the error names the streams
    return out


def check_frames_aligned(files: list[FrameScores]) -> None:
    """Raise ValueError unless all files hold the same streams in the same order, with the same
    lengths, per-frame labels and class count."""
    ref = files[0]
    for other in files[1:]:
        pair = f"{ref.path} and {other.path}"
        if len(other.names) != len(ref.names) or (other.names != ref.names).any():
            i = next((i for i, (a, b) in enumerate(zip(ref.names, other.names)) if a != b),
                     min(len(ref.names), len(other.names)))
            shown = [str(n[i]) if i < len(n) else "(none)" for n in (ref.names, other.names)]
            raise ValueError(f"{pair} hold different test streams ({len(ref.names)} vs "
                             f"{len(other.names)}; first mismatch at position {i}: "
                             f"{shown[0]!r} vs {shown[1]!r})")
        differ = np.flatnonzero(other.lengths != ref.lengths)
        if differ.size:
            i = differ[0]
            raise ValueError(f"{pair} have different lengths for stream {str(ref.names[i])!r} "
                             f"({ref.lengths[i]} vs {other.lengths[i]} frames)")
        if not np.array_equal(other.labels, ref.labels):
            theirs = other.split(other.labels)
            first = next(n for n, a in ref.split(ref.labels).items()
                         if not np.array_equal(a, theirs[n]))
            raise ValueError(f"{pair} disagree on the per-frame labels (first of stream "
                             f"{first!r})")
        if other.scores.shape[1] != ref.scores.shape[1]:
            raise ValueError(f"{pair} have different class counts (K + 1 = "
                             f"{ref.scores.shape[1]} vs {other.scores.shape[1]})")


def fuse_frames(files: list[FrameScores], weights: list[float] | None = None
                ) -> tuple[np.ndarray, list[float]]:
    """Weighted mean of the streams' per-frame probabilities -> (``(sum T, K + 1)`` float32,
    the weights normalised to sum 1). Equal weights by default."""
    check_frames_aligned(files)
    weights = [1.0] * len(files) if weights is None else list(weights)
    if len(weights) != len(files):
        raise ValueError(f"{len(weights)} weights given for {len(files)} score files")
    if not all(np.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--weights must be finite, >= 0 and not all 0, got {weights}")
    norm = [w / sum(weights) for w in weights]
    total = np.zeros_like(files[0].scores, dtype=np.float64)
    for w, f in zip(norm, files):
        total += w * f.scores
    return total.astype(np.float32), norm


def proposal_settings(files: list[FrameScores], given: dict) -> dict:
    """The SETTINGS to make proposals with: ``given`` (the flags set on the command line) over
    the values the inputs recorded, which must agree (a bare .npz records none)."""
    out, differ = {}, []
    for key in SETTINGS:
        flag = f"--{key.replace('_', '-')}"
        recorded = [(f.settings[key], f.path) for f in files if key in (f.settings or {})]
        if key in given:
            out[key] = given[key]
        elif not recorded:
            raise ValueError(f"no input records {flag} ({', '.join(f.path for f in files)}: "
                             f"bare .npz files); give {flag}")
        elif any(v != recorded[0][0] for v, _ in recorded):
            differ.append(f"{flag} " + ", ".join(f"{v} in {p}" for v, p in recorded))
        else:
            out[key] = recorded[0][0]
    if differ:
        raise ValueError("the inputs were evaluated with different proposal settings ("
                         + "; ".join(differ) + "): give the flag to choose")
    return out


def fuse_detection(files: list[FrameScores], weights: list[float] | None,
                   given: dict) -> tuple[dict, dict, dict, dict]:
    """Fuse detection runs and evaluate the result. Returns (summary: the fused metrics of
    ``evaluate_streams`` + inputs, weights, settings, protocol, every input's metrics under the
    same settings; fused probabilities by stream ``(T, K + 1)``; labels by stream ``(T,)``;
    fused proposals by stream ``(P, 4)``)."""
    from evaluation.detection import evaluate_streams   # imports torch (via feeders): only here

    fused, norm = fuse_frames(files, weights)
    settings = proposal_settings(files, given)
    ref = files[0]
    labels, num_actions = ref.split(ref.labels), ref.scores.shape[1] - 1

    def evaluate(frames: np.ndarray) -> tuple[dict, dict]:
        return evaluate_streams(ref.split(frames), labels, num_actions,
                                threshold=settings["threshold"], min_length=settings["min_length"],
                                smooth=settings["smooth"], nms_iou=settings["nms"])

    metrics, proposals = evaluate(fused)
    protocols = [f.protocol for f in files]
    common = protocols[0] if all(p == protocols[0] for p in protocols) else None
    summary = {**metrics, "protocol": make_protocol("fusion", of=common),
               "inputs": [f.path for f in files], "stream_names": [f.stream for f in files],
               "weights": weights or [1.0] * len(files), "normalised_weights": norm,
               "mode": "weighted mean of per-frame probabilities", "settings": settings,
               "settings_given": sorted(given), "num_actions": num_actions,
               "streams": {f.path: evaluate(f.scores)[0] for f in files}}
    return summary, ref.split(fused), labels, proposals


def parse_nms(text: str) -> float | None:
    """--nms IOU, or 'none' for no NMS."""
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IoU or 'none', got {text!r}") from None


def check_settings(given: dict) -> None:
    """action_detection.py's ranges for the proposal flags given on the command line."""
    if "threshold" in given and not 0.0 <= given["threshold"] < 1.0:
        raise ValueError(f"--threshold must be in [0, 1), got {given['threshold']}")
    for key in ("min_length", "smooth"):
        if key in given and given[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {given[key]}")
    if given.get("nms") is not None and not 0.0 <= given["nms"] <= 1.0:
        raise ValueError(f"--nms must be an IoU in [0, 1], got {given['nms']}")


def detection_main(args: argparse.Namespace) -> dict:
    """The CLI on detection inputs: fuse, print each input's and the fused headline, and with
    --output write the fused run (``evaluation.detection.write_results``)."""
    from evaluation.detection import summary_line, write_results

    if args.logits:
        raise ValueError("--logits is for classification logits; detection runs fuse "
                         "per-frame probabilities")
    given = {k: getattr(args, k) for k in SETTINGS if hasattr(args, k)}
    check_settings(given)
    output = Path(args.output) if args.output else None
    if output is not None and output.suffix != ".json":
        raise ValueError(f"--output must name the fused results JSON (<dir>/<tag>.json), "
                         f"got {output}")
    files = [load_frame_scores(p) for p in args.files]
    if output is not None:
        taken = {Path(f.path).resolve() for f in files}
        taken |= {p.parent / f"{p.stem}_scores.npz" for p in taken if p.suffix == ".json"}
        if {output.resolve(), output.resolve().parent / f"{output.stem}_scores.npz"} & taken:
            raise ValueError(f"--output {output} would overwrite an input; choose another name, "
                             "e.g. fusion_detection.json")
    summary, probs, labels, proposals = fuse_detection(files, parse_weights(args.weights),
                                                       given)
    for path, metrics in summary["streams"].items():
        print(f"{summary_line(metrics)}  {path}")
    settings = ", ".join(f"{k} {v}" for k, v in summary["settings"].items())
    print(f"{summary_line(summary)}  fused (weights "
          f"{[round(w, 4) for w in summary['normalised_weights']]}; {settings})")
    if output is not None:
        try:
            path = write_results(output.parent, output.stem, probs, labels, summary, proposals, {})
        except OSError as err:   # engine.OutputError names the file
            raise ValueError(str(err)) from err
        summary = read_json(path)   # + the paths of the scores and the proposals folder
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.fusion",
        description="Fuse per-sample scores of several streams (results .json or score .npz). "
                    "Default: equal weights on softmax scores; pyskl's 4-stream convention is "
                    "j:b:jm:bm = 2:2:1:1. Detection runs (detection.json or "
                    "detection_scores.npz) are fused per frame, then evaluated.")
    parser.add_argument("files", nargs="+", help="results JSON or score .npz files")
    parser.add_argument("--weights", default=None, help="comma-separated, e.g. 2,2,1,1")
    parser.add_argument("--logits", action="store_true",
                        help="add raw logits instead of softmax probabilities")
    parser.add_argument("--output", default=None,
                        help="write the summary as JSON here, e.g. <run dir>/fusion_finetune.json "
                             "(evaluation.report shows it as a row of that run, by its protocol); "
                             "detection: <run dir>/fusion_detection.json, with the fused "
                             "_scores.npz and _proposals/ next to it")
    g = parser.add_argument_group("detection inputs (default: the inputs' recorded flags)")
    g.add_argument("--threshold", type=float, default=argparse.SUPPRESS,
                   help="a frame belongs to a class's proposal above this probability")
    g.add_argument("--min-length", type=int, default=argparse.SUPPRESS,
                   help="shortest proposal, in frames")
    g.add_argument("--smooth", type=int, default=argparse.SUPPRESS,
                   help="moving average of the fused probabilities over this many frames")
    g.add_argument("--nms", type=parse_nms, default=argparse.SUPPRESS, metavar="IOU|none",
                   help="per-class NMS at this IoU (none: off)")
    args = parser.parse_args(argv)
    kinds = {p: is_detection(p) for p in args.files}   # None: unreadable, its loader says why
    if {True, False} <= set(kinds.values()):
        parser.error("cannot fuse detection results ("
                     + ", ".join(p for p, d in kinds.items() if d) + ") with classification "
                     "scores (" + ", ".join(p for p, d in kinds.items() if d is False) + ")")
    if True in kinds.values():
        try:
            return detection_main(args)
        except ValueError as err:
            parser.error(str(err))
    given = [f"--{k.replace('_', '-')}" for k in SETTINGS if hasattr(args, k)]
    if given:
        parser.error(f"{', '.join(given)}: for detection inputs only; "
                     f"{', '.join(args.files)} hold classification scores")
    try:
        files = [load_scores(p) for p in args.files]
        weights = parse_weights(args.weights)
        fused = fuse(files, weights, use_softmax=not args.logits)
    except ValueError as err:
        parser.error(str(err))
    labels = files[0].labels
    protocols = [f.protocol for f in files]
    common = protocols[0] if all(p == protocols[0] for p in protocols) else None
    summary = {"protocol": make_protocol("fusion", of=common),
               "streams": {f.path: top1(f.scores, labels) for f in files},
               "stream_names": [f.stream for f in files],
               "weights": weights or [1.0] * len(files),
               "mode": "logits" if args.logits else "softmax",
               "num_samples": int(len(labels)),
               "fused_top1": top1(fused, labels), "fused_top5": topk(fused, labels, 5)}
    for path, acc in summary["streams"].items():
        print(f"{acc:6.2f}  {path}")
    print(f"{summary['fused_top1']:6.2f}  fused (weights {summary['weights']}, {summary['mode']})")
    if args.output:
        text = json.dumps(summary, indent=2) + "\n"
        try:
            atomic_write(Path(args.output), lambda f: f.write(text.encode()))
        except ValueError as err:
            parser.error(str(err))
    return summary


if __name__ == "__main__":
    main()
