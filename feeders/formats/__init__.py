"""Readers of the skeleton formats users arrive with (docs/design.md, "feeders.formats").

Each module ``feeders/formats/<name>.py`` defines ``add_arguments(parser)`` (its own command
line flags) and ``scan(src: Path, opts) -> Source``. Modules are imported by name when looked
up, so a broken or missing reader does not stop the others from working.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from pathlib import Path
from typing import Callable, NamedTuple

# format name -> module implementing it
FORMATS: dict[str, str] = {
    "ntu": "feeders.formats.ntu",
    "pku": "feeders.formats.pku",
    "pyskl": "feeders.formats.pyskl",
    "ctrgcn": "feeders.formats.ctrgcn",
    "agcn": "feeders.formats.agcn",
    "nwucla": "feeders.formats.nwucla",
    "kinetics": "feeders.formats.kinetics",
    "penn": "feeders.formats.penn",
    "arrays": "feeders.formats.arrays",
    "openpose": "feeders.formats.openpose",
    "utkinect": "feeders.formats.utkinect",
}


class Source(NamedTuple):
    """What a format's ``scan`` found and how to read it.

    layout: a built-in layout name or a Layout (``feeders.layouts``); channels, bodies: C and M of every record;
    class_names: list of length num_classes; items: picklable work items (e.g. file paths);
    read: module-level function ``item -> list[Record]`` (may return [] to skip an item);
    parallel: whether ``read`` may run in worker processes;
    make_splits: ``metas (list[Record] without data, in written order) -> {split: [index]}``;
    layout_source: how the layout was chosen, recorded in the manifest: ``"format"`` (fixed by
    the format), ``"declared"`` (``--layout``) or ``"inferred"`` (``layouts.choose_layout``).
    """

    layout: str
    channels: int
    bodies: int
    class_names: list
    items: list
    read: Callable
    parallel: bool
    make_splits: Callable
    layout_source: str = "format"


def find_files(src: Path, subdir: str, pattern: str, what: str) -> list[Path]:
    """Sorted files matching `pattern` in `src/subdir` when that folder exists, else in `src`;
    a ValueError naming the folder when there is no folder or no file."""
    src = Path(src)
    folder = src / subdir if (src / subdir).is_dir() else src
    if not folder.is_dir():
        raise ValueError(f"{src}: {what} folder not found")
    files = sorted(folder.glob(pattern))
    if not files:
        raise ValueError(f"{folder}: no {what} {pattern} files")
    return files


def get_format(name: str) -> ModuleType:
    """Import and return the reader module of format ``name``."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; available: {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name])


def describe(name: str) -> str:
    """First line of the format module's docstring (or why it cannot be imported)."""
    try:
        doc = get_format(name).__doc__ or ""
    except Exception as e:  # a broken reader must not break --help for the others
        return f"(unavailable: {type(e).__name__}: {e})"
    return doc.strip().splitlines()[0] if doc.strip() else ""
