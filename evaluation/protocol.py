"""The `protocol` field every result JSON carries: what was evaluated, read by evaluation.report.

    {"kind": "linear",   "label_fraction": 1.0}   action_recognition.py --mode linear
    {"kind": "finetune", "label_fraction": 0.1}   --mode finetune (semi-supervised when < 1)
    {"kind": "knn",      "k": 1}                  action_retrieval.py
    {"kind": "fusion",   "of": <the fused results' protocol, or null>}   evaluation.fusion
    {"kind": "detection", "encoder": "frozen" | "frozen_tcn" | "finetuned" | "floor"}
                                                  action_detection.py (frozen_tcn: --head tcn),
                                                  evaluation.detection_floor (a table of its own,
                                                  with the fusions of detection runs)

A new evaluation adds its kind here (with its name and place in the table) and writes
`make_protocol(kind, ...)` into its results.
"""
from __future__ import annotations

KINDS = ("linear", "knn", "finetune", "fusion", "detection")
_FIELDS = {"linear": ("label_fraction",), "finetune": ("label_fraction",), "knn": ("k",),
           "fusion": ("of",), "detection": ("encoder",)}
DETECTION_ENCODERS = {"frozen": "detection, frozen encoder",
                      "frozen_tcn": "detection, frozen encoder, temporal head",
                      "finetuned": "detection, fine-tuned encoder",
                      "floor": "detection floor (per-frame raw 1-NN, learning-free)"}
_NAMES = {"linear": "linear probe", "finetune": "fine-tune"}


class ProtocolError(ValueError):
    """A `protocol` field that is not one of the forms above."""


def make_protocol(kind: str, *, label_fraction: float | None = None, k: int | None = None,
                  of: dict | None = None, encoder: str | None = None) -> dict:
    """The protocol dict of `kind` with its one field (label_fraction, k, of or encoder)."""
    values = {"label_fraction": label_fraction, "k": k, "of": of, "encoder": encoder}
    if kind not in KINDS:
        raise ProtocolError(f"unknown protocol kind {kind!r}; valid: {', '.join(KINDS)}")
    return check_protocol({"kind": kind, **{f: values[f] for f in _FIELDS[kind]}})


def check_protocol(protocol, where: str = "protocol") -> dict:
    """`protocol` unchanged when well-formed, else ProtocolError naming `where` and the field."""
    if not isinstance(protocol, dict) or protocol.get("kind") not in KINDS:
        raise ProtocolError(f"{where}: expected {{'kind': one of {', '.join(KINDS)}, ...}}, "
                            f"got {protocol!r}")
    kind = protocol["kind"]
    expected = {"kind", *_FIELDS[kind]}
    if set(protocol) != expected:
        raise ProtocolError(f"{where}: a {kind} protocol has the fields {sorted(expected)}, got "
                            f"{sorted(protocol)}")
    if kind in ("linear", "finetune"):
        fraction = protocol["label_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0 < fraction <= 1:
            raise ProtocolError(f"{where}: label_fraction must be a number in (0, 1], got {fraction!r}")
    elif kind == "detection":
        if protocol["encoder"] not in DETECTION_ENCODERS:
            raise ProtocolError(f"{where}: encoder must be one of {', '.join(DETECTION_ENCODERS)}, "
                                f"got {protocol['encoder']!r}")
    elif kind == "knn":
        k = protocol["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ProtocolError(f"{where}: k must be an integer >= 1, got {k!r}")
    elif protocol["of"] is not None:
        if check_protocol(protocol["of"], f"{where}.of")["kind"] == "fusion":
            raise ProtocolError(f"{where}.of: a fusion of fusions is not a protocol")
    return protocol


def is_detection(protocol: dict) -> bool:
    """A detection protocol or a fusion of one (a fusion of unknown origin: False)."""
    inner = protocol.get("of") if protocol["kind"] == "fusion" else protocol
    return isinstance(inner, dict) and inner.get("kind") == "detection"


def protocol_name(protocol: dict) -> str:
    """'linear probe', 'fine-tune, 10 % labels', 'KNN-5', 'fine-tune, fused', 'score fusion',
    'detection, frozen encoder, fused'."""
    kind = protocol["kind"]
    if kind == "knn":
        return f"KNN-{protocol['k']}"
    if kind == "detection":
        return DETECTION_ENCODERS[protocol["encoder"]]
    if kind == "fusion":
        return "score fusion" if protocol["of"] is None else f"{protocol_name(protocol['of'])}, fused"
    fraction = protocol["label_fraction"]
    return _NAMES[kind] + ("" if fraction == 1 else f", {100 * fraction:g} % labels")


def protocol_order(protocol: dict) -> tuple:
    """Table order: linear probe (all labels, then fewer), KNN (k = 1, then by k), fine-tune (all
    labels, then fewer), detection (frozen, frozen with the temporal head, fine-tuned, floor); a fusion right below the protocol
    it fuses, one of unknown origin last."""
    kind = protocol["kind"]
    if kind == "fusion":
        inner = protocol["of"]
        return (9, 0, 1) if inner is None else (*protocol_order(inner)[:2], 1)
    if kind == "detection":
        return (7, list(DETECTION_ENCODERS).index(protocol["encoder"]), 0)
    if kind == "knn":
        return (2 if protocol["k"] == 1 else 3, protocol["k"], 0)
    fraction = protocol["label_fraction"]
    return ((0 if kind == "linear" else 4) + (fraction < 1), -fraction, 0)
