"""Progress bars on a terminal only: `progress_bar(iterable, desc=...)`.

A tqdm bar on stderr when stderr is a terminal (`sys.stderr.isatty()`); otherwise the iterable
itself, so output redirected to a file or a pipe stays readable lines (tqdm's bar would be one
line of `\\r`-joined updates). The callers print their own one-line summaries.
Used by training epochs (engine), feature extraction, KNN search, dataset preparation, export
and synthetic generation; detection inference can wrap its loop the same way.
"""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def on_terminal() -> bool:
    """True when stderr is an interactive terminal."""
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def progress_bar(iterable: Iterable[T], desc: str = "", total: int | None = None,
                 unit: str = "it", enable: bool | None = None, **tqdm_kwargs) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar on a terminal (``enable=None``), or when ``enable``
    is True; the iterable unchanged otherwise. Extra keywords go to tqdm. With ``iterable=None``
    and a ``total``: a bar advanced by ``bar.update(n)``, or None when disabled."""
    if not (on_terminal() if enable is None else enable):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr,
                dynamic_ncols=True, **tqdm_kwargs)
