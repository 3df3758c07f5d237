"""Guards that keep a non-finite value from ever becoming a reported number.

``require_finite(array, what, names)`` is called on every feature matrix and score matrix
before it is searched, trained on, fused or exported (feature extraction, the linear probe,
fine-tune evaluation, KNN, fusion, score and embedding exports). An argmax over NaN scores is
class 0 and a NaN query still gets a nearest neighbour, so without it a broken sequence or a
diverged head would be reported as an accuracy.
"""
from __future__ import annotations

import numpy as np

SHOWN = 5  # sample names quoted in the error


class NonFiniteError(ValueError):
    """Features or scores hold NaN or infinite values (the message names the samples)."""


def require_finite(array, what: str, names=None) -> None:
    """Raise NonFiniteError unless every value of ``array`` (N, ...) is finite.

    array: a numpy array or a torch tensor whose first axis is the sample axis.
    what: the split or file, e.g. "features of split xsub_val" (starts the message).
    names: (N,) sample names, or None to quote positions instead.
    """
    values = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    if values.dtype.kind not in "fc":
        return
    bad_values = ~np.isfinite(values)
    if not bad_values.any():
        return
    rows = bad_values.reshape(len(values) if values.ndim else 1, -1)
    bad_rows = np.flatnonzero(rows.any(axis=1))
    shown = [str(names[i]) if names is not None else f"#{i}" for i in bad_rows[:SHOWN]]
    more = f" and {len(bad_rows) - SHOWN} more" if len(bad_rows) > SHOWN else ""
    raise NonFiniteError(f"{what}: {len(bad_rows)} of {len(rows)} samples hold non-finite "
                         f"values (NaN or inf): {', '.join(shown)}{more}; refusing to report a "
                         "number computed from them")
